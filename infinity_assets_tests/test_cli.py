"""The command lines: the real `dagster` and `dg` CLIs load the code location and materialize a partition, and
`infinity-assets search` reaches a corpus by its root, with the real Infinity server and SeaweedFS."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infinity_assets import artifacts
from infinity_assets.index import search_text
from infinity_assets.storage.documents import DocumentStore
from infinity_assets_dev.env import clean_env  # noqa: F401  (the other tests import it from here too)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_definitions_load_without_any_environment_variable(tmp_path):
    env = clean_env(DAGSTER_HOME=str(tmp_path))
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    validate = subprocess.run([BIN / "dagster", "definitions", "validate", "-w", REPO / "workspace.yaml"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    check = subprocess.run([BIN / "dg", "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0 and "loaded successfully" in check.stdout, check.stdout + check.stderr


def test_dagster_asset_materialize_embeds_a_partition(tmp_path, infinity_server, seaweedfs, s3_bucket):
    fs = seaweedfs.filesystem()
    fs.pipe({f"{s3_bucket}/raw/text/cli-batch/one.txt": b"materialized from the command line",
             f"{s3_bucket}/raw/text/cli-batch/two.md": b"# second\nanother document"})
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = clean_env(DAGSTER_HOME=str(home), INFINITY_API_URL=infinity_server.url,
                    INFINITY_MODEL="minilm-colbert-128", INFINITY_ASSETS_ROOT=f"s3://{s3_bucket}",
                    AWS_ENDPOINT_URL=seaweedfs.endpoint_url, AWS_ACCESS_KEY_ID=seaweedfs.access_key,
                    AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key)
    add = ("import dagster as dg; "
           "dg.DagsterInstance.get().add_dynamic_partitions('default_text_batches', ['cli-batch'])")
    subprocess.run([sys.executable, "-c", add], env=env, check=True, timeout=120)
    result = subprocess.run(
        [BIN / "dagster", "asset", "materialize", "-m", "infinity_assets.definitions",
         "--select", "default/text_embeddings", "--partition", "cli-batch"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "RUN_SUCCESS" in output
    assert seaweedfs.secret_key not in output
    store = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "cli-batch"))
    assert sorted(artifact.doc_ids) == ["one.txt", "two.md"]


# ------------------------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def indexed(infinity_server, seaweedfs):
    """A corpus in its own bucket, embedded with a 384-dimensional text model (not the client's default of
    128) and ColQwen2 for pages, and indexed."""
    from infinity_assets_tests.servers.service_fixtures import build_corpus
    from infinity_assets_tests.test_pdf import text_pdf

    return build_corpus(seaweedfs, infinity_server.url, text_pdf(2, "ledger"), pdf_name="ledger.pdf",
                        text_model="minilm-colbert", image_model="colqwen2-tiny")


def search_cli(args: list[str], seaweedfs, **env: str) -> subprocess.CompletedProcess:
    """``infinity-assets search ARGS`` with the S3 credentials and ``env``; no root, server or model set."""
    child = {k: v for k, v in clean_env().items() if not k.startswith(("INFINITY_IMAGE_", "INFINITY_HIDDEN",
                                                                          "INFINITY_ASSETS_ROOT"))}
    child |= {"AWS_ENDPOINT_URL": seaweedfs.endpoint_url, "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
              "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key, **env}
    return subprocess.run([BIN / "infinity-assets", "search", *args], env=child, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("modality", "query"), [("text", "a cat in the sun"), ("images", "ledger page 2")])
def test_search_reaches_a_corpus_by_its_root_with_the_model_its_index_records(modality, query, indexed,
                                                                              seaweedfs, infinity_server):
    result = search_cli([query, "--root", f"s3://{indexed.bucket}", "--url", infinity_server.url,
                         "--modality", modality, "--k", "2", "--json"], seaweedfs)
    assert result.returncode == 0, result.stderr
    with indexed.clients()[modality] as client:
        expected = [hit.to_json() for hit in search_text(indexed.store, client, query, modality, 2)]
    assert [json.loads(line) for line in result.stdout.splitlines()] == expected and len(expected) == 2


def test_search_reads_the_root_and_server_from_the_environment_without_flags(indexed, seaweedfs,
                                                                             infinity_server):
    result = search_cli(["a cat in the sun", "--k", "1", "--json"], seaweedfs,
                        INFINITY_ASSETS_ROOT=f"s3://{indexed.bucket}", INFINITY_API_URL=infinity_server.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["doc_id"] == "cats.txt"


def test_search_with_a_model_other_than_the_indexs_says_so(indexed, seaweedfs, infinity_server):
    result = search_cli(["a cat", "--root", f"s3://{indexed.bucket}", "--url", infinity_server.url,
                         "--model", "minilm-colbert-128"], seaweedfs)
    assert result.returncode == 1 and result.stdout == ""
    assert ("the text index was built with model 'minilm-colbert' (hidden_dim 384) but queries are embedded "
            "with 'minilm-colbert-128'") in result.stderr
    assert seaweedfs.secret_key not in result.stderr


def test_search_of_a_root_without_an_index_says_what_to_do(tmp_path, seaweedfs, infinity_server):
    result = search_cli(["a cat", "--root", str(tmp_path), "--url", infinity_server.url], seaweedfs)
    assert result.returncode == 1
    assert f"there is no text index at {tmp_path}" in result.stderr and "materialize" in result.stderr
