"""A Dagster user's own project with two corpora, driven by the real ``dg`` CLI and ``dagster-daemon``.

As the README tells a user: ``dg scaffold defs infinity_assets.InfinityCorpusComponent <name>``, edit the
``defs.yaml``, ``dg check yaml`` / ``dg check defs``, ``dg list defs``, ``dg launch --assets ... --partition ...``;
then the daemon embeds each corpus (its own model, Infinity server and SeaweedFS bucket) into its own root only,
and each index answers from its own documents.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from infinity_assets.corpus import ClientSettings
from infinity_assets.index import IndexReader
from infinity_assets.storage.documents import DocumentStore
from infinity_assets_dev.infinity import InfinityServer
from infinity_assets_dev.processes import ProcessGroup, log_tail

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TYPE = "infinity_assets.InfinityCorpusComponent"
CONTRACTS = {"raw/text/2026-q1/lease.txt": "The tenant shall repaint the warehouse walls every second year.",
             "raw/text/2026-q1/supply.md": "# Supply\nThe supplier delivers forty pallets of copper wire monthly.",
             "raw/text/2026-q2/nda.txt": "Neither party may disclose the prototype drawings to competitors."}
NOTES = {"raw/text/week-1/turbine.txt": "The turbine blades showed hairline cracks after the vibration test.",
         "raw/text/week-1/pump.txt": "We replaced the coolant pump seal on the second test rig.",
         "raw/text/week-2/firmware.md": "# Firmware\nThe motor controller firmware now limits current at startup."}


def make_project(path: Path) -> Path:
    """An empty dg project ``acme`` (a user's own, not this checkout) whose definitions load its defs folder."""
    (path / "src" / "acme" / "defs").mkdir(parents=True)
    (path / "pyproject.toml").write_text(
        '[project]\nname = "acme"\nversion = "0.1.0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "acme"\n')
    (path / "src" / "acme" / "__init__.py").write_text("")
    (path / "src" / "acme" / "defs" / "__init__.py").write_text("")
    (path / "src" / "acme" / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\ndef defs():\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n")
    return path


def dg_cli(project: Path, env: dict[str, str], *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """``dg <arguments>`` in the project, in this test's virtual environment (as a user's activated venv)."""
    done = subprocess.run([str(BIN / "dg"), *arguments], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, f"dg {' '.join(arguments)}:\n{done.stdout}\n{done.stderr}"
    return done


def corpus(name: str, bucket: str, url: str, model: str, hidden_dim: int) -> dict:
    """A text corpus's attributes, its S3 secret and server templated from the environment."""
    return {"name": name, "root": f"s3://{bucket}/{name}",
            "s3": {"endpoint_url": "{{ env.AWS_ENDPOINT_URL }}", "access_key_id": "{{ env.AWS_ACCESS_KEY_ID }}",
                   "secret_access_key": "{{ env.AWS_SECRET_ACCESS_KEY }}"},
            "text": {"url": url, "model_name": model, "hidden_dim": hidden_dim},
            "sensor": {"minimum_interval_seconds": 5}, "index": {"sync_interval_seconds": 5, "drift_queries": 4}}


@pytest.fixture(scope="module")
def second_server(tmp_path_factory):
    """A second real Infinity server, serving only minilm-colbert (384-d): another corpus's own server."""
    with InfinityServer(["minilm-colbert"], log_dir=tmp_path_factory.mktemp("second-infinity")) as server:
        yield server


@pytest.fixture
def project(tmp_path, seaweedfs, infinity_server, second_server):
    """The user project with ``contracts`` (minilm-colbert-128 on the session's server) and ``notes``
    (minilm-colbert, 384-d, on a second server), each in its own bucket, scaffolded with ``dg`` then edited."""
    second = second_server
    buckets = {"contracts": seaweedfs.create_bucket(), "notes": seaweedfs.create_bucket()}
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_", "DAGSTER_"))},
           **seaweedfs.environment(), "DAGSTER_HOME": str(home), "VIRTUAL_ENV": sys.prefix,
           "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]), "LANCE_LOG": "error"}
    # Create the instance's storage once, before the CLI, the daemon and this test open it concurrently.
    subprocess.run([str(BIN / "dagster"), "instance", "info"], env=env, check=True, capture_output=True, timeout=120)
    path = make_project(tmp_path / "acme")
    env["PYTHONPATH"] = str(path / "src")  # what `pip install -e .` of the user's project gives
    for name, url, model, dim in (("contracts", infinity_server.url, "minilm-colbert-128", 128),
                                  ("notes", second.url, "minilm-colbert", 384)):
        dg_cli(path, env, "scaffold", "defs", TYPE, name)
        defs_yaml = path / "src" / "acme" / "defs" / name / "defs.yaml"
        scaffolded = yaml.safe_load(defs_yaml.read_text())
        assert scaffolded["type"] == TYPE and scaffolded["attributes"]["name"] == name
        defs_yaml.write_text(yaml.safe_dump({
            "type": TYPE, "attributes": corpus(name, buckets[name], url, model, dim),
            "requirements": {"env": ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]}},
            sort_keys=False))
    return path, env, buckets, seaweedfs


def test_dg_lists_the_component_and_checks_and_lists_the_two_corpora(project):
    path, env, _, _ = project
    assert TYPE in dg_cli(path, env, "list", "components").stdout
    assert "All component YAML validated successfully" in dg_cli(path, env, "check", "yaml").stdout
    assert "All definitions loaded successfully" in dg_cli(path, env, "check", "defs").stdout
    listed = json.loads(dg_cli(path, env, "list", "defs", "--json").stdout)
    keys = {asset["asset_key"] for asset in listed["assets"]}
    assert keys == {f"{c}/{a}" for c in ("contracts", "notes")
                    for a in ("raw_text_documents", "text_embeddings", "text_index")}
    assert {s["name"] for s in listed["sensors"]} == {f"{c}_{s}" for c in ("contracts", "notes")
                                                      for s in ("new_documents_sensor", "index_automation_sensor")}


def test_dg_check_defs_points_at_the_misspelt_attribute(project):
    # `dg check defs`, not `dg check yaml`: Dagster 1.13's YAML check validates one instance per component type
    # (dagster_dg_core.check.check_yaml keys the files by type), so with two corpora it can miss one.
    path, env, _, _ = project
    defs_yaml = path / "src" / "acme" / "defs" / "notes" / "defs.yaml"
    body = yaml.safe_load(defs_yaml.read_text())
    body["attributes"]["text"]["modle_name"] = body["attributes"]["text"].pop("model_name")
    defs_yaml.write_text(yaml.safe_dump(body, sort_keys=False))
    done = dg_cli(path, env, "check", "defs", check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{defs_yaml}:" in output and "attributes.text" in output and "modle_name" in output, output


def test_dg_launch_embeds_one_batch_of_one_corpus_into_its_own_root(project):
    path, env, buckets, seaweedfs = project
    fs = seaweedfs.filesystem()
    fs.pipe({f"{buckets['notes']}/notes/{key}": text.encode() for key, text in NOTES.items()})
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.add_dynamic_partitions("notes_text_batches", ["week-1"])
    dg_cli(path, env, "launch", "--assets", "notes/text_embeddings", "--partition", "week-1")
    assert fs.glob(f"{buckets['notes']}/notes/embeddings/text/*.parquet") == [
        f"{buckets['notes']}/notes/embeddings/text/week-1.parquet"]
    assert not fs.exists(f"{buckets['contracts']}/contracts/embeddings")


@pytest.mark.timeout(900)
def test_the_daemon_embeds_and_indexes_each_corpus_into_its_own_root_only(project, tmp_path):
    path, env, buckets, seaweedfs = project
    fs = seaweedfs.filesystem()
    for name, documents in (("contracts", CONTRACTS), ("notes", NOTES)):
        fs.pipe({f"{buckets[name]}/{name}/{key}": text.encode() for key, text in documents.items()})
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "acme.definitions", "working_directory": str(path / "src"), "location_name": "acme"}}]}))
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log, ProcessGroup("dagster-daemon", [BIN / "dagster-daemon", "run", "-w", workspace],
                                                   env=env, cwd=tmp_path, output=log) as daemon, \
            dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        deadline = time.monotonic() + 600
        while not all(indexed(instance, name) for name in ("contracts", "notes")):
            failed = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.FAILURE]
            assert not failed and daemon.alive() and time.monotonic() < deadline, log_tail(log_path)
            time.sleep(1.0)
        runs = instance.get_runs()
    # Each sensor launched runs of its own corpus only.
    for run in runs:
        sensor = run.tags.get("dagster/sensor_name", "")
        if sensor.endswith("_new_documents_sensor"):
            corpus_name = sensor.removesuffix("_new_documents_sensor")
            assert {k.path[0] for k in run.asset_selection} == {corpus_name}, (sensor, run.asset_selection)
    # Each root holds its own artifacts only, and each index answers from its own documents.
    for name, documents, query, answer in (("contracts", CONTRACTS, "copper wire pallets", "supply.md"),
                                           ("notes", NOTES, "cracks in the turbine blades", "turbine.txt")):
        batches = sorted({key.split("/")[2] for key in documents})
        assert sorted(p.rsplit("/", 1)[1] for p in fs.glob(f"{buckets[name]}/{name}/embeddings/text/*.parquet")) == [
            f"{b}.parquet" for b in batches]
        store = DocumentStore(f"s3://{buckets[name]}/{name}", **seaweedfs.storage_options())
        reader = IndexReader(store, "text")
        text = yaml.safe_load((path / "src" / "acme" / "defs" / name / "defs.yaml").read_text())["attributes"]["text"]
        assert reader.model == text["model_name"]  # indexed with its own model
        with ClientSettings(url=text["url"], model_name=text["model_name"], hidden_dim=None).build_client() as client:
            hits = reader.search(client.embed_query(query), 10)
        assert {hit.doc_id for hit in hits} == {key.rsplit("/", 1)[1] for key in documents}  # its own, all of them
        assert hits[0].doc_id == answer


