"""The staged search (MUVERA codes, hamming MaxSim, float rerank) against exact search: real MiniLM vectors,
indexes synced through many materializations, a needle among near-duplicate pages, settings mismatches, and
a sync killed mid-write."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from infinity_assets import InfinityEmbeddings, index
from infinity_assets.artifacts import ArtifactWriter
from infinity_assets.index import EncodingSettings, SearchSettings, evaluation, local_copy
from infinity_assets.index.binary import hamming_maxsim, pack_signs
from infinity_assets.index.maxsim import normalized, stack
from infinity_assets.index.schema import column_bytes
from infinity_assets.pipeline import embed_partition
from infinity_assets.storage.documents import DocumentStore

from .servers.seaweedfs_fixtures import StoreRoot
from .test_search import DOCUMENTS

REPO = Path(__file__).resolve().parents[1]
DIM = 32
#: Settings that prune at every stage on the small sets of these tests (the defaults keep 4,000, 2,000, 150
#: and 30).
PRUNING = SearchSettings(fde_shortlist=20, fde_candidates=12, hamming_candidates=8, pooled_candidates=6)


def keys(hits: list[index.Hit]) -> list[tuple[str, str]]:
    return [(h.partition, h.doc_id) for h in hits]


# ------------------------------------------------------------------------------------- real MiniLM weights
#: 27 of the 30 documents to the weighted FDE scan, 24 of those to the sign MaxSim, 15 of those to the pooled
#: MaxSim, 8 of those to the rerank (the defaults would keep all 30).
HALF = SearchSettings(fde_shortlist=27, fde_candidates=24, hamming_candidates=15, pooled_candidates=8)


def test_staged_search_returns_the_exact_top_k_on_the_real_minilm_retrieval_set(tmp_path, infinity_server):
    root = StoreRoot(str(tmp_path / "store"))
    root.put_many({f"raw/text/all/doc-{i:02d}.txt": text for i, text in enumerate(DOCUMENTS)})
    store = root.store()
    with InfinityEmbeddings(url=infinity_server.url, model_name="minilm-colbert", hidden_dim=384) as client:
        embed_partition(store, client, "text", "all")
        index.sync_index(store, "text", model="minilm-colbert", hidden_dim=384)
        reader = index.IndexReader(store, "text")
        for document in DOCUMENTS:
            query = client.embed_query(" ".join(document.split()[2:7]))
            result = reader.search_staged(query, k=3, settings=HALF)
            assert 27 <= result.candidates["shortlist"] < 30 and 24 <= result.candidates["fde"] < 27, result.candidates
            assert 15 <= result.candidates["hamming"] < 24, result.candidates
            assert 8 <= result.candidates["pooled"] < 15, result.candidates
            want = index.exact_hits(store, "text", query, k=3)
            assert keys(result.hits) == keys(want)
            # float16 unit originals: scores within 1e-3 of float32 MaxSim over the artifacts
            np.testing.assert_allclose([h.score for h in result.hits], [h.score for h in want], rtol=1e-3)
            exact = reader.search(query, k=3, exact=True)
            assert keys(exact) == keys(want)
            np.testing.assert_allclose([h.score for h in result.hits], [h.score for h in exact], rtol=1e-6)


def test_hamming_maxsim_matches_its_definition():
    rng = np.random.default_rng(1)
    query = rng.standard_normal((3, 128)).astype(np.float32)
    documents = [rng.standard_normal((n, 128)).astype(np.float32) for n in (1, 4, 7)]
    codes, offsets = stack([pack_signs(d) for d in documents])
    signs = [np.where(d > 0, 1.0, -1.0) for d in documents]
    q = np.where(query > 0, 1.0, -1.0)
    expected = [sum(max(float(a @ b) / 128 for b in doc) for a in q) for doc in signs]  # cosine of sign vectors
    np.testing.assert_allclose(hamming_maxsim(pack_signs(query), codes, offsets, 128), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------ sync sequences
def topic_vectors(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    """``count`` unit vectors around random topic centres (documents that share topics, as real ones do)."""
    picked = centres[rng.integers(0, len(centres), count)]
    return normalized(picked + 0.5 / np.sqrt(DIM) * rng.standard_normal(picked.shape).astype(np.float32))


def publish(store: DocumentStore, partition: str, documents: dict[str, np.ndarray]) -> None:
    store.ensure_artifact_dir("text")
    with ArtifactWriter(store.fs, store.artifact_path("text", partition), hidden_dim=DIM,
                        metadata={"model": "m", "partition": partition}) as writer:
        for doc_id, vectors in documents.items():
            writer.write(doc_id, store.uri_for(f"raw/text/{partition}/{doc_id}"), f"fp-{doc_id}", vectors)


def topic_index(tmp_path: Path, seed: int, documents: int) -> tuple[DocumentStore, np.random.Generator, np.ndarray]:
    """An index of ``documents`` documents of 9 vectors around 6 topic centres (``d000``, ...), with the
    generator and centres that made them (for queries on the same topics)."""
    rng = np.random.default_rng(seed)
    centres = normalized(rng.standard_normal((6, DIM)).astype(np.float32))
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "b", {f"d{i:03d}": topic_vectors(rng, centres, 9) for i in range(documents)})
    index.sync_index(store, "text")
    return store, rng, centres


def disk_without_room_for_the_rerank_rows(monkeypatch, store: DocumentStore) -> None:
    """Inject a disk whose 5% reserve is one copy of the text table's rerank rows, with room beyond it for
    the rest of the copy and half of those rows."""
    sizes = column_bytes(index.open_table(store, "text").to_lance())
    rest, rows = sum(v for k, v in sizes.items() if k not in ("embedding", "fde")), sizes["embedding"]
    monkeypatch.setattr(local_copy.shutil, "disk_usage", lambda path: types.SimpleNamespace(
        total=20 * rows, used=0, free=rows + rest + rows // 2))


def hold_embedding_copies(monkeypatch) -> threading.Event:
    """Make every local copy of ``embedding`` wait until the returned event is set (the other columns are
    copied at once)."""
    write, release = local_copy._write, threading.Event()

    def held_write(root, folder, fragment, carry, columns):
        if "embedding" in columns:
            assert release.wait(60)
        write(root, folder, fragment, carry, columns)

    monkeypatch.setattr(local_copy, "_write", held_write)
    return release


def fresh_build(store: DocumentStore, tmp_path: Path, step: int) -> DocumentStore:
    """A new store holding copies of ``store``'s artifacts, indexed from scratch."""
    fresh = DocumentStore(str(tmp_path / f"fresh-{step}"))
    fresh.ensure_artifact_dir("text")
    for path in store.fs.glob(f"{store.path('embeddings/text')}/*.parquet"):
        fresh.fs.pipe_file(fresh.artifact_path("text", path.rsplit("/", 1)[-1].removesuffix(".parquet")),
                           store.fs.cat_file(path))
    index.sync_index(fresh, "text")
    return fresh


