"""The documentation: the site builds under ``mkdocs build --strict``, the README's links lead somewhere, and
the documented ``defs.yaml`` examples load and make the names the docs list.

Strict mode turns every warning into a failure: a link to a page or anchor that does not exist, a page left out
of the nav, or an API reference entry (``::: module.Object``) naming something that was renamed or removed. The
build runs as ``make docs`` does, in a subprocess, into a temporary folder. The YAML examples are loaded by
Dagster's components test kit with placeholder values for the variables they template (no server is contacted).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from .test_component_project import make_project as make_user_project

REPO = Path(__file__).resolve().parents[1]
#: A Markdown link or image target: ``[text](target)`` / ``![alt](target)``, up to a space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: A fenced code block, whose brackets are code, not links.
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
#: A fenced YAML block and its body.
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.M | re.S)
#: A fenced shell block and its body.
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
#: Placeholder values for the environment variables the documented defs.yaml files template.
PLACEHOLDER_ENV = {"AWS_SECRET_ACCESS_KEY": "placeholder", "INFINITY_API_URL": "http://127.0.0.1:9"}


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
    # A page's image outside docs/ (the benchmark's plot) is copied into the site by docs/repo_links.py.
    assert (site / "repo" / "benchmarks" / "results" / "throughput.png").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    # The API reference is generated from the code, not written by hand: its objects must be rendered.
    for name in ("InfinityEmbeddings", "IndexReader", "search_text", "DocumentStore", "ArtifactWriter"):
        assert name in api, f"the API reference does not render {name}"


def test_a_strict_build_fails_on_a_broken_link_and_on_a_missing_api_object(tmp_path):
    # The guard itself: copy the docs, break one link and one API entry, and the build must refuse both.
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    (tmp_path / "benchmarks").symlink_to(REPO / "benchmarks")  # pages link to repository files beside docs/
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    config = re.sub(r"^docs_dir: .*$", f"docs_dir: {docs}", config, flags=re.M)
    config = re.sub(r"^(\s+paths: ).*$", rf"\1[{REPO}]", config, flags=re.M)
    for broken, expected in (("[gone](no-such-page.md)", "no-such-page.md"),
                             ("[gone](../benchmarks/no-such-results.md)", "no-such-results.md"),
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


def defs_yaml_blocks(path: Path) -> list[dict]:
    """The complete ``defs.yaml`` examples of a Markdown file: YAML blocks declaring the component type with
    both required attributes (an excerpt such as the ``post_processing`` example leaves ``root`` out)."""
    blocks = [yaml.safe_load(body) for body in YAML_BLOCK.findall(path.read_text(encoding="utf-8"))]
    return [b for b in blocks if isinstance(b, dict) and b.get("type") == "infinity_assets.InfinityCorpusComponent"
            and {"name", "root"} <= set(b.get("attributes") or {})]


def documented_names(component_page: str) -> dict[str, set[str]]:
    """The names the component page's "What an instance makes" table lists, by kind (its first column)."""
    section = component_page.split("## What an instance makes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {kind.strip(): set(re.findall(r"`([^`]+)`", names)) for kind, names in rows[1:]}


def build_corpus_defs(body: dict) -> dict[str, set[str]]:
    """What one instance loaded from ``body`` (a defs.yaml) makes, as Dagster's component loader builds it."""
    from dagster.components.testing import create_defs_folder_sandbox

    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.defs_folder_path / body["attributes"]["name"]
        path.mkdir(parents=True)
        (path / "defs.yaml").write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        with sandbox.build_all_defs() as defs:
            graph, specs = defs.resolve_asset_graph(), list(defs.resolve_all_asset_specs())
            return {
                "asset keys": {key.to_user_string() for key in graph.get_all_asset_keys()},
                "groups": {spec.group_name for spec in specs},
                "owners": {owner for spec in specs for owner in spec.owners},
                "partitions": {graph.get(key).partitions_def.name for key in graph.get_all_asset_keys()
                               if graph.get(key).partitions_def is not None},
                "jobs": {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")},
                "sensors": {sensor.name for sensor in defs.sensors or []},
                "schedules": {schedule.name for schedule in defs.schedules or []},
                "checks": {check.name for check in graph.asset_check_keys},
            }


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md", "docs/component.md"])
def test_every_documented_defs_yaml_loads_with_its_env_set(page, monkeypatch):
    for name, value in PLACEHOLDER_ENV.items():
        monkeypatch.setenv(name, value)
    blocks = defs_yaml_blocks(REPO / page)
    assert blocks, f"{page} shows no defs.yaml"
    for body in blocks:
        assert set(body.get("requirements", {}).get("env", [])) <= set(PLACEHOLDER_ENV)
        built = build_corpus_defs(body)
        assert built["asset keys"], f"a defs.yaml of {page} makes no assets"


def test_the_readmes_defs_yaml_makes_exactly_the_names_the_component_page_lists(monkeypatch):
    for name, value in PLACEHOLDER_ENV.items():
        monkeypatch.setenv(name, value)
    (body,) = defs_yaml_blocks(REPO / "README.md")
    assert body["attributes"]["name"] == "manuals"
    built = build_corpus_defs(body)
    listed = documented_names((REPO / "docs/component.md").read_text(encoding="utf-8"))
    assert {name for name in listed["asset keys (group `manuals`)"] if "/" in name} == built["asset keys"]
    assert built["groups"] == {"manuals"}
    assert listed["dynamic partitions"] == built["partitions"]
    assert listed["jobs"] == built["jobs"]
    assert listed["sensors"] == built["sensors"]
    assert listed["schedules"] == built["schedules"]
    assert listed["asset checks"] == built["checks"]


def test_the_component_pages_post_processing_example_applies(monkeypatch):
    for name, value in PLACEHOLDER_ENV.items():
        monkeypatch.setenv(name, value)
    page = (REPO / "docs/component.md").read_text(encoding="utf-8")
    example = next(yaml.safe_load(body) for body in YAML_BLOCK.findall(page) if "post_processing:" in body)
    (readme,) = defs_yaml_blocks(REPO / "README.md")
    body = {**readme, "post_processing": example["post_processing"]}
    built = build_corpus_defs(body)
    assert built["owners"] == {"team:search"}


def readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def group_alive(pgid: int, seconds: float) -> bool:
    """Whether a process of group ``pgid`` is still running (not a zombie) after waiting up to ``seconds``."""
    import psutil

    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for process in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(process.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        if not alive or time.monotonic() > deadline:
            return bool(alive)
        time.sleep(0.5)


def ctrl_c_as_in_a_terminal() -> None:
    """Run in a child before it starts: Ctrl-C (SIGINT) handled as a terminal's foreground job has it. A suite
    started in the background by a non-interactive shell (``cmd &``, as CI may run it) inherits SIGINT
    ignored, and a child that ignores it would never see the user's Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def location_error(port: int) -> str:
    """What the UI says of the code location (its load error, e.g. definitions that cannot be serialized)."""
    try:
        answer = graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError "
                               "{ __typename ... on PythonError { message } } } } } }")
        return json.dumps(answer["data"]["workspaceOrError"])[:2000]
    except (OSError, KeyError, TypeError) as exc:
        return f"(not answered: {exc})"


@pytest.mark.slow
def test_the_readmes_add_it_to_your_project_commands_run_as_written(tmp_path):
    """``pip install``, ``dg scaffold defs``, the README's defs.yaml, ``dg check defs`` and ``dg dev``, in a new
    user project: the UI serves the corpus's assets, and Ctrl-C stops every process."""
    from infinity_assets_dev.ports import free_port

    section = readme_section("Add it to your Dagster project")
    commands = [line.split("#", 1)[0].strip() for line in BASH_BLOCK.findall(section)[0].splitlines()]
    commands = [command for command in commands if command]
    assert commands == ["pip install infinity_assets", "dg scaffold defs infinity_assets.InfinityCorpusComponent manuals",
                        "dg check defs", "dg dev"]
    # pip install: this environment has the checkout installed editable (make install), the README's
    # "from a checkout" line; the package and its dg entry point are what the other commands need.
    assert metadata.distribution("infinity_assets").entry_points.select(group="dagster_dg_cli.registry_modules")

    project = make_user_project(tmp_path / "acme")
    home = tmp_path / "dagster_home"
    home.mkdir()
    bin_dir = Path(sys.executable).parent
    # No secret: the README says `dg check defs` runs in CI without one (AWS_SECRET_ACCESS_KEY is left unset; only
    # the required attributes' variable, the server URL, is set).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_", "DAGSTER_"))},
           "INFINITY_API_URL": PLACEHOLDER_ENV["INFINITY_API_URL"], "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "DAGSTER_HOME": str(home),
           "VIRTUAL_ENV": sys.prefix, "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]]),
           "PYTHONPATH": str(project / "src")}  # what `pip install -e .` of the user's project gives

    def dg(*arguments: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(bin_dir / "dg"), *arguments], cwd=project, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"dg {' '.join(arguments)}:\n{done.stdout}\n{done.stderr}"
        return done

    dg(*commands[1].split()[1:])
    defs_yaml = project / "src" / "acme" / "defs" / "manuals" / "defs.yaml"  # src/<your_project>/defs/manuals/
    assert defs_yaml.is_file()
    (body,) = defs_yaml_blocks(REPO / "README.md")
    defs_yaml.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    assert "All definitions loaded successfully" in dg("check", "defs").stdout

    port = free_port()
    output = tmp_path / "dg-dev.log"
    with output.open("wb") as log:
        server = subprocess.Popen([str(bin_dir / "dg"), "dev", "-p", str(port)], cwd=project, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline, keys = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
                keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
                if keys:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert keys == {f"manuals/{name}" for name in ("raw_text_documents", "raw_image_documents", "text_embeddings",
                                                       "image_embeddings", "text_index", "image_index")}, \
            f"the UI serves {keys}; its code location: {location_error(port)}"
        server.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dg dev still running 60 s after Ctrl-C; its output:\n{output.read_text()[-4000:]}")
        assert not group_alive(server.pid, seconds=30), "dg dev left processes running after Ctrl-C"
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)


@pytest.mark.slow
def test_the_migration_pages_upgrade_reembeds_nothing_and_its_wipe_command_removes_the_old_history(
        tmp_path, infinity_server):
    """docs/migration.md: the earlier location's artifacts stay where they are; a run of the new key
    ``default/text_embeddings`` reuses every row (nothing re-embedded); the page's ``dagster asset wipe`` removes
    the old keys' history."""
    from infinity_assets import InfinityEmbeddings
    from infinity_assets.pipeline import embed_partition
    from infinity_assets.storage.documents import DocumentStore
    from infinity_assets_dev.env import clean_env

    root = tmp_path / "store"
    batch = root / "raw" / "text" / "week-1"
    batch.mkdir(parents=True)
    (batch / "pump.txt").write_text("reset the pump by holding the red button for five seconds")
    (batch / "valve.md").write_text("# Valve\nclose the valve before opening the filter housing")
    # What the earlier location left under its root: the batch's artifact (the artifact format did not change).
    with InfinityEmbeddings(url=infinity_server.url, model_name="minilm-colbert-128") as client:
        before = embed_partition(DocumentStore(str(root)), client, "text", "week-1")
    assert before.embedded == 2

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = clean_env(DAGSTER_HOME=str(home), INFINITY_API_URL=infinity_server.url, INFINITY_MODEL="minilm-colbert-128",
                    INFINITY_ASSETS_ROOT=str(root))
    bin_dir = Path(sys.executable).parent

    def python(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    old_keys = ["text_embeddings", "image_embeddings", "text_index", "image_index", "raw_text_documents",
                "raw_image_documents"]
    # The earlier keys' history, and the partition the new location's sensor adds again from the bucket.
    python("import dagster as dg; i = dg.DagsterInstance.get(); "
           f"[i.report_runless_asset_event(dg.AssetMaterialization(k)) for k in {old_keys!r}]; "
           "i.add_dynamic_partitions('default_text_batches', ['week-1'])")
    done = subprocess.run([str(bin_dir / "dagster"), "asset", "materialize", "-m", "infinity_assets.definitions",
                           "--select", "default/text_embeddings", "--partition", "week-1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    metadata = json.loads(python(
        "import json, dagster as dg; i = dg.DagsterInstance.get(); "
        "e = i.get_latest_materialization_event(dg.AssetKey(['default', 'text_embeddings'])); "
        "m = e.asset_materialization.metadata; "
        "print(json.dumps({k: m[k].value for k in ('documents_reused', 'documents_embedded')}))"))
    assert metadata == {"documents_reused": 2, "documents_embedded": 0}

    page = (REPO / "docs" / "migration.md").read_text(encoding="utf-8")
    (wipe,) = [line for block in BASH_BLOCK.findall(page) for line in block.splitlines()
               if line.startswith("dagster asset wipe")]
    assert wipe.split()[3:] == old_keys
    done = subprocess.run([str(bin_dir / "dagster"), *wipe.split()[1:]], input="DELETE\n", cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    remaining = json.loads(python(
        "import json, dagster as dg; i = dg.DagsterInstance.get(); "
        "print(json.dumps(sorted(k.to_user_string() for k in i.all_asset_keys())))"))
    assert remaining == ["default/text_embeddings"]


def test_the_component_page_documents_every_attribute():
    """Each attribute of the component's YAML schema, nested blocks included, is named on docs/component.md."""
    import pydantic

    from infinity_assets.orchestration.component import InfinityCorpusComponent

    page = (REPO / "docs" / "component.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_][a-z0-9_]*)`", page))
    missing, models = set(), [InfinityCorpusComponent]
    while models:
        model = models.pop()
        for name, info in model.model_fields.items():
            if name not in documented:
                missing.add(f"{model.__name__}.{name}")
            for kind in getattr(info.annotation, "__args__", (info.annotation,)):
                if isinstance(kind, type) and issubclass(kind, pydantic.BaseModel):
                    models.append(kind)
    assert not missing, f"docs/component.md does not document {sorted(missing)}"