def indexed(instance: dg.DagsterInstance, corpus_name: str) -> bool:
    """The corpus's batches are embedded and its index synced after the last of them."""
    embedded = instance.fetch_materializations(dg.AssetKey([corpus_name, "text_embeddings"]), limit=100).records
    synced = instance.fetch_materializations(dg.AssetKey([corpus_name, "text_index"]), limit=1).records
    return len({r.partition_key for r in embedded}) == 2 and bool(synced) and \
        synced[0].storage_id > max(r.storage_id for r in embedded)


def test_dg_checks_and_lists_this_checkouts_own_two_corpora():
    # This checkout is a dg project too (make demo / make dev run it); loading contacts no server.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_", "DAGSTER_"))},
           "VIRTUAL_ENV": sys.prefix, "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),
           "PYTHONPATH": str(REPO), "DEMO_DOCS_ROOT": "s3://docs", "DEMO_PAGES_ROOT": "s3://pages",
           "DEMO_TEXT_MODEL": "minilm-colbert-128", "DEMO_IMAGE_MODEL": "colqwen2-tiny",
           "INFINITY_API_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"}
    assert "All definitions loaded successfully" in dg_cli(REPO, env, "check", "defs").stdout
    listed = json.loads(dg_cli(REPO, env, "list", "defs", "--json").stdout)
    assert {asset["asset_key"] for asset in listed["assets"]} == {
        "docs/raw_text_documents", "docs/text_embeddings", "docs/text_index",
        "pages/raw_image_documents", "pages/image_embeddings", "pages/image_index"}
