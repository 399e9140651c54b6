"""What happens when things go wrong: flaky or vanished servers, crashes, misbehaving answers, bad documents,
secrets. With the real Infinity server and SeaweedFS wherever they exist; fakes only to misbehave on purpose.
"""
from __future__ import annotations

import base64
import gc
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from PIL import Image

from infinity_assets import (
    InfinityConnectionError,
    InfinityEmbeddings,
    InfinityResponseError,
    artifacts,
)
from infinity_assets.artifacts import ArtifactError
from infinity_assets.corpus import ClientSettings, CorpusSpec, StoreSettings
from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.storage.documents import DocumentStore, DocumentStoreError
from infinity_assets.pipeline import embed_partition
from infinity_assets.testing import fake_infinity as fi
from infinity_assets.testing.fake_infinity import FakeInfinity
from infinity_assets_dev.fault_proxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]
MODEL = "minilm-colbert-128"


def png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def put_texts(store_root, partition: str, count: int, prefix: str = "document") -> None:
    for i in range(count):
        store_root.put(f"raw/text/{partition}/{prefix}-{i:03d}.txt", f"{prefix} number {i} about topic {i % 7}")


def materialize_text(spec: CorpusSpec, partition: str, instance,
                     **options: object) -> dg.ExecuteInProcessResult:
    """Materialize one text batch of the corpus with the embedding asset's checks, as its job does."""
    defs = build_corpus_definitions(spec)
    key = dg.AssetKey([spec.name, "text_embeddings"])
    checks = [c for c in defs.asset_checks or [] if {k.asset_key for k in c.check_keys} == {key}]
    instance.add_dynamic_partitions(spec.modality("text").partitions_name, [partition])
    return dg.materialize([defs.get_assets_def(key), *checks], partition_key=partition, instance=instance,
                          **options)


def artifact_content(store: DocumentStore, modality: str, partition: str):
    """Everything in an artifact except the time it was written."""
    artifact = artifacts.read_artifact(store.fs, store.artifact_path(modality, partition))
    order = np.argsort(artifact.doc_ids)
    return ([artifact.doc_ids[i] for i in order], [artifact.fingerprints[i] for i in order],
            [artifact.vectors_of(i).copy() for i in order])


# ---------------------------------------------------------------------------------------------- flaky server
def test_flaky_server_gives_the_same_artifact_as_a_clean_run(infinity_server, store_root):
    put_texts(store_root, "flaky", 60)
    put_texts(store_root, "clean", 60)
    store = store_root.store()
    with InfinityEmbeddings(url=infinity_server.url, model_name=MODEL, embed_batch_size=4) as client:
        embed_partition(store, client, "text", "clean")
    with FaultProxy(infinity_server.url, failure_rate=0.2, hang_seconds=4.0) as proxy:
        with InfinityEmbeddings(url=proxy.url, model_name=MODEL, embed_batch_size=4, max_retries=8,
                                timeout=2.5) as client:
            client._sleep = lambda seconds: time.sleep(min(seconds, 0.05))  # keep backoff short in tests
            report = embed_partition(store, client, "text", "flaky")
    assert sum(proxy.injected.values()) >= 3 and set(proxy.injected) >= {"503", "reset"}
    assert report.retries >= sum(proxy.injected.values()) and report.failed == 0
    clean_ids, clean_fps, clean_vectors = artifact_content(store, "text", "clean")
    flaky_ids, _, flaky_vectors = artifact_content(store, "text", "flaky")
    assert flaky_ids == clean_ids and len(flaky_ids) == 60  # nothing lost, nothing duplicated
    for a, b in zip(clean_vectors, flaky_vectors):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_retries_are_visible_in_run_metadata_and_logs(infinity_server, tmp_path):
    root = tmp_path / "store"
    for i in range(20):
        (root / "raw/text/b").mkdir(parents=True, exist_ok=True)
        (root / f"raw/text/b/d{i}.txt").write_text(f"document {i}")
    with FaultProxy(infinity_server.url, failure_rate=0.3, faults=("503", "429"), seed=3) as proxy:
        spec = CorpusSpec(name="t", store=StoreSettings(root=str(root)), text=ClientSettings(
            url=proxy.url, model_name=MODEL, embed_batch_size=2, max_retries=10))
        with dg.instance_for_test() as instance:
            result = materialize_text(spec, "b", instance)
            messages = [record.user_message for record in instance.all_logs(result.run_id)]
    metadata = result.asset_materializations_for_node("t__text_embeddings")[0].metadata
    assert metadata["retries"].value >= 1 and sum(proxy.injected.values()) >= 1
    assert any("were retried" in message for message in messages)