def test_an_index_synced_through_any_sequence_of_materializations_answers_as_a_fresh_build(tmp_path):
    rng = np.random.default_rng(11)
    centres = normalized(rng.standard_normal((24, DIM)).astype(np.float32))
    store = DocumentStore(str(tmp_path / "store"))
    batches: dict[str, dict[str, np.ndarray]] = {}

    def document() -> np.ndarray:
        return topic_vectors(rng, centres, int(rng.integers(3, 12)))

    steps = [
        ("add batches", lambda: batches.update({b: {f"{b}-{i}": document() for i in range(20)} for b in "abc"})),
        ("change documents", lambda: batches["a"].update({f"a-{i}": document() for i in range(0, 20, 3)})),
        ("delete documents", lambda: [batches["b"].pop(f"b-{i}") for i in range(0, 20, 2)]),
        ("delete a batch, add another", lambda: (batches.pop("c"), batches.update({"d": {f"d-{i}": document()
                                                                                         for i in range(15)}}))),
        ("add to a batch and change it", lambda: batches["d"].update({f"d-{i}": document() for i in range(10, 25)})),
    ]
    published: dict[str, dict[str, bytes]] = {}
    for step, (name, change) in enumerate(steps):
        change()
        for partition in set(published) - set(batches):
            store.fs.rm(store.artifact_path("text", published.pop(partition) and partition))
        for partition, documents in batches.items():  # only the batches that changed are re-embedded
            content = {doc_id: vectors.tobytes() for doc_id, vectors in documents.items()}
            if published.get(partition) != content:
                publish(store, partition, documents)
                published[partition] = content
        report = index.sync_index(store, "text")
        assert report.unchanged > 0 or step == 0, f"{name}: unchanged rows were rewritten"
        fresh = fresh_build(store, tmp_path, step)
        assert index.index_rows(store, "text").equals(index.index_rows(fresh, "text")), name
        synced, rebuilt = index.IndexReader(store, "text"), index.IndexReader(fresh, "text")
        # stage 3 from its copy, the rerank from the table
        copied = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"), copy_originals=False)
        assert copied.staged.local_copy.ready(timeout=60), copied.staged.local_copy.error
        assert not copied.staged.local_copy.originals and not list((tmp_path / "copies").glob("*/*/embedding.*"))
        with pytest.raises(ValueError, match="copy_originals='on': True, False or 'auto'"):
            index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"), copy_originals="on")
        # the rerank from its copy too (a directory of its own: readers of one table share one set of copied columns)
        originals = index.IndexReader(store, "text", local_copy=str(tmp_path / "originals"), copy_originals=True)
        assert originals.staged.local_copy.originals_ready(timeout=60), originals.staged.local_copy.originals_error
        for partition, doc_id in [(p, d) for p in sorted(batches) for d in sorted(batches[p])][::7]:
            own = batches[partition][doc_id][:3]
            query = own + 0.1 / np.sqrt(DIM) * rng.standard_normal(own.shape).astype(np.float32)
            pruned = synced.search(query, k=5, settings=PRUNING)
            assert keys(pruned) == keys(rebuilt.search(query, k=5, settings=PRUNING)), name
            assert [h.score for h in pruned] == [h.score for h in rebuilt.search(query, k=5, settings=PRUNING)]
            for reader in (copied, originals):
                from_copy = reader.search(query, k=5, settings=PRUNING)
                assert from_copy == pruned, name
            got = synced.search(query, k=5, settings=SearchSettings())
            exact = index.exact_hits(store, "text", query, k=5)
            assert keys(got) == keys(exact), f"{name}: staged {keys(got)} != exact {keys(exact)}"
            np.testing.assert_allclose([h.score for h in got], [h.score for h in exact], rtol=1e-3)


