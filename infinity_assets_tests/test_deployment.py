"""The production deployment as separate processes: PostgreSQL, a gRPC code server, the daemon and the webserver.

Configured with deploy/dagster.yaml and a workspace shaped like deploy/workspace.yaml (no `dagster dev`): documents
dropped into SeaweedFS are found by the sensor, whose runs are queued, launched by the daemon and embed them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from infinity_assets import artifacts
from infinity_assets.storage.documents import DocumentStore
from infinity_assets_dev.deployment import BACKFILL_FAILED, BACKFILL_SUCCEEDED, BIN, REPO, Deployment
from infinity_assets_dev.env import clean_env
from infinity_assets_dev.postgres import SLOT_GUARD, PostgresServer

MODEL = "minilm-colbert-128"
#: infinity_assets.definitions is the env-configured corpus named ``default``: every name carries it.
EMBEDDINGS, RAW = dg.AssetKey(["default", "text_embeddings"]), dg.AssetKey(["default", "raw_text_documents"])
SENSOR, INDEX_SENSOR = "default_new_documents_sensor", "default_index_automation_sensor"


def s3_env(infinity_server, seaweedfs, s3_bucket, **extra: str) -> dict[str, str]:
    return clean_env(INFINITY_API_URL=infinity_server.url, INFINITY_MODEL=MODEL, INFINITY_ASSETS_ROOT=f"s3://{s3_bucket}",
                     AWS_ENDPOINT_URL=seaweedfs.endpoint_url, AWS_ACCESS_KEY_ID=seaweedfs.access_key,
                     AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key, AWS_REGION="us-east-1", **extra)


def test_sensor_runs_embed_new_documents_with_production_processes(tmp_path, infinity_server, seaweedfs, s3_bucket):
    seaweedfs.filesystem().pipe({f"{s3_bucket}/raw/text/prod-batch/{name}.txt": f"production document {name}".encode()
                                 for name in ("alpha", "beta", "gamma")})
    with Deployment(tmp_path, s3_env(infinity_server, seaweedfs, s3_bucket)) as deployment, \
            deployment.instance() as instance:
        def embedded() -> bool:
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "prod-batch"}))
            failed = [r for r in runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
            assert not failed, f"run {failed[0].run_id} ended {failed[0].status}"
            return any(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

        deployment.wait_for(embedded, 240, "a sensor-launched run embedding prod-batch")
        run = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "prod-batch"}))[0]
        assert run.tags.get("dagster/sensor_name") == SENSOR
        checks = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        evaluations = {r.event_log_entry.dagster_event.event_specific_data.check_name:
                       r.event_log_entry.dagster_event.event_specific_data.passed for r in checks}
        assert evaluations == {"artifact_schema": True, "documents_accounted_for": True, "vectors_valid": True,
                               "failures_within_threshold": True}  # the sensor's asset run includes the checks
        store = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
        artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "prod-batch"))
        assert sorted(artifact.doc_ids) == ["alpha.txt", "beta.txt", "gamma.txt"]
        web = deployment.graphql("{ runsOrError { ... on Runs { results { runId status } } } }")
        assert {"runId": run.run_id, "status": "SUCCESS"} in web["runsOrError"]["results"]
        assert deployment.alive(), "a deployment process exited"


def test_a_backfill_of_30_batches_is_3_runs_launched_by_the_daemon(tmp_path, infinity_server, seaweedfs, s3_bucket):
    """Launched as the UI does (GraphQL), run by the daemon with BackfillPolicy.multi_run: 10 batches per run,
    each batch materialized exactly once, the backfill complete."""
    batches = [f"backfill-{i:02d}" for i in range(30)]
    seaweedfs.filesystem().pipe({f"{s3_bucket}/raw/text/{batch}/{name}.txt": f"{name} of {batch}".encode()
                                 for batch in batches for name in ("one", "two")})
    env = s3_env(infinity_server, seaweedfs, s3_bucket, INFINITY_BACKFILL_PARTITIONS_PER_RUN="10")
    with Deployment(tmp_path, env, stopped_sensors=[SENSOR, INDEX_SENSOR]) as deployment, \
            deployment.instance() as instance:
        instance.add_dynamic_partitions("default_text_batches", batches)
        backfill_id = deployment.launch_backfill("default/text_embeddings", batches)

        def done() -> bool:
            status = instance.get_backfill(backfill_id).status.value
            assert status not in BACKFILL_FAILED, status
            return status in BACKFILL_SUCCEEDED

        deployment.wait_for(done, 300, f"backfill {backfill_id} completing")
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        ranges = sorted((r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
                        for r in runs)
        assert ranges == [("backfill-00", "backfill-09"), ("backfill-10", "backfill-19"), ("backfill-20", "backfill-29")]
        events = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EMBEDDINGS),
                                                 limit=1000).records
        assert sorted(e.partition_key for e in events) == batches  # each batch once, no other
        store = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
        assert sorted(artifacts.read_artifact(store.fs, store.artifact_path("text", batches[17])).doc_ids) == [
            "one.txt", "two.txt"]


def test_a_burst_of_new_batches_is_one_backfill_requested_by_the_sensor(tmp_path, infinity_server, seaweedfs,
                                                                       s3_bucket):
    """12 new batches in one tick, over the location's backfill_over=10: the sensor requests one backfill (not 12
    runs), the daemon runs it 6 batches per run, and each batch is materialized and observed exactly once."""
    batches = [f"burst-{i:02d}" for i in range(12)]
    seaweedfs.filesystem().pipe({f"{s3_bucket}/raw/text/{batch}/{name}.txt": f"{name} of {batch}".encode()
                                 for batch in batches for name in ("one", "two")})
    env = s3_env(infinity_server, seaweedfs, s3_bucket, INFINITY_BACKFILL_PARTITIONS_PER_RUN="6",
                 PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with Deployment(tmp_path, env, stopped_sensors=[INDEX_SENSOR],
                    module="infinity_assets_tests.burst_location") as deployment, deployment.instance() as instance:
        def backfilled() -> bool:
            backfills = instance.get_backfills()
            for backfill in backfills:
                assert backfill.status.value not in BACKFILL_FAILED, backfill.status
            return bool(backfills) and all(b.status.value == "COMPLETED_SUCCESS" for b in backfills)

        deployment.wait_for(backfilled, 300, "the sensor's backfill completing")
        [backfill] = instance.get_backfills()
        assert backfill.tags.get("infinity_assets/sensor_backfill") == "default/text"
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.tags.get("dagster/backfill") == backfill.backfill_id for r in runs)
        events = instance.fetch_materializations(EMBEDDINGS, limit=1000).records
        assert sorted(e.partition_key for e in events) == batches
        observations = instance.fetch_observations(RAW, limit=1000).records
        assert sorted(e.partition_key for e in observations) == batches


def test_the_production_location_loads_offline_and_a_bad_setting_names_its_variable(tmp_path):
    """`dagster definitions validate -m infinity_assets.definitions` (what the code server loads): no server,
    no bucket and no secret needed; a bad value of a setting fails the load naming the variable, not the
    import."""
    def validate(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN / "dagster", "definitions", "validate", "-m", "infinity_assets.definitions"], cwd=tmp_path,
            env=clean_env(DAGSTER_HOME=str(tmp_path), **env), capture_output=True, text=True, timeout=300,
            check=False)

    (tmp_path / "dagster.yaml").write_text("")
    loaded = validate(INFINITY_API_URL="http://no-such-host.invalid:7997",
                      INFINITY_ASSETS_ROOT="s3://no-such-bucket")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    refused = validate(INFINITY_BACKFILL_PARTITIONS_PER_RUN="ten")
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "INFINITY_BACKFILL_PARTITIONS_PER_RUN must be a whole number >= 1" in output
    imported = subprocess.run([sys.executable, "-c", "import infinity_assets.definitions"], cwd=tmp_path,
                              env=clean_env(INFINITY_BACKFILL_PARTITIONS_PER_RUN="ten"), timeout=120,
                              check=False)
    assert imported.returncode == 0


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
    assert "infinity_assets/definitions.py" in names and "infinity_assets/storage/formats/pdf.py" in names
    assert "infinity_assets/testing/fake_infinity.py" in names  # the fake users' tests may want
    assert not any(name.startswith(("infinity_assets_tests/", "infinity_assets_dev/")) for name in names)
    entry_points_file = next(n for n in names if n.endswith("entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(entry_points_file).decode()
    assert "infinity-assets = infinity_assets.cli:main" in entry_points
    # `dg list components` in a project that installs the wheel finds the corpus component.
    assert "[dagster_dg_cli.registry_modules]\ninfinity_assets = infinity_assets" in entry_points


def test_the_slot_guard_is_opt_in_and_refuses_a_dagster_version_it_was_not_written_for(tmp_path):
    """deploy/postgres/concurrency_slot_guard.sql patches Dagster's own table: it installs nothing unless told
    the installed Dagster is the 1.13.x it was written for; a deployment has no trigger until it opts in."""
    import psycopg2

    def triggers(postgres: PostgresServer) -> int:
        with postgres.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'infinity_assets_keep_held_slot'")
            return cursor.fetchone()[0]

    with PostgresServer() as postgres:
        (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_url": postgres.url}}}))
        with dg.DagsterInstance.from_config(str(tmp_path)):
            pass  # Dagster's tables, concurrency_slots among them
        assert triggers(postgres) == 0  # not opted in: Dagster's table untouched
        with pytest.raises(psycopg2.Error, match=r"written for Dagster 1\.13\.x, got Dagster version '1\.14\.0'"):
            postgres.apply_slot_guard("1.14.0")
        with pytest.raises(psycopg2.Error, match=r"got Dagster version \(not given\)"):
            postgres.execute_file(SLOT_GUARD)  # psql without PGOPTIONS: refused, not applied blindly
        assert triggers(postgres) == 0
        postgres.apply_slot_guard()  # this Dagster, 1.13.x
        assert dg.__version__.startswith("1.13.") and triggers(postgres) == 1
