"""A MkDocs hook: links from a page to a file of the repository outside ``docs/`` (a benchmark's results, a
deployment file) are kept honest instead of failing the strict build as "not found among documentation files".

MkDocs only knows the files under ``docs/``. A relative link or image that leaves ``docs/`` and names a file that
exists in the repository is rewritten: a link becomes the file's repository path in code (the site has no
repository browser to point at), an image is copied into the site under ``repo/`` and shown. A link or image
naming a file that does not exist is left as written, so ``mkdocs build --strict`` still fails on it.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

#: ``[text](target)`` or ``![alt](target)``, with an optional title; group 1 is ``!`` for an image.
LINK = re.compile(r'(!?)\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(\s+"[^"]*")?\s*\)')
#: Fenced code, left alone.
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
SITE_FOLDER = "repo"


def _outside_target(page_src_uri: str, target: str, config: Any) -> str | None:
    """The repository path (posix, from the repository root) of ``target`` if it leaves ``docs/`` and exists."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
        return None
    path = target.split("#", 1)[0]
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_src_uri), path))
    if not joined.startswith("../"):
        return None
    docs_dir = Path(config["docs_dir"]).resolve()
    absolute = (docs_dir / joined).resolve()
    repo = docs_dir.parent
    if not absolute.is_file() or repo not in absolute.parents:
        return None
    return absolute.relative_to(repo).as_posix()


def _outside_targets(markdown: str, page_src_uri: str, config: Any) -> list[tuple[str, str, str]]:
    """``(kind, target, repository path)`` of every link (``kind`` "") or image (``kind`` "!") that leaves docs/."""
    found = []
    for image, _, target, _ in LINK.findall(FENCE.sub("", markdown)):
        repo_path = _outside_target(page_src_uri, target, config)
        if repo_path is not None:
            found.append((image, target, repo_path))
    return found


def on_files(files: Files, config: Any) -> Files:
    # Images outside docs/ are copied into the site (and so are known to the link validation).
    for page in list(files.documentation_pages()):
        markdown = Path(page.abs_src_path).read_text(encoding="utf-8") if page.abs_src_path else ""
        for image, _, repo_path in _outside_targets(markdown, page.src_uri, config):
            uri = f"{SITE_FOLDER}/{repo_path}"
            if image and files.get_file_from_path(uri) is None:
                repo = Path(config["docs_dir"]).resolve().parent
                files.append(File.generated(config, uri, abs_src_path=str(repo / repo_path),
                                            inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    targets = {(image, target): repo_path for image, target, repo_path
               in _outside_targets(markdown, page.file.src_uri, config)}
    if not targets:
        return markdown
    fences = {m.span() for m in FENCE.finditer(markdown)}

    def rewrite(match: re.Match[str]) -> str:
        if any(start <= match.start() < end for start, end in fences):
            return match.group(0)
        image, text, target, title = match.groups()
        repo_path = targets.get((image, target))
        if repo_path is None:
            return match.group(0)
        if image:
            site_path = posixpath.relpath(f"{SITE_FOLDER}/{repo_path}", posixpath.dirname(page.file.src_uri) or ".")
            return f"![{text}]({site_path}{title or ''})"
        shown = text.strip("`")
        return f"`{repo_path}`" if shown == repo_path else f"{text} (`{repo_path}`)"

    return LINK.sub(rewrite, markdown)