# ------------------------------------------------------------------------------ stage 3's local copy
def test_the_local_copy_serves_stage_3_on_s3_and_a_later_version_reuses_it(tmp_path, seaweedfs, s3_bucket,
                                                                          monkeypatch):
    """On S3 a reader with a local copy without the rerank's rows reads only those rows' ``embedding`` from
    the table per query (and without holding stage 2's codes, if asked), answering as one without, hit for
    hit (ids, source, page, snippet: the carried columns come from the copy); by default (``auto``) the copy
    holds the rerank's rows too and no query reads the table, unless they would not leave the disk's reserve
    free; the next version (rows deleted, no fragment rewritten) copies nothing again; a copy that cannot be
    made leaves the reader answering as one without."""
    rng = np.random.default_rng(8)
    centres = normalized(rng.standard_normal((6, DIM)).astype(np.float32))
    store = DocumentStore(f"s3://{s3_bucket}/copy", **seaweedfs.storage_options())
    publish(store, "b", {f"d{i:02d}": topic_vectors(rng, centres, 9) for i in range(60)})
    index.sync_index(store, "text")
    queries = [topic_vectors(rng, centres, 3) for _ in range(6)]
    copies = tmp_path / "copies"

    def answers(reader: index.IndexReader) -> tuple[list, int]:
        results = [reader.search_staged(q, k=5, settings=PRUNING) for q in queries]
        assert all(r.candidates["pooled"] == 6 and r.timings["pooled"] > 0 for r in results)
        return [r.hits for r in results], sum(r.bytes_read for r in results)

    plain = index.IndexReader(store, "text")
    copied = index.IndexReader(store, "text", local_copy=str(copies), copy_originals=False)
    assert copied.staged.local_copy.ready(timeout=60), copied.staged.local_copy.error
    (folder,) = [f for f in copies.glob("*/*") if f.is_dir()]
    (want, table_bytes), (got, copy_bytes) = answers(plain), answers(copied)
    assert got == want and all(h.source_uri and h.doc_id for hits in got for h in hits)
    assert sorted(f.name for f in folder.iterdir()) == ["addresses.npy", "bits.offsets.npy", "bits.u1", "hits.arrow",
                                                        "pooled.i8", "pooled.offsets.npy"]
    assert copied.staged.resident.token_bits is None  # stage 2's codes were read from the copy, not held
    held = index.IndexReader(store, "text", local_copy=str(copies), copy_originals=False, hold_bits=True)
    assert held.staged.local_copy.ready(timeout=60) and answers(held)[0] == want
    assert held.staged.resident.token_bits is not None
    pooled_bytes = sum(f.stat().st_size for f in folder.iterdir())
    assert copy_bytes < table_bytes, (copy_bytes, table_bytes)  # the pooled rows no longer cross the network
    originals = index.IndexReader(store, "text", local_copy=str(tmp_path / "originals"))  # "auto"
    assert originals.staged.local_copy.originals_ready(timeout=60), originals.staged.local_copy.originals_error
    assert originals.staged.local_copy.originals_choice.startswith("the table is on object storage")
    (with_embedding,) = [f for f in (tmp_path / "originals").glob("*/*") if (f / "embedding.f16").exists()]
    assert {"embedding.f16", "embedding.offsets.npy"} <= {f.name for f in with_embedding.iterdir()}
    assert answers(originals)[0] == want  # (the first query reads the FDE codes, held from then on)
    assert answers(originals) == (want, 0)  # the rerank's rows too come from the copy: no query reads the table
    disk_without_room_for_the_rerank_rows(monkeypatch, store)
    cramped = index.IndexReader(store, "text", local_copy=str(tmp_path / "cramped"))
    assert cramped.staged.local_copy.ready(timeout=60), cramped.staged.local_copy.error
    assert not cramped.staged.local_copy.originals_ready(timeout=60)
    assert "would leave less than 5% of the disk" in cramped.staged.local_copy.originals_choice
    assert not list((tmp_path / "cramped").glob("*/*/embedding.*")) and answers(cramped)[0] == want
    assert cramped.copy_status()["rerank_rows"].startswith("the table: copying the rerank's rows needs")
    assert copied.copy_status() == {"copy": "ready", "rerank_rows": "the table: copy_originals=False"}
    assert plain.copy_status() == {"copy": "off"}

    table = index.open_table(store, "text")
    table.delete("doc_id IN ('d03', 'd17', 'd42')")  # a deletion file; the fragment's data stays
    written = {f: f.stat().st_mtime_ns for f in folder.iterdir()}
    later = index.IndexReader(store, "text", local_copy=str(copies), copy_originals=False)
    assert later.version != copied.version and later.staged.local_copy.ready(timeout=60)
    assert [f for f in copies.glob("*/*") if f.is_dir()] == [folder]
    assert {f: f.stat().st_mtime_ns for f in folder.iterdir()} == written and pooled_bytes > 0
    assert answers(later)[0] == answers(index.IndexReader(store, "text"))[0]

    (tmp_path / "not-a-directory").write_text("")
    broken = index.IndexReader(store, "text", local_copy=str(tmp_path / "not-a-directory"))
    assert not broken.staged.local_copy.ready(timeout=60) and isinstance(broken.staged.local_copy.error, OSError)
    assert answers(broken)[0] == answers(later)[0]
    assert broken.staged.resident.token_bits is not None  # held in memory, as without a copy


def two_s3_tables_and_a_disk_for_one_copy(seaweedfs, s3_bucket, monkeypatch,
                                          seed: int) -> tuple[dict[str, DocumentStore], dict[str, int]]:
    """Two text tables ``a`` and ``b`` on S3, and an injected disk (returned, ``shutil.disk_usage``'s fields)
    whose 5% reserve is one copy of the rerank rows, with room beyond it for both tables' other columns and
    1.5 copies of the rows: one table's rerank rows fit, not both."""
    rng = np.random.default_rng(seed)
    centres = normalized(rng.standard_normal((6, DIM)).astype(np.float32))
    stores = {}
    for name in ("a", "b"):
        stores[name] = DocumentStore(f"s3://{s3_bucket}/{name}", **seaweedfs.storage_options())
        publish(stores[name], "b", {f"{name}{i:02d}": topic_vectors(rng, centres, 9) for i in range(20)})
        index.sync_index(stores[name], "text")
    sizes = [column_bytes(index.open_table(store, "text").to_lance()) for store in stores.values()]
    rows = max(s["embedding"] for s in sizes)  # each table's rerank rows
    rest = max(sum(v for k, v in s.items() if k not in ("embedding", "fde")) for s in sizes)  # other columns
    disk = {"total": 20 * rows, "used": 0, "free": rows + 2 * rest + rows * 3 // 2}
    monkeypatch.setattr(local_copy.shutil, "disk_usage", lambda path: types.SimpleNamespace(**disk))
    return stores, disk


def no_promises_left(copies: Path) -> bool:
    """Whether every copy under ``copies`` has given its promise back (or none was made)."""
    return not list((copies / local_copy.PROMISES).glob("*.json"))


def test_readers_of_two_s3_tables_opened_at_once_do_not_both_take_the_disk_for_their_rerank_rows(
        tmp_path, seaweedfs, s3_bucket, monkeypatch):
    """With ``copy_originals="auto"``, a reader counts the rerank rows another table's reader is still
    copying as already on the disk: where the disk holds one copy and its reserve, the second table's reader
    leaves its rows in the table and says why, instead of both filling the disk. A second reader of the same
    table (the next version, say) writes the same files and still copies; once the first copy is done, the
    other table's next reader copies too. The disk's size is injected."""
    stores, _ = two_s3_tables_and_a_disk_for_one_copy(seaweedfs, s3_bucket, monkeypatch, seed=13)
    release = hold_embedding_copies(monkeypatch)
    copies = str(tmp_path / "copies")
    first = index.IndexReader(stores["a"], "text", local_copy=copies)
    assert first.staged.local_copy.ready(timeout=60), first.staged.local_copy.error
    assert first.staged.local_copy.originals_choice.startswith("the table is on object storage")
    other = index.IndexReader(stores["b"], "text", local_copy=copies)
    assert not other.staged.local_copy.originals_ready(timeout=60)
    assert other.staged.local_copy.originals_choice.endswith("GB of it promised to other copies being made)")
    assert other.copy_status()["rerank_rows"].startswith("the table: copying the rerank's rows needs")
    again = index.IndexReader(stores["a"], "text", local_copy=copies)  # the same table: the same files
    assert again.staged.local_copy.ready(timeout=60)
    assert again.staged.local_copy.originals_choice.startswith("the table is on object storage")
    release.set()
    for reader in (first, again):
        assert reader.staged.local_copy.originals_ready(timeout=60), reader.staged.local_copy.originals_error
    later = index.IndexReader(stores["b"], "text", local_copy=copies)
    assert later.staged.local_copy.originals_ready(timeout=60), later.staged.local_copy.originals_choice
    assert no_promises_left(tmp_path / "copies")  # every promise given back once its copy is made


#: A reader of table ``a`` in a process of its own, on the same injected disk, whose copy of the rerank rows
#: never ends: it prints its choice once the rest is copied, then waits to be killed.
OTHER_PROCESS = """
import json, sys, threading, types
from infinity_assets import index
from infinity_assets.index import local_copy
from infinity_assets.storage.documents import DocumentStore

uri, options, disk, copies = json.loads(sys.argv[1])
local_copy.shutil.disk_usage = lambda path: types.SimpleNamespace(**disk)
write, never = local_copy._write, threading.Event()
def held_write(root, folder, fragment, carry, columns):
    if "embedding" in columns:
        never.wait()
    write(root, folder, fragment, carry, columns)
local_copy._write = held_write
reader = index.IndexReader(DocumentStore(uri, **options), "text", local_copy=copies)
assert reader.staged.local_copy.ready(timeout=60), reader.staged.local_copy.error
print(reader.staged.local_copy.originals_choice, flush=True)
never.wait()
"""


def test_a_reader_counts_the_rerank_rows_another_process_is_copying_until_that_process_dies(
        tmp_path, seaweedfs, s3_bucket, monkeypatch):
    """Two processes sharing a copies directory (two services, say): while one copies table ``a``'s rerank
    rows, a reader of table ``b`` in the other counts them as used and leaves its own in the table, saying
    why. Killed mid-copy, the first process gives nothing back, but the kernel drops the lock its promise
    held: the next reader of ``b`` no longer counts it, removes it and copies. The disk's size is injected
    in both."""
    stores, disk = two_s3_tables_and_a_disk_for_one_copy(seaweedfs, s3_bucket, monkeypatch, seed=15)
    copies = tmp_path / "copies"
    argument = json.dumps([f"s3://{s3_bucket}/a", seaweedfs.storage_options(), disk, str(copies)])
    other_process = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, argument], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
    try:
        assert other_process.stdout.readline().startswith("the table is on object storage")
        reader = index.IndexReader(stores["b"], "text", local_copy=str(copies))
        assert reader.staged.local_copy.ready(timeout=60), reader.staged.local_copy.error
        assert not reader.staged.local_copy.originals_ready(timeout=60)
        choice = reader.staged.local_copy.originals_choice
        assert choice.endswith("GB of it promised to other copies being made)")
        assert not no_promises_left(copies)  # the other process's
    finally:
        other_process.kill()
        other_process.wait(timeout=60)
    disk["free"] -= sum(f.stat().st_size for f in reader.staged.local_copy.root.rglob("*") if f.is_file())
    later = index.IndexReader(stores["b"], "text", local_copy=str(copies))  # (room for one copy of the rows)
    assert later.staged.local_copy.originals_ready(timeout=60), later.staged.local_copy.originals_choice
    assert later.staged.local_copy.originals_choice.startswith("the table is on object storage")
    assert no_promises_left(copies)