# ---------------------------------------------------------------------------------------------- servers gone
def test_infinity_stopped_mid_partition_fails_clearly_and_the_rerun_completes(start_infinity, tmp_path):
    server = start_infinity([MODEL])
    root = tmp_path / "store"
    (root / "raw/text/b").mkdir(parents=True)
    for i in range(40):
        (root / f"raw/text/b/d{i:02d}.txt").write_text(f"document {i}")
    store = DocumentStore(str(root))

    def stop_after_some(forwarded: int) -> None:
        if forwarded == 4:  # the server dies; its address (the proxy's) stops answering too
            server.stop()
            proxy.stop_listening()

    with FaultProxy(server.url, failure_rate=0.0, on_request=stop_after_some) as proxy:
        with InfinityEmbeddings(url=proxy.url, model_name=MODEL, embed_batch_size=2, max_concurrency=1,
                                max_retries=1) as client:
            client._sleep = lambda seconds: None
            with pytest.raises(InfinityConnectionError) as info:
                embed_partition(store, client, "text", "b")
    assert not Path(store.artifact_path("text", "b")).exists()  # nothing published
    server.start()
    with InfinityEmbeddings(url=server.url, model_name=MODEL) as client:
        report = embed_partition(store, client, "text", "b")
    assert report.embedded == 40
    assert f"cannot reach the Infinity server at {proxy.url}" in str(info.value)
    assert "check that it is running" in str(info.value) and "INFINITY_API_URL" in str(info.value)


def test_seaweedfs_stopped_mid_upload_publishes_nothing_then_the_rerun_completes(tmp_path):
    from infinity_assets_dev.seaweedfs import SeaweedFS

    with SeaweedFS(tmp_path / "weed") as s3:
        s3.create_bucket("docs")
        s3.filesystem().pipe({f"docs/raw/images/b/p{i:02d}.png": png(color=(i, 0, 0)) for i in range(40)})
        store = DocumentStore("s3://docs", **s3.storage_options())
        uploads_seen = []

        def stop_mid_upload(body) -> float:
            # By the 14th request (28 images, ~28 MB of vectors) parts of the artifact have been uploaded.
            if len(fake.requests) == 14 and not uploads_seen:
                uploads_seen.extend(store.fs.call_s3("list_multipart_uploads", Bucket="docs").get("Uploads", []))
                # gone at once, as a crash or a lost network leaves it (a graceful stop answers 500s while it
                # shuts down: a server error, reported as such)
                s3.kill()
            return 0.0

        fake = FakeInfinity(delay=stop_mid_upload, image_rows=2000)  # ~1 MB of vectors per image
        with InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport(),
                                embed_batch_size=2, max_concurrency=1) as client:
            with pytest.raises(DocumentStoreError, match="cannot reach the S3 endpoint") as info:
                embed_partition(store, client, "images", "b", row_group_size=4)
        assert s3.endpoint_url in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)
        assert [u["Key"] for u in uploads_seen] == ["embeddings/images/b.parquet"]  # it was mid-upload
        s3.start()
        del info
        gc.collect()  # an upload object left open would complete its upload when collected
        fs = s3.filesystem()
        assert not fs.exists("docs/embeddings/images/b.parquet"), "a partial artifact was published"
        with InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport(),
                                embed_batch_size=8) as client:
            report = embed_partition(store, client, "images", "b")
        assert report.failures == [] and report.embedded == 40
        assert len(artifacts.read_artifact(fs, "docs/embeddings/images/b.parquet")) == 40


