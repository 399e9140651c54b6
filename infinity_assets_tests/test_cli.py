"""The real `dagster` and `dg` CLIs load the code location and materialize a partition with the real servers."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from infinity_assets import artifacts
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
           "dg.DagsterInstance.get().add_dynamic_partitions('text_batches', ['cli-batch'])")
    subprocess.run([sys.executable, "-c", add], env=env, check=True, timeout=120)
    result = subprocess.run(
        [BIN / "dagster", "asset", "materialize", "-m", "infinity_assets.definitions",
         "--select", "text_embeddings", "--partition", "cli-batch"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "RUN_SUCCESS" in output
    assert seaweedfs.secret_key not in output
    store = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "cli-batch"))
    assert sorted(artifact.doc_ids) == ["one.txt", "two.md"]
