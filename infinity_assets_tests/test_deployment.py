"""The production deployment as separate processes: PostgreSQL, a gRPC code server, the daemon and the webserver.

Configured with deploy/dagster.yaml and a workspace shaped like deploy/workspace.yaml (no `dagster dev`): documents
dropped into SeaweedFS are found by the sensor, whose runs are queued, launched by the daemon and embed them.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml

from infinity_assets import artifacts
from infinity_assets.documents import DocumentStore

from .servers.ports import free_port
from .servers.postgres import PostgresServer
from .test_cli import BIN, REPO, clean_env

MODEL = "minilm-colbert-128"


def wait_for(condition, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"{what} did not happen within {timeout:g} s\n{tails}")


def test_sensor_runs_embed_new_documents_with_production_processes(tmp_path, infinity_server, seaweedfs, s3_bucket,
                                                                   monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    grpc_port, web_port = free_port(), free_port()
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=grpc_port)
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    seaweedfs.filesystem().pipe({f"{s3_bucket}/raw/text/prod-batch/{name}.txt": f"production document {name}".encode()
                                 for name in ("alpha", "beta", "gamma")})
    with PostgresServer() as postgres:
        env = clean_env(DAGSTER_HOME=str(home), DAGSTER_PG_HOST="127.0.0.1", DAGSTER_PG_PORT=str(postgres.port),
                        DAGSTER_PG_USERNAME="postgres", DAGSTER_PG_PASSWORD="", DAGSTER_PG_DB="dagster",
                        INFINITY_API_URL=infinity_server.url, INFINITY_MODEL=MODEL,
                        INFINITY_ASSETS_ROOT=f"s3://{s3_bucket}", AWS_ENDPOINT_URL=seaweedfs.endpoint_url,
                        AWS_ACCESS_KEY_ID=seaweedfs.access_key, AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key,
                        AWS_REGION="us-east-1")
        for name, value in env.items():
            if name.startswith("DAGSTER_PG_"):
                monkeypatch.setenv(name, value)  # this test reads the same instance
        for pool, limit in (("infinity", "2"), ("index_writer", "1")):  # the README's first step
            subprocess.run([BIN / "dagster", "instance", "concurrency", "set", pool, limit], env=env, check=True,
                           capture_output=True, timeout=120)
        commands = {
            "code-server": [BIN / "dagster", "code-server", "start", "-m", "infinity_assets.definitions",
                            "-h", "127.0.0.1", "-p", str(grpc_port)],
            "daemon": [BIN / "dagster-daemon", "run", "-w", tmp_path / "workspace.yaml"],
            "webserver": [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", str(web_port),
                          "-w", tmp_path / "workspace.yaml"],
        }
        logs = [tmp_path / f"{name}.log" for name in commands]
        processes = []
        try:
            for (name, command), log in zip(commands.items(), logs):
                with open(log, "wb") as output:
                    processes.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output,
                                                      stderr=subprocess.STDOUT))
                if name == "code-server":
                    wait_for(lambda: subprocess.run(
                        [BIN / "dagster", "api", "grpc-health-check", "-p", str(grpc_port), "-h", "127.0.0.1"],
                        capture_output=True, timeout=30).returncode == 0, 120, "the code server answering", logs)

            with dg.DagsterInstance.from_config(str(home)) as instance:
                def embedded() -> bool:
                    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "prod-batch"}))
                    failed = [r for r in runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
                    assert not failed, f"run {failed[0].run_id} ended {failed[0].status}"
                    return any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

                wait_for(embedded, 240, "a sensor-launched run embedding prod-batch", logs)
                run = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "prod-batch"}))[0]
                assert run.tags.get("dagster/sensor_name") == "new_documents_sensor"
                assert run.run_id in {r.run_id for r in instance.get_runs(
                    dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))}
            store = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
            artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "prod-batch"))
            assert sorted(artifact.doc_ids) == ["alpha.txt", "beta.txt", "gamma.txt"]
            web = httpx.post(f"http://127.0.0.1:{web_port}/graphql", timeout=30, json={
                "query": "{ runsOrError { ... on Runs { results { runId status } } } }"})
            assert run.run_id in {r["runId"] for r in web.json()["data"]["runsOrError"]["results"]}
            assert all(process.poll() is None for process in processes), "a deployment process exited"
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_the_kubernetes_instance_config_is_valid_for_dagster_k8s(tmp_path):
    """deploy/k8s/dagster.yaml (what the Helm chart renders) passes Dagster's instance schema, and its run
    launcher's config passes K8sRunLauncher's own schema (a broken one does not)."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    shutil.copy(REPO / "deploy" / "k8s" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert process_config(K8sRunLauncher.config_type(), launcher["config"]).success
    broken = {**launcher["config"], "env_secrets": "not-a-list"}
    result = process_config(K8sRunLauncher.config_type(), broken)
    assert not result.success and "env_secrets" in str(result.errors)


def test_the_helm_values_name_the_image_the_location_and_the_secrets():
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "infinity_assets.definitions"]
    assert deployment["envSecrets"] == [{"name": "infinity-assets-secrets"}]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    k8s = yaml.safe_load((REPO / "deploy" / "k8s" / "dagster.yaml").read_text())
    assert k8s["run_launcher"]["config"]["env_secrets"] == ["infinity-assets-secrets"]


def test_the_dockerfile_wheel_step_builds_the_package(tmp_path):
    """The image's first stage runs `pip wheel --no-deps --wheel-dir /wheels .`: the same here, without docker."""
    import sys
    import zipfile

    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "RUN pip wheel --no-deps --wheel-dir /wheels ." in dockerfile
    assert "COPY pyproject.toml setup.cfg README.md ./" in dockerfile and "COPY infinity_assets " in dockerfile
    source = tmp_path / "src"  # what the Dockerfile copies (setuptools writes build/ beside the sources)
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "infinity_assets", source / "infinity_assets",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", tmp_path / "wheels",
                    source], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheels").glob("infinity_assets-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "infinity_assets/definitions.py" in names and "infinity_assets/formats/pdf.py" in names
    assert not any(name.startswith("infinity_assets_tests/") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "infinity-assets = infinity_assets.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