# ---------------------------------------------------------------------------------------------- crash
CRASH_SCRIPT = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {repo!r})
    from infinity_assets import InfinityEmbeddings
    from infinity_assets.storage.documents import DocumentStore
    from infinity_assets.pipeline import embed_partition
    from infinity_assets.testing.fake_infinity import FakeInfinity
    fake = FakeInfinity(delay=0.05)
    store = DocumentStore({root!r}, **{options!r})
    client = InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport(),
                                embed_batch_size=1, max_concurrency=1)
    print("started", flush=True)
    embed_partition(store, client, "text", "b", row_group_size=2)
''')


def test_sigkill_while_writing_keeps_the_previous_artifact(store_root):
    put_texts(store_root, "b", 10, "old")
    store = store_root.store()
    fake = FakeInfinity()
    with InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport()) as client:
        embed_partition(store, client, "text", "b")
    path = store.artifact_path("text", "b")
    before = store.fs.cat_file(path)
    put_texts(store_root, "b", 200, "new")
    script = CRASH_SCRIPT.format(repo=str(REPO), root=store_root.url, options=store_root.options)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "started"
    time.sleep(3.0)  # embedding 200 documents at 50 ms each takes 10 s: it is mid-way
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert store.fs.cat_file(path) == before  # the previous artifact, intact
    assert len(artifacts.read_artifact(store.fs, path)) == 10
    visible = store.fs.ls(path.rsplit("/", 1)[0], detail=False, **({"refresh": True} if store.is_s3 else {}))
    assert sorted(p.rsplit("/", 1)[1] for p in visible) in (
        [".staging", "b.failures.json", "b.parquet"], ["b.failures.json", "b.parquet"])
    with InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport()) as client:
        report = embed_partition(store, client, "text", "b")
    assert report.total == 210
    if not store.is_s3:
        assert os.listdir(Path(path).parent / ".staging") == []  # the next run cleaned up


# ---------------------------------------------------------------------------------------------- misbehaving server
def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.astype("<f4").tobytes()).decode()


MISBEHAVIOURS = {
    "wrong vector size": (lambda: fi.raw_body(json.dumps({"data": [
        {"embedding": _b64(np.ones((3, 100))), "index": 0}]}).encode()), r"hidden_dim=128"),
    "malformed base64": (lambda: fi.raw_body(b'{"data": [{"embedding": "!!not base64!!", "index": 0}]}'),
                         r"not valid base64"),
    "fewer embeddings than inputs": (lambda: fi.raw_body(b'{"data": []}'), r"returned 0 embeddings for 1 inputs"),
    "invalid JSON": (lambda: fi.raw_body(b"<html>proxy error</html>"), r"invalid JSON"),
    "NaN values": (lambda: fi.raw_body(json.dumps({"data": [
        {"embedding": _b64(np.full((3, 128), np.nan)), "index": 0}]}).encode()), r"NaN or infinite"),
}


@pytest.mark.parametrize("case", list(MISBEHAVIOURS))
def test_misbehaving_server_gives_a_clear_error_and_publishes_nothing(case, tmp_path):
    make_fault, message = MISBEHAVIOURS[case]
    root = tmp_path / "store"
    (root / "raw/text/b").mkdir(parents=True)
    (root / "raw/text/b/only.txt").write_text("one document")
    store = DocumentStore(str(root))
    fake = FakeInfinity()
    with InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport(),
                            max_retries=2) as client:
        client._sleep = lambda seconds: None
        client.detect_hidden_dim()
        fake.faults = [make_fault() for _ in range(3)]
        with pytest.raises((InfinityResponseError, ArtifactError), match=message):
            embed_partition(store, client, "text", "b")
    assert not Path(store.artifact_path("text", "b")).exists()
    assert not list((root / "embeddings/text").glob("*.parquet"))


# ---------------------------------------------------------------------------------------------- bad documents
def test_bad_documents_are_recorded_or_skipped_and_the_rest_embedded(infinity_server, store_root):
    good = {"raw/text/b/good.txt": "a good document", "raw/text/b/we ird #%name.txt": "odd characters in the key",
            "raw/text/b/dots..in..name.txt": "dots are not a path", "raw/text/b/lines.jsonl":
            '{"id": "ok", "text": "fine line"}\n{"id": "no-text"}\n'}
    bad = {"raw/text/b/empty.txt": b"", "raw/text/b/latin1.txt": "caf\xe9".encode("latin-1"),
           "raw/text/b/huge.txt": b"x" * 122_881, "raw/text/b/notes.docx": b"PK\x03\x04"}
    for key, data in {**good, **bad}.items():
        store_root.put(key, data)
    store = store_root.store()
    with InfinityEmbeddings(url=infinity_server.url, model_name=MODEL) as client:
        report = embed_partition(store, client, "text", "b", max_failure_ratio=1.0)
    reasons = dict(report.failures)
    assert set(reasons) == {"empty.txt", "latin1.txt", "huge.txt", "lines.jsonl#no-text"}
    assert "empty file" in reasons["empty.txt"] and "UTF-8" in reasons["latin1.txt"]
    assert "122,881 characters" in reasons["huge.txt"] and "'text' is missing" in reasons["lines.jsonl#no-text"]
    assert report.skipped_keys == ["notes.docx"]
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b"))
    assert sorted(artifact.doc_ids) == ["dots..in..name.txt", "good.txt", "lines.jsonl#ok", "we ird #%name.txt"]


def test_bad_images_are_recorded_and_the_rest_embedded(infinity_server, store_root):
    store_root.put("raw/images/b/good.png", png())
    store_root.put("raw/images/b/tiny.png", png(size=(2, 2)))
    store_root.put("raw/images/b/corrupt.jpg", b"\xff\xd8\xff garbage")
    store_root.put("raw/images/b/truncated.png", png(size=(64, 64))[:100])
    store_root.put("raw/images/b/zero.png", b"")
    store = store_root.store()
    with InfinityEmbeddings(url=infinity_server.url, model_name="colqwen2-tiny") as client:
        report = embed_partition(store, client, "images", "b", max_failure_ratio=1.0)
        assert client.embed_image(png()).shape[1] == 128  # the server is still healthy afterwards
    assert report.embedded == 1 and set(dict(report.failures)) == {"tiny.png", "corrupt.jpg", "truncated.png", "zero.png"}


def test_keys_cannot_leave_the_store_root(tmp_path):
    store = DocumentStore(str(tmp_path / "root"))
    for key in ("../outside.txt", "raw/../../etc/passwd", "/etc/passwd"):
        with pytest.raises(DocumentStoreError, match="does not name a file inside the store root"):
            store.path(key)
    for partition in ("%2E%2E", "..", "a%2Fb", "a/b"):
        with pytest.raises(DocumentStoreError, match="not a single safe path segment|not a partition key"):
            store.artifact_path("text", partition)


# ---------------------------------------------------------------------------------------------- secrets
def test_secrets_never_appear_in_logs_metadata_artifacts_or_errors(start_infinity, seaweedfs, s3_bucket, caplog):
    api_key = "api-key-that-must-not-leak-1234"
    server = start_infinity([MODEL], api_key=api_key)
    seaweedfs.filesystem().pipe({f"{s3_bucket}/raw/text/s/a.txt": b"secret-free text",
                                 f"{s3_bucket}/raw/text/s/bad.txt": b"\xff"})
    spec = CorpusSpec(
        name="t", text=ClientSettings(url=server.url, model_name=MODEL, api_key=api_key),
        store=StoreSettings(root=f"s3://{s3_bucket}", endpoint_url=seaweedfs.endpoint_url,
                            access_key_id=seaweedfs.access_key, secret_access_key=seaweedfs.secret_key))
    caplog.set_level("DEBUG")
    with dg.instance_for_test() as instance:
        result = materialize_text(spec, "s", instance, raise_on_error=False)
        stored_events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
    fs = seaweedfs.filesystem()
    artifact_bytes = fs.cat(f"{s3_bucket}/embeddings/text/s.parquet") + fs.cat(f"{s3_bucket}/embeddings/text/s.failures.json")
    errors = []
    for key in (None, "wrong"):
        with InfinityEmbeddings(url=server.url, model_name=MODEL, api_key=key) as client:
            try:
                client.embed_text("x")
            except Exception as exc:
                errors.append(f"{exc!r} {exc}")
    wrong_store = DocumentStore(f"s3://{s3_bucket}", endpoint_url=seaweedfs.endpoint_url, key=seaweedfs.access_key,
                                secret=seaweedfs.secret_key + "x")
    try:
        wrong_store.list_partitions("text")
    except DocumentStoreError as exc:
        errors.append(str(exc))
    definitions = build_corpus_definitions(spec)
    definitions_text = [str(v) for a in definitions.assets if isinstance(a, dg.AssetsDefinition)
                        for v in (*a.descriptions_by_key.values(), *a.metadata_by_key.values())]
    everything = "\n".join([caplog.text, str(result.all_events), stored_events, repr(spec), *definitions_text,
                            *errors, artifact_bytes.decode("latin-1")])
    assert len(errors) == 3 and "denied" in errors[2]
    assert not result.success and "a.txt" in str(result.all_events)  # it ran; the bad document failed it
    for secret in (api_key, seaweedfs.secret_key):
        assert secret not in everything


# ---------------------------------------------------------------------------------------------- load
def _claim_as_dagster_does(connection, run_id: str):
    """Dagster 1.13's claim of a pool slot on an autocommit connection: its SELECT now, and a function that
    runs its UPDATE later and returns the rows updated (the race is another claim between the two)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM concurrency_slots WHERE concurrency_key = 'infinity' AND step_key IS NULL "
                       "AND deleted = false LIMIT 1 FOR UPDATE SKIP LOCKED")
        slot = cursor.fetchone()[0]

    def update() -> int:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE concurrency_slots SET run_id = %s, step_key = 'text_embeddings' WHERE id = %s",
                           (run_id, slot))
            return cursor.rowcount

    return update


def test_the_slot_guard_makes_two_racing_claims_take_one_slot(tmp_path):
    """Two claims that selected the same free slot (what the race does): without the guard both update it and
    both steps run; with it the second updates nothing, which Dagster reads as blocked. Freeing still works.

    The guard is an opt-in ops workaround for Dagster 1.13.x (deploy/postgres/concurrency_slot_guard.sql);
    what it protects is the exactness of the `infinity` pool's limit, i.e. the GPU servers' load, which the
    client's ``max_concurrency`` and the server's 429 answers bound even without it."""
    from infinity_assets_dev.postgres import PostgresServer

    with PostgresServer() as postgres:
        (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_url": postgres.url}}}))
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            instance.event_log_storage.set_concurrency_slots("infinity", 2)
            first, second = postgres.connect(), postgres.connect()
            try:
                racing = [_claim_as_dagster_does(first, "run-a"), _claim_as_dagster_does(second, "run-b")]
                assert [update() for update in racing] == [1, 1]  # Dagster's race, unguarded
                instance.event_log_storage.free_concurrency_slots_for_run("run-a")
                instance.event_log_storage.free_concurrency_slots_for_run("run-b")

                postgres.apply_slot_guard()  # the opt-in ops workaround, checked against this Dagster's version
                postgres.apply_slot_guard()  # idempotent
                racing = [_claim_as_dagster_does(first, "run-a"), _claim_as_dagster_does(second, "run-b")]
                assert [update() for update in racing] == [1, 0]
                assert instance.event_log_storage.get_concurrency_info("infinity").active_slot_count == 1
                instance.event_log_storage.free_concurrency_slots_for_run("run-a")
                assert instance.event_log_storage.get_concurrency_info("infinity").active_slot_count == 0
                # Dagster's own claims through the guard: two of three steps get the pool of 2.
                claims = [instance.event_log_storage.claim_concurrency_slot("infinity", f"run-{i}", "text_embeddings")
                          for i in range(3)]
                assert [claim.is_claimed for claim in claims] == [True, True, False]
            finally:
                first.close()
                second.close()


def test_eight_concurrent_partition_runs_share_the_server_within_the_pool_limit(infinity_server, tmp_path):
    """Eight `dagster asset materialize` processes at once on one instance: all succeed, pool limit 2 holds.

    What the exact limit guards is the GPU servers' load: at most 2 embedding steps against the one Infinity
    server. The client's own ``max_concurrency`` and the server's 429 answers (retried) already bound that load
    without Dagster; the pool makes it exact only with the opt-in slot guard of deploy/postgres (Dagster 1.13's
    claims race on PostgreSQL, see that file), which this test applies as a deployment that opted in does.

    The instance is the repo's dagster.yaml (the `infinity` pool's default limit) with PostgreSQL storage, as
    the README recommends for deployments: on SQLite, Dagster's slot claims are not atomic across processes
    (seen here: 3 and 4 steps at once), see servers/postgres.py.
    """
    from infinity_assets_dev.postgres import PostgresServer
    from infinity_assets_tests.test_cli import BIN, clean_env

    home, root = tmp_path / "home", tmp_path / "store"
    home.mkdir()
    partitions = [f"load-{i}" for i in range(8)]
    for partition in partitions:
        (root / "raw/text" / partition).mkdir(parents=True)
        for j in range(40):
            (root / "raw/text" / partition / f"d{j:02d}.txt").write_text(f"document {j} of {partition} " * 20)
    env = clean_env(DAGSTER_HOME=str(home), INFINITY_API_URL=infinity_server.url, INFINITY_MODEL=MODEL,
                    INFINITY_ASSETS_ROOT=str(root), INFINITY_BATCH_SIZE="2", INFINITY_MAX_CONCURRENCY="1")
    with PostgresServer() as postgres:
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        config["storage"] = {"postgres": {"postgres_url": postgres.url}}
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("default_text_batches", partitions)
            # Dagster creates a pool's slots from the default limit on first use, and runs racing to do it
            # fail (PostgreSQL: duplicate key) or over-allocate (SQLite): create it once first (README).
            instance.event_log_storage.initialize_concurrency_limit_to_default("infinity")
        postgres.apply_slot_guard()  # opted in: without it Dagster's claims can race past the limit (README)
        processes = [subprocess.Popen(
            [BIN / "dagster", "asset", "materialize", "-m", "infinity_assets.definitions", "--select",
             "default/text_embeddings", "--partition", partition], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) for partition in partitions]
        outputs = [process.communicate(timeout=600)[0] for process in processes]
        for process, output in zip(processes, outputs):
            assert process.returncode == 0, output[-3000:]
        spans, blocked = [], 0
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert len(instance.get_runs()) == 8
            assert instance.event_log_storage.get_concurrency_info("infinity").slot_count == 2  # dagster.yaml
            for run in instance.get_runs():
                records = instance.all_logs(run.run_id)
                times = {record.dagster_event.event_type_value: record.timestamp for record in records
                         if record.dagster_event and record.step_key == "default__text_embeddings"}
                spans.append((times["STEP_START"], times["STEP_SUCCESS"]))
                blocked += sum("blocked by limit for pool infinity" in record.user_message for record in records)

    store = DocumentStore(str(root))
    for partition in partitions:
        assert len(artifacts.read_artifact(store.fs, store.artifact_path("text", partition))) == 40
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert max(running) <= 2, f"more than 2 embedding steps ran at once: {spans}"
    assert blocked >= 1, "no step ever waited for the pool: the test did not exercise the limit"
