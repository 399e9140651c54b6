"""embed_partition on the local filesystem with the fake server: incremental work, failures, atomicity.

The same behaviours against the real Infinity server and SeaweedFS are in test_assets_real.py.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infinity_assets import InfinityConnectionError, InfinityEmbeddings, InfinityResponseError, artifacts
from infinity_assets.storage.backend import UnsafeKeyError
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.storage.local import LocalBackend
from infinity_assets.pipeline import TooManyFailuresError, embed_partition
from infinity_assets.testing import fake_infinity as fi
from infinity_assets.testing.fake_infinity import FakeInfinity, vectors_for


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    batch = tmp_path / "raw" / "text" / "b1"
    (batch / "nested").mkdir(parents=True)
    for i in range(5):
        (batch / f"doc{i}.txt").write_text(f"text document number {i}")
    (batch / "nested" / "notes.md").write_text("# notes\nsome markdown")
    (batch / "lines.jsonl").write_text('{"id": "a", "text": "line a"}\n{"id": "b", "text": "line b"}\n')
    (batch / "ignore.csv").write_text("x,y")
    return tmp_path


@pytest.fixture
def fake() -> FakeInfinity:
    return FakeInfinity()


@pytest.fixture
def client(fake: FakeInfinity):
    with InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport(),
                            embed_batch_size=3, max_retries=2) as client:
        client._sleep = lambda seconds: None
        yield client


def embedded_inputs(fake: FakeInfinity) -> list[str]:
    return [item for body in fake.embedding_requests if body["encoding_format"] == "base64" for item in body["input"]]


def test_first_run_embeds_every_document_and_round_trips(root, fake, client):
    store = DocumentStore(str(root))
    report = embed_partition(store, client, "text", "b1")
    assert (report.total, report.embedded, report.reused, report.failed, report.skipped) == (8, 8, 0, 0, 1)
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"))
    assert sorted(artifact.doc_ids) == sorted(
        [f"doc{i}.txt" for i in range(5)] + ["nested/notes.md", "lines.jsonl#a", "lines.jsonl#b"])
    index = artifact.doc_ids.index("doc3.txt")
    np.testing.assert_array_equal(artifact.vectors_of(index), vectors_for("text document number 3", "text", 128))
    assert artifact.metadata["model"] == fake.model and artifact.metadata["hidden_dim"] == "128"
    assert report.vectors == len(artifact.vectors)


def test_unchanged_partition_embeds_nothing(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    before = len(fake.requests)
    report = embed_partition(store, client, "text", "b1")
    assert (report.embedded, report.reused) == (0, 8)
    assert len(fake.requests) == before


def test_adding_changing_and_deleting_documents(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    before = len(embedded_inputs(fake))
    batch = root / "raw" / "text" / "b1"
    (batch / "new.txt").write_text("a brand new document")
    (batch / "doc1.txt").write_text("doc one, rewritten")
    os.utime(batch / "doc1.txt", ns=(1, 1))
    (batch / "doc2.txt").unlink()
    (batch / "lines.jsonl").write_text('{"id": "a", "text": "line a"}\n{"id": "b", "text": "line b changed"}\n')
    report = embed_partition(store, client, "text", "b1")
    assert sorted(embedded_inputs(fake)[before:]) == ["a brand new document", "doc one, rewritten", "line b changed"]
    assert (report.embedded, report.reused, report.total) == (3, 5, 8)
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"))
    assert "doc2.txt" not in artifact.doc_ids and "new.txt" in artifact.doc_ids
    np.testing.assert_array_equal(artifact.vectors_of(artifact.doc_ids.index("doc1.txt")),
                                  vectors_for("doc one, rewritten", "text", 128))


def test_bad_documents_are_recorded_and_the_rest_embedded(root, fake, client):
    batch = root / "raw" / "text" / "b1"
    (batch / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (batch / "empty.txt").write_bytes(b"")
    (batch / "huge.txt").write_text("x" * 122_881)
    (batch / "lines.jsonl").write_text('{"id": "a", "text": "line a"}\n{"id": "b"}\nnot json\n')
    store = DocumentStore(str(root))
    report = embed_partition(store, client, "text", "b1", max_failure_ratio=1.0)
    reasons = dict(report.failures)
    assert "not valid UTF-8 (byte 3" in reasons["latin1.txt"]
    assert "empty file" in reasons["empty.txt"]
    assert "122,881 characters" in reasons["huge.txt"]
    assert "text field 'text' is missing" in reasons["lines.jsonl#b"]
    assert "invalid JSON" in reasons["lines.jsonl#L3"]
    assert report.embedded == 7 and report.failed == 5
    sidecar = artifacts.read_failures(store.fs, store.artifact_path("text", "b1"))
    assert {f["doc_id"] for f in sidecar["failures"]} == set(reasons)


def test_corrupt_image_is_reported_and_others_embedded(tmp_path, fake, client):
    batch = tmp_path / "raw" / "images" / "b1"
    batch.mkdir(parents=True)
    for i in range(6):
        (batch / f"p{i}.png").write_bytes(png((i * 20, 0, 0)))
    (batch / "truncated.png").write_bytes(png((1, 2, 3), size=(64, 64))[:70])
    (batch / "tiny.png").write_bytes(png((1, 2, 3), size=(2, 2)))
    store = DocumentStore(str(tmp_path))
    report = embed_partition(store, client, "images", "b1", max_failure_ratio=1.0)
    reasons = dict(report.failures)
    assert set(reasons) == {"truncated.png", "tiny.png"}
    assert "2x2 pixels" in reasons["tiny.png"] and "truncated or corrupt" in reasons["truncated.png"]
    assert report.embedded == 6


def test_too_many_failures_publish_nothing(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    path = store.artifact_path("text", "b1")
    before = Path(path).read_bytes()
    for f in (root / "raw" / "text" / "b1").glob("doc*.txt"):
        f.write_bytes(b"\xff\xfe")
    with pytest.raises(TooManyFailuresError, match="5 of 8 documents"):
        embed_partition(store, client, "text", "b1", max_failure_ratio=0.5)
    assert Path(path).read_bytes() == before


def test_unreachable_server_publishes_nothing_and_names_url(root):
    store = DocumentStore(str(root))
    client = InfinityEmbeddings(url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(InfinityConnectionError, match="127.0.0.1:9"):
        embed_partition(store, client, "text", "b1")
    assert not os.path.exists(store.artifact_path("text", "b1"))


def test_server_failure_mid_partition_keeps_previous_artifact(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    path = store.artifact_path("text", "b1")
    before = Path(path).read_bytes()
    for f in (root / "raw" / "text" / "b1").glob("doc*.txt"):
        f.write_text(f.read_text() + " changed")
    fake.faults = [fi.passthrough()] + [fi.status(503)] * 20
    with pytest.raises(Exception, match="503"):
        embed_partition(store, client, "text", "b1")
    assert Path(path).read_bytes() == before
    assert os.listdir(Path(path).parent / ".staging") == []


def test_wrong_hidden_dim_publishes_nothing(root):
    fake = FakeInfinity(hidden_dim=384)
    client = InfinityEmbeddings(url="http://fake", model_name=fake.model, transport=fake.transport(), hidden_dim=128)
    store = DocumentStore(str(root))
    with pytest.raises(InfinityResponseError, match="384-dimensional.*hidden_dim is 128"):
        embed_partition(store, client, "text", "b1")
    assert not os.path.exists(store.artifact_path("text", "b1"))


def test_changing_the_model_re_embeds_everything(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    other = FakeInfinity(model="other-model")
    with InfinityEmbeddings(url="http://fake", model_name="other-model", transport=other.transport()) as second:
        report = embed_partition(store, second, "text", "b1")
    assert (report.embedded, report.reused) == (8, 0)


def test_memory_budget_bounds_row_groups_by_bytes_not_documents(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    whole = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"))
    store.fs.rm(store.artifact_path("text", "b1"))
    # A budget whose row-group share holds about two of these documents' vectors.
    budget = 2 * 2 * artifacts.WRITE_AMPLIFICATION * 6 * 128 * 4
    report = embed_partition(store, client, "text", "b1", memory_budget=budget)
    assert report.embedded == 8
    import pyarrow.parquet as pq
    with store.fs.open(store.artifact_path("text", "b1"), "rb") as handle:
        assert pq.ParquetFile(handle).num_row_groups >= 3
    small = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"))
    assert small.doc_ids == whole.doc_ids
    np.testing.assert_array_equal(small.vectors, whole.vectors)


def test_vectors_are_stored_with_byte_stream_split(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1")
    import pyarrow.parquet as pq
    with store.fs.open(store.artifact_path("text", "b1"), "rb") as handle:
        column = pq.ParquetFile(handle).metadata.row_group(0).column(4)
    assert column.path_in_schema == artifacts.VECTOR_VALUES
    assert "BYTE_STREAM_SPLIT" in column.encodings


def test_a_file_that_failed_only_for_now_leaves_the_data_version_stale(root, fake, client, monkeypatch):
    """A transient read failure ("retry later") must not look done to the incremental schedule."""
    store = DocumentStore(str(root))
    current = artifacts.data_version(store.list_sources("text", "b1").fingerprints, client.model_name, 128)
    read = LocalBackend.read
    monkeypatch.setattr(LocalBackend, "read", lambda self, source: OSError("I/O error") if source.key ==
                        "doc2.txt" else read(self, source))
    report = embed_partition(store, client, "text", "b1", max_failure_ratio=1.0)
    assert report.failures == [("doc2.txt", "could not be read (OSError: I/O error); retry later")]
    assert report.data_version != current  # the schedule requests the batch again
    monkeypatch.setattr(LocalBackend, "read", read)
    report = embed_partition(store, client, "text", "b1")
    assert (report.embedded, report.failed, report.data_version) == (1, 0, current)
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"))
    assert artifact.metadata["data_version"] == current


def test_a_document_that_cannot_be_embedded_keeps_the_data_version_current(tmp_path, fake, client):
    """An empty file fails until someone changes it: re-running the batch every hour would not help."""
    (tmp_path / "raw/text/b1").mkdir(parents=True)
    (tmp_path / "raw/text/b1/empty.txt").write_bytes(b"")
    (tmp_path / "raw/text/b1/fine.txt").write_text("fine")
    store = DocumentStore(str(tmp_path))
    current = artifacts.data_version(store.list_sources("text", "b1").fingerprints, client.model_name, 128)
    report = embed_partition(store, client, "text", "b1", max_failure_ratio=1.0)
    assert report.failed == 1 and report.data_version == current


def test_the_data_version_follows_the_failures_kind_not_its_message(root, fake, client, monkeypatch):
    """A failure of the document itself stays failed until the file changes, whatever its message says."""
    store = DocumentStore(str(root))
    current = artifacts.data_version(store.list_sources("text", "b1").fingerprints, client.model_name, 128)
    read = LocalBackend.read
    monkeypatch.setattr(LocalBackend, "read", lambda self, source: UnsafeKeyError("odd key; retry later")
                        if source.key == "doc2.txt" else read(self, source))
    report = embed_partition(store, client, "text", "b1", max_failure_ratio=1.0)
    assert report.failures == [("doc2.txt", "refused to read: odd key; retry later")]
    assert report.data_version == current  # a document failure: running the batch again would not help


def test_the_failures_sidecar_records_each_failures_kind(root, fake, client, monkeypatch):
    (root / "raw/text/b1/empty.txt").write_bytes(b"")
    read = LocalBackend.read
    monkeypatch.setattr(LocalBackend, "read", lambda self, source: OSError("I/O error") if source.key ==
                        "doc2.txt" else read(self, source))
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1", max_failure_ratio=1.0)
    sidecar = artifacts.read_failures(store.fs, store.artifact_path("text", "b1"))
    assert {f["doc_id"]: f["kind"] for f in sidecar["failures"]} == {"doc2.txt": "unreadable",
                                                                    "empty.txt": "document"}
    raw = json.loads((root / "embeddings/text/b1.failures.json").read_text())  # as written, not inferred
    assert {f["doc_id"]: f["kind"] for f in raw["failures"]} == {"doc2.txt": "unreadable",
                                                                "empty.txt": "document"}


def test_an_input_the_server_refuses_is_an_embedding_failure_that_keeps_the_version_current(tmp_path, fake,
                                                                                             client):
    batch = tmp_path / "raw" / "images" / "b1"
    batch.mkdir(parents=True)
    (batch / "fine.png").write_bytes(png((9, 9, 9)))
    (batch / "refused.png").write_bytes(png((1, 2, 3), size=(fi.REFUSED_IMAGE_WIDTH, 8)))
    store = DocumentStore(str(tmp_path))
    current = artifacts.data_version(store.list_sources("images", "b1").fingerprints, client.model_name, 128)
    report = embed_partition(store, client, "images", "b1", max_failure_ratio=1.0)
    (failure,) = report.failures
    assert failure[0] == "refused.png" and "unsupported image" in failure[1]
    sidecar = artifacts.read_failures(store.fs, store.artifact_path("images", "b1"))
    assert [f["kind"] for f in sidecar["failures"]] == ["embedding"]
    assert report.data_version == current


def test_float16_artifacts_hold_the_rounded_vectors_and_say_so(root, fake, client):
    store = DocumentStore(str(root))
    report = embed_partition(store, client, "text", "b1", vector_encoding="float16")
    assert (report.embedded, report.vector_encoding) == (8, "float16")
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"), stored_dtype=True)
    assert artifact.metadata["vector_encoding"] == "float16" and artifact.vectors.dtype == np.float16
    index = artifact.doc_ids.index("doc3.txt")
    np.testing.assert_array_equal(artifact.vectors_of(index),
                                  vectors_for("text document number 3", "text", 128).astype(np.float16))


def test_unchanged_float16_rows_are_reused_as_stored(root, fake, client):
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1", vector_encoding="float16")
    first = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"), stored_dtype=True)
    (root / "raw/text/b1/doc0.txt").write_text("changed")
    report = embed_partition(store, client, "text", "b1", vector_encoding="float16")
    assert (report.embedded, report.reused) == (1, 7)
    second = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"), stored_dtype=True)
    kept = second.doc_ids.index("doc3.txt")
    np.testing.assert_array_equal(second.vectors_of(kept), first.vectors_of(first.doc_ids.index("doc3.txt")))


@pytest.mark.parametrize(("before", "after"), [("float32", "float16"), ("float16", "float32")])
def test_re_embedding_with_another_encoding_rewrites_the_whole_batch(root, fake, client, before, after):
    """Rows of the other encoding are never reused (nor converted): the artifact is all of one encoding, and
    float32 ones hold the server's exact floats, not float16 roundings passed off as lossless."""
    store = DocumentStore(str(root))
    embed_partition(store, client, "text", "b1", vector_encoding=before)
    requests = len(fake.requests)
    report = embed_partition(store, client, "text", "b1", vector_encoding=after)
    assert (report.embedded, report.reused) == (8, 0) and len(fake.requests) > requests
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b1"), stored_dtype=True)
    assert artifact.vector_encoding == after == artifact.metadata["vector_encoding"]
    for i, doc_id in enumerate(artifact.doc_ids):
        if doc_id.startswith("doc"):
            exact = vectors_for(f"text document number {doc_id[3]}", "text", 128)
            np.testing.assert_array_equal(artifact.vectors_of(i), exact.astype(artifacts.vector_dtype(after)))
    assert artifacts.check_schema(store.fs, store.artifact_path("text", "b1"), 128, after).passed


def test_the_encoding_is_part_of_the_data_version(root, fake, client, monkeypatch):
    store = DocumentStore(str(root))
    as_float32 = embed_partition(store, client, "text", "b1").data_version
    fingerprints = store.list_sources("text", "b1").fingerprints
    assert as_float32 == artifacts.data_version(fingerprints, client.model_name, 128)  # unchanged for float32
    monkeypatch.setenv(artifacts.VECTOR_ENCODING_ENV, "float16")
    as_float16 = embed_partition(store, client, "text", "b1")
    assert as_float16.vector_encoding == "float16" and as_float16.data_version != as_float32
    assert as_float16.data_version == artifacts.data_version(fingerprints, client.model_name, 128, "float16")


def test_an_unknown_encoding_fails_before_anything_is_read_or_published(root, fake, client):
    store = DocumentStore(str(root))
    with pytest.raises(ValueError, match="vector_encoding='bfloat16' is not a vector encoding"):
        embed_partition(store, client, "text", "b1", vector_encoding="bfloat16")
    assert not fake.requests and not store.fs.exists(store.artifact_path("text", "b1"))
