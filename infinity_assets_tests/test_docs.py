"""The documentation: the site builds under ``mkdocs build --strict`` and the README's links lead somewhere.

Strict mode turns every warning into a failure: a link to a page or anchor that does not exist, a page left out
of the nav, or an API reference entry (``::: module.Object``) naming something that was renamed or removed. The
build runs as ``make docs`` does, in a subprocess, into a temporary folder.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
#: A Markdown link or image target: ``[text](target)`` / ``![alt](target)``, up to a space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: A fenced code block, whose brackets are code, not links.
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def build_env() -> dict[str, str]:
    # Material for MkDocs prints a notice about its successor on every build; it is not a warning of ours.
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def relative_links(markdown: str) -> list[str]:
    """The link targets of a Markdown text that point into the repository (no scheme, no bare anchor)."""
    text = FENCE.sub("", markdown)
    targets = []
    for target in LINK.findall(text):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:
            continue
        targets.append(unquote(parts.path))
    return targets


def test_make_docs_builds_the_site_with_strict_checking(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(["make", "--no-print-directory", "docs", f"DOCS_FLAGS=--site-dir {site}"],
                            cwd=REPO, env=build_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"make docs failed:\n{result.stdout}\n{result.stderr}"
    assert "mkdocs build --strict" in result.stdout, "make docs must build with --strict"
    assert (site / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    # The API reference is generated from the code, not written by hand: its objects must be rendered.
    for name in ("InfinityEmbeddings", "IndexReader", "search_text", "DocumentStore", "ArtifactWriter"):
        assert name in api, f"the API reference does not render {name}"


def test_a_strict_build_fails_on_a_broken_link_and_on_a_missing_api_object(tmp_path):
    # The guard itself: copy the docs, break one link and one API entry, and the build must refuse both.
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)  # symlinked files (a benchmark's plot) are copied as files
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    config = re.sub(r"^docs_dir: .*$", f"docs_dir: {docs}", config, flags=re.M)
    config = re.sub(r"^(\s+paths: ).*$", rf"\1[{REPO}]", config, flags=re.M)
    for broken, expected in (("[gone](no-such-page.md)", "no-such-page.md"),
                             ("::: infinity_assets.index.no_such_function", "no_such_function")):
        index = docs / "index.md"
        original = index.read_text(encoding="utf-8")
        index.write_text(original + "\n\n" + broken + "\n", encoding="utf-8")
        (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
             "--site-dir", str(tmp_path / "site")],
            cwd=tmp_path, env=build_env(), capture_output=True, text=True, timeout=300)
        index.write_text(original, encoding="utf-8")
        assert result.returncode != 0, f"a strict build accepted {broken!r}"
        assert expected in result.stdout + result.stderr


def test_every_relative_link_in_the_readme_points_to_a_file_that_exists():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = relative_links(readme)
    assert links, "the README links to no page of the docs"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_readme_names_make_test_as_the_test_command_and_stays_short():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make test" in readme
    assert len(readme.splitlines()) <= 200, "the reference belongs in docs/, not the README"