def test_a_reader_holds_stage_2s_codes_until_its_copy_is_ready_then_lets_them_go(tmp_path, monkeypatch):
    """While the local copy is being made the reader holds stage 2's codes (no per-query read of them from
    the table); once it is ready (its files read into the page cache when they fit) the reader drops them
    and answers the same from the copy. A copy too large for the memory available is not read ahead; one
    whose ``bits`` fit but not its ``pooled`` has only its ``bits`` read ahead."""
    from infinity_assets.index import local_copy

    store, rng, centres = topic_index(tmp_path, seed=9, documents=40)
    queries = [topic_vectors(rng, centres, 3) for _ in range(4)]
    want = [index.IndexReader(store, "text").search_staged(q, k=5, settings=PRUNING).hits for q in queries]
    release = threading.Event()
    warm = local_copy.LocalCopy._warm
    monkeypatch.setattr(local_copy.LocalCopy, "_warm", lambda copy, *args: release.wait(60) and warm(copy, *args))
    reader = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"),
                               copy_originals=False)
    assert [reader.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want
    assert not reader.staged.local_copy.ready() and reader.staged.resident.token_bits is not None
    release.set()
    assert reader.staged.local_copy.ready(timeout=60) and reader.staged.local_copy.warmed == ("bits", "pooled")
    assert [reader.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want
    assert reader.staged.resident.token_bits is None

    monkeypatch.setattr(local_copy, "WARM_SHARE", 0.0)
    unwarmed = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"),
                                 copy_originals=False)
    assert unwarmed.staged.local_copy.ready(timeout=60) and unwarmed.staged.local_copy.warmed == ()
    assert [unwarmed.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want

    (folder,) = [f for f in (tmp_path / "copies").glob("*/*") if f.is_dir()]
    bits_bytes = (folder / "bits.u1").stat().st_size
    monkeypatch.setattr(local_copy, "WARM_SHARE", 1.0)
    monkeypatch.setattr(local_copy, "_available_memory", lambda: bits_bytes + 1)
    partly = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"),
                               copy_originals=False)
    assert partly.staged.local_copy.ready(timeout=60) and partly.staged.local_copy.warmed == ("bits",)


def test_the_rerank_rows_are_copied_after_the_rest_and_a_failed_copy_of_them_loses_nothing(tmp_path, monkeypatch):
    """With ``copy_originals`` the copy serves stages 2-3 as soon as their columns are made; the rerank's rows
    are copied after them, into folders of their own, and until then the rerank reads the table; once they
    are copied no query reads the table. A copy of them that fails (a full disk) leaves the rest of the copy
    serving and the rerank reading the table: the answers are the table's throughout."""
    from infinity_assets.index import local_copy

    store, rng, centres = topic_index(tmp_path, seed=12, documents=40)
    queries = [topic_vectors(rng, centres, 3) for _ in range(4)]
    want = [index.IndexReader(store, "text").search_staged(q, k=5, settings=PRUNING).hits for q in queries]
    write, release = local_copy._write, hold_embedding_copies(monkeypatch)
    reader = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"), copy_originals=True)
    assert reader.staged.local_copy.ready(timeout=60), reader.staged.local_copy.error
    assert not reader.staged.local_copy.originals_ready()
    fragments = len(reader.staged.dataset.get_fragments())
    assert reader.copy_status() == {"copy": "ready", "rerank_rows": "the table until they are copied",
                                    "progress": f"0 of {fragments} fragment{'s' * (fragments > 1)} of "
                                                "embedding copied"}
    assert [reader.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want
    release.set()
    assert reader.staged.local_copy.originals_ready(timeout=60), reader.staged.local_copy.originals_error
    assert reader.copy_status() == {"copy": "ready", "rerank_rows": "the copy"}
    assert len([f for f in (tmp_path / "copies").glob("*/*") if f.is_dir()]) == 2
    monkeypatch.setattr(reader.staged.taker, "take", None)  # a read of the table would fail
    assert [reader.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want

    def full_disk(root, folder, fragment, carry, columns):
        if "embedding" in columns:
            raise OSError(28, "No space left on device")
        write(root, folder, fragment, carry, columns)

    monkeypatch.setattr(local_copy, "_write", full_disk)
    broken = index.IndexReader(store, "text", local_copy=str(tmp_path / "broken"), copy_originals=True)
    assert broken.staged.local_copy.ready(timeout=60), broken.staged.local_copy.error
    assert not broken.staged.local_copy.originals_ready(timeout=60)
    assert isinstance(broken.staged.local_copy.originals_error, OSError)
    assert broken.copy_status() == {"copy": "ready", "rerank_rows": "the table: copying them failed: "
                                                                    "[Errno 28] No space left on device"}
    assert [broken.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want


def _mapped_kb(path) -> int:
    """Resident kB of this process's mappings of the file at ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header: address range ... path
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_the_copys_mapped_pages_are_let_go_after_each_read(tmp_path):
    """Stages 2-3 read the copy's column files memory-mapped; the pages a read maps (and those around them)
    are dropped from the reader's memory when it returns, and the answers stay those of the table."""
    store, rng, centres = topic_index(tmp_path, seed=11, documents=40)
    queries = [topic_vectors(rng, centres, 3) for _ in range(4)]
    want = [index.IndexReader(store, "text").search_staged(q, k=5, settings=PRUNING).hits for q in queries]
    reader = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"),
                               copy_originals=False)
    assert reader.staged.local_copy.ready(timeout=60), reader.staged.local_copy.error
    (folder,) = [f for f in (tmp_path / "copies").glob("*/*") if f.is_dir()]
    for query, hits in zip(queries, want):
        assert reader.search_staged(query, k=5, settings=PRUNING).hits == hits
        assert _mapped_kb(folder / "bits.u1") == 0 and _mapped_kb(folder / "pooled.i8") == 0
    tokens, _ = reader.staged.local_copy.rows([(0, np.arange(40))], "pooled")  # every row, read and let go
    assert len(tokens) and _mapped_kb(folder / "pooled.i8") == 0
    copy = reader.staged.local_copy._fragments[0]
    np.asarray(copy.mapped["pooled.i8"]).view(np.int8).sum()  # a read that is not let go stays mapped
    assert _mapped_kb(folder / "pooled.i8") > 0



def test_the_rows_of_a_column_not_in_the_page_cache_are_asked_for_before_they_are_gathered(tmp_path,
                                                                                         monkeypatch):
    """A column the copy did not read into the page cache (no memory to spare) has every row a read gathers
    asked of the kernel first (``MADV_WILLNEED`` over each row's pages, whatever its offset in the file),
    all before the first is gathered; a column that was read through is gathered as it is. Answers: the
    table's."""
    store, rng, centres = topic_index(tmp_path, seed=13, documents=40)
    queries = [topic_vectors(rng, centres, 3) for _ in range(4)]
    want = [index.IndexReader(store, "text").search_staged(q, k=5, settings=PRUNING).hits for q in queries]
    events: list[tuple[str, int, list[int], list[int]]] = []  # (asked / gathered, item size, starts, lengths)
    prefetch, take_runs = local_copy._FragmentCopy.prefetch, local_copy.take_runs

    def asked(copy, name, starts, lengths):
        events.append(("asked", copy.mapped[name].itemsize, list(starts), list(lengths)))
        prefetch(copy, name, starts, lengths)  # the real madvise: a range not starting on a page would raise

    def gathered(tokens, starts, lengths):
        events.append(("gathered", tokens.itemsize, list(starts), list(lengths)))
        return take_runs(tokens, starts, lengths)

    monkeypatch.setattr(local_copy._FragmentCopy, "prefetch", asked)
    monkeypatch.setattr(local_copy, "take_runs", gathered)
    for memory, warmed in ((0, set()), (1 << 40, {"bits", "pooled", "embedding"})):
        monkeypatch.setattr(local_copy, "_available_memory", lambda: memory)
        reader = index.IndexReader(store, "text", local_copy=str(tmp_path / f"copies-{memory}"),
                                   copy_originals=True)
        assert reader.staged.local_copy.originals_ready(timeout=60), reader.staged.local_copy.originals_error
        assert set(reader.staged.local_copy.warmed) == warmed
        for query, hits in zip(queries, want):
            events.clear()
            assert reader.search_staged(query, k=5, settings=PRUNING).hits == hits
            sizes = {size for _, size, *_ in events}
            assert len(sizes) == 3  # bits, pooled and embedding, each read once
            for size in sizes:
                kinds = [kind for kind, item, *_ in events if item == size]
                runs = [run for kind, item, *run in events if item == size and kind == "asked"]
                if warmed:
                    assert set(kinds) == {"gathered"}
                else:  # every run asked for, then the same runs gathered
                    assert kinds == sorted(kinds) and kinds.count("asked") == kinds.count("gathered")
                    assert runs == [run for kind, item, *run in events if item == size and kind == "gathered"]


def test_auto_counts_finished_copies_of_the_rerank_rows_as_free_but_not_one_still_being_written(
        tmp_path, monkeypatch):
    """``copy_originals="auto"`` weighs the copy of ``embedding`` against the disk's free space: a finished
    copy of it under the table's folder is replaced, so its bytes count as free; another reader's temporary
    folder is not (it stays once renamed); bytes promised to other copies count as used. A local table is
    never copied. The disk's size is injected."""
    monkeypatch.setattr(local_copy.shutil, "disk_usage",
                        lambda path: types.SimpleNamespace(total=10_000, used=9_400, free=600))
    # free 600 - needed 240 - reserve 500 = -140: fits only with more than 140 bytes of finished copies
    s3 = types.SimpleNamespace(uri="s3://bucket/index/text.lance")
    assert local_copy.originals_fit(s3, tmp_path, 240)[::2] == (False, 240)
    writing = tmp_path / ".copy-1234"
    writing.mkdir()
    (writing / "embedding.f16").write_bytes(b"\0" * 200)
    fits, why, _ = local_copy.originals_fit(s3, tmp_path, 240)
    assert not fits and "would leave less than 5% of the disk" in why
    finished = tmp_path / "0-embedding"
    finished.mkdir()
    (finished / "embedding.f16").write_bytes(b"\0" * 200)
    assert local_copy.originals_fit(s3, tmp_path, 240) == (  # it adds what is not copied yet
        True, "the table is on object storage and its rerank rows (0.0 GB) fit", 40)
    (finished / "embedding.offsets.npy").write_bytes(b"\0" * 40)  # a copy made before (a restart) adds none
    assert local_copy.originals_fit(s3, tmp_path, 240)[::2] == (True, 0)
    fits, why, _ = local_copy.originals_fit(s3, tmp_path, 240, promised=200)  # another copy's
    assert not fits and why.endswith("0.0 GB of it promised to other copies being made)")
    for local in (str(tmp_path / "text.lance"), f"file://{tmp_path}/text.lance"):
        table = types.SimpleNamespace(uri=local)
        assert local_copy.originals_fit(table, tmp_path, 240, page_cache=239) == (
            False, "the table is on a local disk and its rerank rows (0.0 GB) do not fit in the page cache "
                   "with the rest of the copy (0.0 GB left of 50% of the memory available)", 0)
        assert local_copy.originals_fit(table, tmp_path, 240, page_cache=240)[::2] == (True, 0)
        assert local_copy.originals_fit(table, tmp_path, 240, local_too=True)[::2] == (True, 0)


def test_auto_copies_a_local_tables_rerank_rows_when_the_whole_copy_fits_in_the_page_cache(tmp_path,
                                                                                            monkeypatch):
    """A local table's rerank rows are on a local disk already: ``auto`` copies them only for a table small
    enough that the whole copy is read into the page cache (the rerank then gathers them from memory, not
    through the table), and says why it does not otherwise. Answers: the table's either way."""
    store, rng, centres = topic_index(tmp_path, seed=15, documents=30)
    queries = [topic_vectors(rng, centres, 3) for _ in range(3)]
    want = [index.IndexReader(store, "text").search_staged(q, k=5, settings=PRUNING).hits for q in queries]
    sizes = column_bytes(index.open_table(store, "text").to_lance())
    whole = sizes["bits"] + sizes["pooled"] + sizes["embedding"]
    for memory, copied in ((2 * whole, True), (2 * whole - 2, False)):  # WARM_SHARE: half of it
        monkeypatch.setattr(local_copy, "_available_memory", lambda: memory)
        reader = index.IndexReader(store, "text", local_copy=str(tmp_path / f"copies-{memory}"))
        reader.staged.local_copy.originals_ready(timeout=60)
        assert reader.staged.local_copy.originals is copied, reader.staged.local_copy.originals_choice
        assert reader.staged.local_copy.originals_choice.startswith(
            "the table is on a local disk and its rerank rows (0.0 GB) " + ("fit" if copied else "do not fit"))
        warmed = {"bits", "pooled", "embedding"} if copied else {"bits", "pooled"}
        assert set(reader.staged.local_copy.warmed) == warmed
        assert [reader.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want


def test_a_copy_that_would_take_the_disks_reserve_is_not_made_and_the_search_reads_the_table(
        tmp_path, monkeypatch):
    """The copy of the columns stages 2-3 read (any table) is made only if it leaves 5% of its disk free:
    otherwise the copy fails saying so before writing anything, and the search answers from the table. An
    older version's copy there does not count as free: it is removed only after the new one is written. The
    rerank's rows asked for outright (``copy_originals=True``) are not copied past the reserve either."""
    store, rng, centres = topic_index(tmp_path, seed=14, documents=30)
    queries = [topic_vectors(rng, centres, 3) for _ in range(3)]
    want = [index.IndexReader(store, "text").search_staged(q, k=5, settings=PRUNING).hits for q in queries]
    monkeypatch.setattr(local_copy.shutil, "disk_usage",  # 100 bytes above the reserve
                        lambda path: types.SimpleNamespace(total=100_000, used=0, free=5_100))
    uri = index.open_table(store, "text").to_lance().uri
    stale = local_copy.table_folder(tmp_path / "copies", uri) / "old"
    stale.mkdir(parents=True)
    (stale / "pooled.i8").write_bytes(b"\0" * 1_000_000)  # more than this copy needs
    reader = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"))
    assert not reader.staged.local_copy.ready(timeout=60)
    assert str(reader.staged.local_copy.error).startswith("the copy of the columns stages 2-3 read needs ")
    assert "would leave less than 5% of the disk" in str(reader.staged.local_copy.error)
    assert reader.copy_status()["rerank_rows"] == "the table: the copy failed"
    assert reader.copy_status()["copy"].startswith("failed: the copy of the columns stages 2-3 read needs")
    written = [f for f in (tmp_path / "copies").rglob("*") if f.is_file()
               and local_copy.PROMISES not in f.parts]
    assert written == [stale / "pooled.i8"] and no_promises_left(tmp_path / "copies")
    assert [reader.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want
    disk_without_room_for_the_rerank_rows(monkeypatch, store)
    asked = index.IndexReader(store, "text", local_copy=str(tmp_path / "asked"), copy_originals=True)
    assert asked.staged.local_copy.ready(timeout=60), asked.staged.local_copy.error
    assert not asked.staged.local_copy.originals_ready(timeout=60)  # asked for outright: still not past it
    assert asked.copy_status()["rerank_rows"].startswith(
        "the table: copy_originals=True, but copying the rerank's rows needs ")
    assert [asked.search_staged(q, k=5, settings=PRUNING).hits for q in queries] == want


# ------------------------------------------------------------------------------ where the recall is lost
def test_the_drift_measurement_names_the_stage_that_loses_the_exact_top_k(tmp_path):
    """``self_recall`` reports, per stage, the share of the exact top k among the candidates that stage passed
    on: shares never grow from one stage to the next, and with the last stage keeping only k its share is
    the recall itself. Stages that keep every document (the defaults' first two on 120 documents) keep all
    of the exact top k."""
    store, _, _ = topic_index(tmp_path, seed=11, documents=120)
    reader = index.IndexReader(store, "text")
    tight = SearchSettings(fde_shortlist=10, fde_candidates=10, hamming_candidates=5, pooled_candidates=5)
    measured = evaluation.self_recall(reader, 24, k=5, settings=tight, tokens=3, seconds=120)
    assert measured.exact_queries == 24 and list(measured.kept_at_k) == ["fde", "hamming", "pooled"]
    kept = measured.kept_at_k
    assert 1.0 > kept["fde"] >= kept["hamming"] >= kept["pooled"] == pytest.approx(measured.recall_at_k), kept

    defaults = evaluation.self_recall(reader, 24, k=5, settings=SearchSettings(), tokens=3, seconds=120)
    assert defaults.kept_at_k["fde"] == defaults.kept_at_k["hamming"] == 1.0, defaults.kept_at_k
    assert 1.0 >= defaults.kept_at_k["pooled"] >= defaults.recall_at_k > measured.recall_at_k, defaults


# ---------------------------------------------------------------------------------- needle in a haystack
def test_a_needle_among_near_duplicate_pages_is_found_as_often_as_exact_search_finds_it(tmp_path):
    """2,000 near-duplicate pages (one template of 256 token vectors, each page perturbed); 50 of them alone
    hold a rare four-token "phrase". A query is the phrase amid 8 common tokens: the staged search with its
    default settings finds the needle in its first 20 as often as exact search does (within 2 points), where
    a mean-pooled first stage (one vector per page) misses it often."""
    rng = np.random.default_rng(5)
    dim, pages, needles = 128, 2_000, 50
    template = normalized(rng.standard_normal((256, dim)).astype(np.float32))
    phrases = [normalized(rng.standard_normal((4, dim)).astype(np.float32)) for _ in range(needles)]
    holders = rng.choice(pages, needles, replace=False)

    def page(number: int) -> np.ndarray:
        noise = np.random.default_rng(number).standard_normal(template.shape).astype(np.float32)
        vectors = normalized(template + 0.3 / np.sqrt(dim) * noise)  # cosine ~0.96 to the template
        if number in holders:
            vectors[:4] = phrases[int(np.flatnonzero(holders == number)[0])]
        return vectors

    def batches():
        for start in range(0, pages, 250):
            yield [f"page-{n:05d}" for n in range(start, start + 250)], [page(n) for n in range(start, start + 250)]

    store = DocumentStore(str(tmp_path / "store"))
    report = index.write_index(store, "images", batches(), model="synthetic", hidden_dim=dim)
    assert report.rows == pages
    reader = index.IndexReader(store, "images")
    pooled = normalized(np.stack([page(n).mean(axis=0) for n in range(pages)]))
    found = {"staged": 0, "exact": 0, "pooled": 0}
    for needle, holder in enumerate(holders):
        context = template[rng.choice(len(template), 8, replace=False)]
        noise = 0.3 / np.sqrt(dim) * rng.standard_normal((4, dim)).astype(np.float32)
        query = np.concatenate([phrases[needle] + noise, context])
        want = f"page-{holder:05d}"
        found["staged"] += want in [h.doc_id for h in reader.search(query, k=20, settings=SearchSettings())]
        found["exact"] += want in [h.doc_id for h in reader.search(query, k=20, exact=True)]
        found["pooled"] += holder in np.argsort(-(pooled @ normalized(query.mean(axis=0, keepdims=True))[0]))[:20]
    print(f"needle found in the first 20: {found} of {needles}")
    assert found["exact"] >= 0.9 * needles, f"the test's needles are not findable even exactly: {found}"
    assert found["pooled"] <= found["exact"] - 0.1 * needles, f"the haystack is too easy to tell: {found}"
    assert found["staged"] >= found["exact"] - 0.02 * needles, found


# ------------------------------------------------------------------------------------------ bad input
def small_index(tmp_path: Path, encoding: EncodingSettings | None = None) -> DocumentStore:
    rng = np.random.default_rng(3)
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "b", {f"d{i}": normalized(rng.standard_normal((4, DIM)).astype(np.float32)) for i in range(10)})
    index.sync_index(store, "text", encoding=encoding)
    return store


def test_a_query_for_another_model_hidden_dim_or_encoding_is_a_clear_error(tmp_path):
    store = small_index(tmp_path)
    reader = index.IndexReader(store, "text")
    with pytest.raises(index.SearchIndexError, match="built with model 'm' .* queries are embedded with 'other'"):
        reader.check_settings("other", DIM)
    with pytest.raises(index.SearchIndexError, match=f"hidden_dim {DIM}\\).* \\(hidden_dim 384"):
        reader.check_settings("m", 384)
    with pytest.raises(index.SearchIndexError, match=f"query has shape \\(2, 384\\).* {DIM}-dimensional"):
        reader.search(np.ones((2, 384), np.float32))
    other = EncodingSettings(fde_repetitions=4)
    with pytest.raises(index.SearchIndexError, match="built with encoding .*fde_repetitions=20.* expects .*"
                                                     "fde_repetitions=4"):
        index.IndexReader(store, "text", encoding=other)


def test_a_new_encoding_rebuilds_the_table_in_one_commit(tmp_path):
    store = small_index(tmp_path)
    before = index.open_table(store, "text").version
    other = EncodingSettings(fde_repetitions=4, fde_seed=9, originals="float32")
    report = index.sync_index(store, "text", encoding=other)
    table = index.open_table(store, "text")
    assert report.rebuilt and report.rows == 10 and index.table_encoding(table) == other
    table.checkout(before + 1)  # the one commit after the old table already holds all of the new one
    assert index.table_encoding(table) == other and table.count_rows() == 10
    table.checkout_latest()
    assert str(table.schema.field("embedding").type) == f"list<item: fixed_size_list<item: float>[{DIM}]>"
    assert index.IndexReader(store, "text", encoding=other).rows == 10
    copied = index.IndexReader(store, "text", local_copy=str(tmp_path / "copies"), copy_originals=True)
    assert copied.staged.local_copy.originals_ready(timeout=60), copied.staged.local_copy.originals_error
    assert list((tmp_path / "copies").glob("*/*/embedding.f32"))  # the rerank's float32 rows, copied as they are
    query = normalized(np.random.default_rng(4).standard_normal((3, DIM)).astype(np.float32))
    assert copied.search(query, k=4) == index.IndexReader(store, "text").search(query, k=4)
    again = index.sync_index(store, "text", encoding=other)
    assert not again.wrote


def test_the_fde_encodes_each_pages_pooled_tokens_and_a_table_from_before_is_rebuilt_by_the_next_sync(tmp_path):
    """``fde_source="pooled"`` (the default): a row's FDE code is the code of its stored ``pooled`` rows as unit
    vectors, so it follows from that column alone. A table written before the setting existed (its recorded
    encoding lacks it) encoded every token; it reads as ``fde_source="tokens"`` and the next sync rebuilds it."""
    from infinity_assets.index.rows import fde_codes, token_rows

    def columns(store: DocumentStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        table = index.open_table(store, "text").to_lance().to_table(columns=["fde", "pooled"])
        pooled, offsets = token_rows(table.column("pooled").combine_chunks())
        return np.stack(table.column("fde").to_numpy(zero_copy_only=False)), pooled, offsets

    store, _, _ = topic_index(tmp_path, seed=12, documents=30)
    assert index.table_encoding(index.open_table(store, "text")).fde_source == "pooled"
    codes, pooled, offsets = columns(store)
    assert np.array_equal(codes, fde_codes(pooled, offsets, EncodingSettings()))

    before = EncodingSettings(fde_source="tokens")
    assert index.sync_index(store, "text", encoding=before).rebuilt
    table = index.open_table(store, "text")
    recorded = json.loads(table.schema.metadata[b"infinity_assets.encoding"])
    assert recorded.pop("fde_source") == "tokens"
    assert EncodingSettings.from_json(json.dumps(recorded)) == before  # how a table from before reads
    old_codes, pooled, offsets = columns(store)
    assert not np.array_equal(old_codes, fde_codes(pooled, offsets, EncodingSettings()))

    report = index.sync_index(store, "text")
    assert report.rebuilt and index.table_encoding(index.open_table(store, "text")) == EncodingSettings()
    codes, pooled, offsets = columns(store)
    assert np.array_equal(codes, fde_codes(pooled, offsets, EncodingSettings()))
    with pytest.raises(ValueError, match=r"fde_source='pool': expected one of \['pooled', 'tokens'\]"):
        EncodingSettings(fde_source="pool")


def test_a_table_from_before_the_pooled_column_answers_without_it_and_the_next_sync_adds_it(tmp_path):
    store, rng, centres = topic_index(tmp_path, seed=4, documents=40)
    fresh = index.IndexReader(store, "text")
    queries = [topic_vectors(rng, centres, 3) for _ in range(8)]
    want = [fresh.search(q, k=5, settings=PRUNING) for q in queries]
    unpooled = dataclasses.replace(PRUNING, pooled_candidates=8)  # stage 3 keeps all
    want_unpooled = [keys(fresh.search(q, k=5, settings=unpooled)) for q in queries]
    assert all(fresh.search_staged(q, k=5, settings=PRUNING).candidates["pooled"] == 6 for q in queries)
    index.open_table(store, "text").to_lance().drop_columns(["pooled"])  # as a table written before it

    old = index.IndexReader(store, "text")
    assert not old.staged.pooled
    for query, expected in zip(queries, want_unpooled):  # stage 3 skipped: the rerank reads all 8 candidates
        result = old.search_staged(query, k=5, settings=PRUNING)
        assert result.candidates["pooled"] == result.candidates["hamming"] == 8 and result.timings["pooled"] == 0
        assert keys(result.hits) == expected
    fingerprints = index.open_table(store, "text").to_lance().to_table(columns=["doc_id", "embedded_at"])

    report = index.sync_index(store, "text")
    assert report.added_columns == ["pooled"] and report.wrote
    assert (report.inserted, report.updated, report.deleted, report.rebuilt) == (0, 0, 0, False)
    table = index.open_table(store, "text")
    assert table.to_lance().to_table(columns=["doc_id", "embedded_at"]).equals(fingerprints)
    upgraded = index.IndexReader(store, "text")
    assert upgraded.staged.pooled
    for query, expected in zip(queries, want):
        got = upgraded.search(query, k=5, settings=PRUNING)
        assert keys(got) == keys(expected)
        np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=1e-6)
    assert not index.sync_index(store, "text").wrote


def test_a_table_without_encoding_metadata_asks_for_a_rebuild(tmp_path):
    import lancedb
    import pyarrow as pa

    store = DocumentStore(str(tmp_path / "store"))
    db = lancedb.connect(index.index_uri(store))
    old = pa.schema([pa.field("doc_id", pa.string())],
                    metadata={b"infinity_assets.model": b"m", b"infinity_assets.hidden_dim": b"32"})
    db.create_table("text", data=pa.table({"doc_id": ["a"]}, schema=old))
    with pytest.raises(index.SearchIndexError, match="older version .* materialize the index asset to rebuild"):
        index.IndexReader(store, "text")


# ------------------------------------------------------------------------------------ killed mid-write
SYNC_SCRIPT = """
import sys
from infinity_assets import index
from infinity_assets.storage.documents import DocumentStore
index.sync_index(DocumentStore(sys.argv[1]), "text", encoding=index.EncodingSettings(background_pages=10))
"""
#: The table learns its background at its first build (10 pages): the killed sync is an incremental one.
LEARNED = EncodingSettings(background_pages=10)


def test_a_sync_killed_mid_write_leaves_the_last_committed_version_searchable(tmp_path):
    rng = np.random.default_rng(8)
    store = small_index(tmp_path, LEARNED)
    query = rng.standard_normal((3, DIM)).astype(np.float32)
    before = index.IndexReader(store, "text")
    answer, version = keys(before.search(query, k=5)), before.version
    for number in range(3):  # enough new rows for the sync to write data files for a while before its commit
        publish(store, f"big-{number}", {f"x{i}": normalized(rng.standard_normal((200, DIM)).astype(np.float32))
                                          for i in range(1_000)})
    data = Path(index.index_uri(store)) / "text.lance" / "data"
    files_before = set(data.iterdir())
    sync = subprocess.Popen([sys.executable, "-c", SYNC_SCRIPT, store.root_uri], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while set(data.iterdir()) == files_before and sync.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    sync.send_signal(signal.SIGKILL)
    sync.wait()
    assert sync.returncode == -signal.SIGKILL, "the sync finished before it could be killed"
    assert set(data.iterdir()) != files_before, "the sync was killed before it wrote anything"
    after = index.IndexReader(store, "text")
    assert after.version == version and after.rows == 10
    assert keys(after.search(query, k=5)) == answer
    finished = index.sync_index(store, "text", encoding=LEARNED)  # the lock died with the process: it completes
    assert not finished.rebuilt and finished.inserted == 3_000 and index.IndexReader(store, "text").rows == 3_010
