"""The LanceDB index: exact incremental sync with the artifacts, one writer at a time, search and its errors.

Sync semantics run on synthetic artifacts (local disk and SeaweedFS); exactness and concurrency use the real
Infinity server with the real MiniLM weights.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta

import numpy as np
import pytest

from infinity_assets import InfinityEmbeddings, index
from infinity_assets.artifacts import ArtifactWriter
from infinity_assets.index import compaction
from infinity_assets.index.lock import IndexLockError, WriterLock
from infinity_assets.pipeline import embed_partition

from .test_search import DOCUMENTS

DIM = 16
RNG = np.random.default_rng(7)


def write_artifact(store, partition: str, doc_ids: list[str], *, model: str = "m", dim: int = DIM,
                   modality: str = "text") -> None:
    """Publish a synthetic artifact: every document gets new random vectors and a new embedded_at."""
    store.ensure_artifact_dir(modality)
    with ArtifactWriter(store.fs, store.artifact_path(modality, partition), hidden_dim=dim,
                        metadata={"model": model, "partition": partition}) as writer:
        for doc_id in doc_ids:
            writer.write(doc_id, store.uri_for(f"raw/{modality}/{partition}/{doc_id}"), f"fp-{doc_id}",
                         RNG.standard_normal((int(RNG.integers(1, 6)), dim)).astype(np.float32))


def assert_index_equals_artifacts(store, modality: str = "text", model: str | None = None) -> None:
    expected = index.artifact_rows(store, modality, model)
    actual = index.index_rows(store, modality)
    assert actual.num_rows == expected.num_rows
    assert actual.equals(expected), "index rows differ from the artifacts"


def test_sync_follows_new_changed_and_deleted_documents_and_batches(store_root):
    store = store_root.store()
    write_artifact(store, "b1", ["a", "b", "c"])
    write_artifact(store, "b2", ["x", "y"])
    first = index.sync_index(store, "text")
    assert (first.inserted, first.rows) == (5, 5)
    assert_index_equals_artifacts(store)

    write_artifact(store, "b1", ["a", "c", "d"])  # a, c re-embedded; b deleted; d new
    store.fs.rm(store.artifact_path("text", "b2"))  # the whole batch is gone
    second = index.sync_index(store, "text")
    assert (second.inserted, second.updated, second.deleted) == (1, 2, 3)
    assert second.partitions_removed == ["b2"]
    assert_index_equals_artifacts(store)


def test_sync_leaves_unchanged_rows_alone_and_is_idempotent(store_root):
    store = store_root.store()
    write_artifact(store, "b1", ["a", "b"])
    write_artifact(store, "b2", ["x"])
    index.sync_index(store, "text")
    write_artifact(store, "b2", ["x", "z"])
    changed = index.sync_index(store, "text")
    # x re-embedded (new vectors and embedded_at), z new; b1 untouched
    assert (changed.inserted, changed.updated, changed.deleted, changed.unchanged) == (1, 1, 0, 2)
    again = index.sync_index(store, "text")
    assert not again.wrote and again.unchanged == 4 and again.version == changed.version
    assert_index_equals_artifacts(store)


def test_tables_are_written_in_the_pinned_file_format_and_one_in_another_format_syncs_on(store_root):
    store = store_root.store()
    write_artifact(store, "b1", ["a", "b", "c"])
    index.sync_index(store, "text")
    table = index.open_table(store, "text")
    assert table.to_lance().data_storage_version == index.FILE_VERSION == "2.2"

    # a table in another file format (2.0, which the benchmark weighs) is synced in place, not rebuilt
    index.create_table(store, "text", table.to_arrow(), table.schema, file_version="2.0")
    write_artifact(store, "b1", ["a", "d"])  # a re-embedded; b, c deleted; d new
    write_artifact(store, "b2", ["x"])
    report = index.sync_index(store, "text")
    assert (report.inserted, report.updated, report.deleted, report.rebuilt) == (2, 1, 2, False)
    assert index.open_table(store, "text").to_lance().data_storage_version == "2.0"
    assert_index_equals_artifacts(store)


def test_artifacts_of_another_model_are_reported_and_not_indexed(tmp_path):
    store = store_root_local(tmp_path)
    write_artifact(store, "good", ["a"], model="m")
    write_artifact(store, "old", ["b"], model="other", dim=8)
    report = index.sync_index(store, "text", model="m", hidden_dim=DIM)
    assert [p for p, _ in report.skipped] == ["old"]
    assert "re-embed" in report.skipped[0][1]
    assert_index_equals_artifacts(store, model="m")


def test_a_new_model_rebuilds_the_table_for_it(tmp_path):
    store = store_root_local(tmp_path)
    write_artifact(store, "b", ["a", "b"], model="m")
    index.sync_index(store, "text")
    write_artifact(store, "b", ["a", "b"], model="m2", dim=8)
    report = index.sync_index(store, "text", model="m2", hidden_dim=8)
    assert report.rebuilt and report.rows == 2
    assert index.table_settings(index.open_table(store, "text")) == ("m2", 8)
    assert_index_equals_artifacts(store)


def store_root_local(tmp_path):
    from infinity_assets.storage.documents import DocumentStore

    return DocumentStore(str(tmp_path / "store"))


def test_a_second_writer_waits_then_fails_naming_the_holder(store_root):
    store = store_root.store()
    path = store.path(index.INDEX_DIR)
    with WriterLock(store.fs, path, is_s3=store.is_s3) as holder:
        with pytest.raises(IndexLockError, match=holder.owner.split(":")[0]):
            with WriterLock(store.fs, path, is_s3=store.is_s3, timeout=0.5):
                pass
    with WriterLock(store.fs, path, is_s3=store.is_s3, timeout=0.5):  # released: free again
        pass


def test_an_expired_s3_lease_is_taken_over(seaweedfs, s3_bucket):
    from infinity_assets.storage.documents import DocumentStore

    store = DocumentStore(f"s3://{s3_bucket}/p", **seaweedfs.storage_options())
    path = store.path(index.INDEX_DIR)
    dead = WriterLock(store.fs, path, is_s3=True, ttl=0.5)
    dead.__enter__()
    dead.backend.stop_renewing()  # a holder that stopped renewing (killed)
    with WriterLock(store.fs, path, is_s3=True, timeout=10) as taker:
        assert json.loads(store.fs.cat_file(taker.lease_path))["owner"] == taker.owner


def test_search_errors_say_what_to_do(tmp_path):
    store = store_root_local(tmp_path)
    with pytest.raises(index.SearchIndexError,
                       match="no text index .* materialize the corpus's <corpus>/text_index asset"):
        index.IndexReader(store, "text")
    write_artifact(store, "b", ["a"])
    index.sync_index(store, "text")
    store.fs.rm(store.artifact_path("text", "b"))
    index.sync_index(store, "text")
    with pytest.raises(index.SearchIndexError, match="empty"):
        index.IndexReader(store, "text")
    write_artifact(store, "b", ["a"])
    index.sync_index(store, "text")
    reader = index.IndexReader(store, "text")
    with pytest.raises(index.SearchIndexError, match="built with model 'm' .* queries are embedded with 'x'"):
        reader.check_settings("x", DIM)
    with pytest.raises(index.SearchIndexError, match="hidden_dim 128"):
        reader.check_settings("m", 128)


# ------------------------------------------------------------------------------------- real MiniLM weights
def put_documents(store_root, partition: str, documents: list[str]) -> None:
    store_root.put_many({f"raw/text/{partition}/doc-{i:02d}.txt": text for i, text in enumerate(documents)})


@pytest.fixture
def minilm(infinity_server):
    with InfinityEmbeddings(url=infinity_server.url, model_name="minilm-colbert", hidden_dim=384) as client:
        yield client


def test_index_results_equal_exact_maxsim_over_the_artifacts(tmp_path, minilm):
    from .servers.seaweedfs_fixtures import StoreRoot

    root = StoreRoot(str(tmp_path / "store"))
    store = root.store()
    put_documents(root, "first", DOCUMENTS[:15])
    put_documents(root, "second", DOCUMENTS[15:])
    for partition in ("first", "second"):
        embed_partition(store, minilm, "text", partition)
    # float32 originals: the scores of float32 MaxSim (float16 ones are within 1e-3: test_staged.py)
    index.sync_index(store, "text", model="minilm-colbert", hidden_dim=384,
                     encoding=index.EncodingSettings(originals="float32"))
    reader = index.IndexReader(store, "text")
    for document in DOCUMENTS[::3]:
        query = minilm.embed_query(" ".join(document.split()[2:7]))
        got = reader.search(query, k=5)
        want = index.exact_hits(store, "text", query, k=5)
        assert [(h.partition, h.doc_id) for h in got] == [(h.partition, h.doc_id) for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-4)


def embed_and_sync(root_url: str, options: dict, server_url: str, partition: str) -> index.SyncReport:
    """What one embedding run followed by one index run does (run in its own process)."""
    from infinity_assets.storage.documents import DocumentStore

    store = DocumentStore(root_url, **options)
    with InfinityEmbeddings(url=server_url, model_name="minilm-colbert", hidden_dim=384) as client:
        embed_partition(store, client, "text", partition)
    return index.sync_index(store, "text", model="minilm-colbert", hidden_dim=384)


def test_eight_concurrent_embedding_runs_then_index_equals_the_artifacts(seaweedfs, s3_bucket, infinity_server):
    """Eight processes embed a partition each on SeaweedFS at once, each followed by its own index sync (as
    eight runs would): the writer lock lets one sync write at a time (their lock intervals never overlap), and
    the index ends equal to the artifacts, no row lost or duplicated."""
    import multiprocessing

    from .servers.seaweedfs_fixtures import StoreRoot

    root = StoreRoot(f"s3://{s3_bucket}/docs", seaweedfs.storage_options())
    partitions = [f"batch-{number}" for number in range(8)]
    for number, partition in enumerate(partitions):
        put_documents(root, partition, DOCUMENTS[number * 3:number * 3 + 6])
    with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as pool:
        reports = list(pool.map(embed_and_sync, *zip(*[(root.url, root.options, infinity_server.url, p)
                                                         for p in partitions])))
    held = sorted(r.lock_held for r in reports)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(held, held[1:])), f"overlapping: {held}"
    assert sum(r.inserted for r in reports) == 48 and all(r.updated == 0 for r in reports)
    assert_index_equals_artifacts(root.store())
    rows = index.index_rows(root.store(), "text")
    assert len(set(zip(rows.column("partition").to_pylist(), rows.column("doc_id").to_pylist()))) == 48


def test_maintenance_merges_small_fragments_rewrites_a_large_one_only_for_its_deletions(tmp_path):
    """LanceDB's optimize() would rewrite the whole table after a sync of a few documents; here the large
    fragment stays as it is until a tenth of it is deleted, the small fragments syncs add are merged once
    there are enough of them, and old versions are removed."""
    store = store_root_local(tmp_path)
    kept, dropped = compaction.MIN_SMALL_ROWS + 500, compaction.MIN_SMALL_ROWS // 8 + 100
    write_artifact(store, "kept", [f"k{i}" for i in range(kept)])
    write_artifact(store, "dropped", [f"d{i}" for i in range(dropped)])
    index.sync_index(store, "text")

    def data_files() -> set[str]:
        fragments = index.open_table(store, "text").to_lance().get_fragments()
        return {file.path for fragment in fragments for file in fragment.data_files()}

    large = data_files()
    assert len(large) == 1
    for number in range(compaction.SMALL_FRAGMENTS):
        write_artifact(store, f"s{number}", [f"s{number}-{i}" for i in range(10)])
        report = index.sync_index(store, "text", cleanup_older_than=timedelta(0))
        assert large <= data_files(), f"sync {number} rewrote the large fragment"
        assert report.compaction["fragments"] == number + 2
    assert report.compaction["fragments_removed"] == compaction.SMALL_FRAGMENTS, report.compaction
    assert len(data_files()) == 2, "the small fragments were not merged"
    assert_index_equals_artifacts(store)

    store.fs.rm(store.artifact_path("text", "dropped"))  # over a tenth of the large fragment's rows
    report = index.sync_index(store, "text", cleanup_older_than=timedelta(0))
    assert report.deleted == dropped and report.compaction["with_deletions"] == 1, report.compaction
    assert not large & data_files(), "the large fragment kept its deleted rows"
    table = index.open_table(store, "text")
    assert all(fragment.num_deletions == 0 for fragment in table.to_lance().get_fragments())
    assert len(table.list_versions()) <= 2, "old versions were not cleaned up"
    assert_index_equals_artifacts(store)


def test_a_table_is_written_in_bounded_data_files_and_a_full_one_is_never_compacted(tmp_path, monkeypatch):
    """A sync writes the table in data files of about DATA_FILE_BYTES at most (so an object store reads
    ranges of objects of that size, not of the whole table's) and answers as a table in one file does; the
    compaction after later syncs merges the small fragments within the bound and leaves the full ones."""
    from infinity_assets.storage.documents import DocumentStore

    whole = store_root_local(tmp_path)
    write_artifact(whole, "a", [f"a{i}" for i in range(3000)])
    index.sync_index(whole, "text")
    queries = [RNG.standard_normal((4, DIM)).astype(np.float32) for _ in range(5)]

    def answers(store) -> list[list[tuple[str, float]]]:
        reader = index.IndexReader(store, "text")
        return [[(h.doc_id, round(h.score, 4)) for h in reader.search(q, k=5)] for q in queries]

    shutil.copytree(tmp_path / "store", tmp_path / "split", ignore=shutil.ignore_patterns("index"))
    store = DocumentStore(str(tmp_path / "split"))
    bound = 1024 * 1024
    monkeypatch.setattr(index.schema, "DATA_FILE_BYTES", bound)
    monkeypatch.setattr(compaction, "DATA_FILE_BYTES", bound)
    index.sync_index(store, "text")

    def data_files() -> dict[str, int]:
        fragments = index.open_table(store, "text").to_lance().get_fragments()
        return {file.path: file.file_size_bytes for fragment in fragments for file in fragment.data_files()}

    full = data_files()
    assert len(full) >= 4, full
    assert max(full.values()) < 2 * bound, full  # (the bound is checked between the writer's batches)
    assert_index_equals_artifacts(store)
    assert answers(store) == answers(whole)
    for number in range(compaction.SMALL_FRAGMENTS):
        write_artifact(store, f"s{number}", [f"s{number}-{i}" for i in range(10)])
        report = index.sync_index(store, "text", cleanup_older_than=timedelta(0))
    assert report.compaction["fragments_removed"] == compaction.SMALL_FRAGMENTS, report.compaction
    assert set(full) <= set(data_files()), "the compaction rewrote full data files"
    assert_index_equals_artifacts(store)


def test_page_columns_are_indexed_when_the_artifact_has_them(tmp_path):
    store = store_root_local(tmp_path)
    store.ensure_artifact_dir("images")
    with ArtifactWriter(store.fs, store.artifact_path("images", "scans"), hidden_dim=DIM,
                        metadata={"model": "m", "partition": "scans"}) as writer:
        for page, text in ((1, "Quarterly report"), (2, None)):
            writer.write(f"r.pdf#{page}", store.uri_for("raw/images/scans/r.pdf"), "fp-r",
                         RNG.standard_normal((3, DIM)).astype(np.float32), page=page, page_text=text)
    index.sync_index(store, "images")
    rows = index.open_table(store, "images").to_lance().to_table(columns=["doc_id", "page", "page_text"])
    assert sorted(rows.to_pylist(), key=lambda r: r["doc_id"]) == [
        {"doc_id": "r.pdf#1", "page": 1, "page_text": "Quarterly report"},
        {"doc_id": "r.pdf#2", "page": 2, "page_text": None}]
    hits = index.IndexReader(store, "images").search(RNG.standard_normal((3, DIM)).astype(np.float32), k=2)
    index.add_snippets(store, "images", hits)
    assert {(h.page, h.snippet) for h in hits} == {(1, "Quarterly report"), (2, "")}


def test_an_unreadable_artifact_keeps_its_rows_and_the_others_are_synced(store_root):
    store = store_root.store()
    write_artifact(store, "b1", ["a", "b"])
    write_artifact(store, "b2", ["x"])
    index.sync_index(store, "text")
    before = index.index_rows(store, "text").filter(pa_equal("partition", "b2"))
    store.fs.pipe_file(store.artifact_path("text", "b2"), b"not parquet")
    write_artifact(store, "b1", ["a", "b", "c"])
    report = index.sync_index(store, "text")
    (reason,) = [reason for _, reason in report.skipped]
    assert reason.startswith(f"artifact {store.uri(store.artifact_path('text', 'b2'))} cannot be read (")
    assert reason.endswith("its indexed rows are kept until it is re-embedded")
    assert report.rows == 4 and report.inserted == 1
    assert index.index_rows(store, "text").filter(pa_equal("partition", "b2")).equals(before)


def pa_equal(column: str, value: str):
    import pyarrow.compute as pc

    return pc.field(column) == value
