"""The first stage's IVF beside the index table: it follows every upsert and delete, is pinned to the table
version, is rebuilt (never misread) after an encoding change, and a version without one still answers."""
from __future__ import annotations

import numpy as np

from infinity_assets import index
from infinity_assets.index import EncodingSettings, SearchSettings, ivf
from infinity_assets.index.maxsim import normalized
from infinity_assets.storage.documents import DocumentStore

from .test_staged import DIM, keys, publish, topic_vectors

#: Six lists on a few hundred documents (automatic lists start at 4,096 rows).
LISTS = EncodingSettings(fde_lists=6)
#: Three of the six lists probed; every stage keeps fewer than the table holds.
PROBING = SearchSettings(fde_candidates=30, hamming_candidates=10, fde_probes=3)


def corpus(rng: np.random.Generator, names: str, count: int) -> dict[str, dict[str, np.ndarray]]:
    centres = normalized(np.random.default_rng(0).standard_normal((12, DIM)).astype(np.float32))
    return {b: {f"{b}-{i}": topic_vectors(rng, centres, int(rng.integers(3, 12))) for i in range(count)}
            for b in names}


def codes_of(store: DocumentStore) -> tuple[np.ndarray, object]:
    dataset = index.open_table(store, "text").to_lance()
    column = dataset.to_table(columns=["fde"]).column("fde").combine_chunks()
    return column.flatten().to_numpy().reshape(-1, column.type.list_size), dataset


def assert_every_row_is_in_its_nearest_list(store: DocumentStore, encoding: EncodingSettings) -> ivf.Lists:
    codes, dataset = codes_of(store)
    lists = ivf.load(store, "text", dataset, encoding)
    assert lists is not None, f"no IVF for version {dataset.version}"
    assert lists.version == dataset.version and len(lists.lists) == len(codes)
    np.testing.assert_array_equal(lists.lists, ivf.assign(codes, lists.centroids, ivf.rep_bytes(encoding)))
    return lists


def test_the_ivf_follows_every_upsert_and_delete(tmp_path):
    rng = np.random.default_rng(21)
    store = DocumentStore(str(tmp_path / "store"))
    batches = corpus(rng, "abc", 80)
    steps = [
        ("add batches", lambda: None),
        ("change documents", lambda: batches["a"].update(corpus(rng, "a", 80)["a"])),
        ("delete documents", lambda: [batches["b"].pop(f"b-{i}") for i in range(0, 80, 2)]),
        ("delete a batch, add another", lambda: (batches.pop("c"), batches.update(corpus(rng, "d", 60)))),
    ]
    published: set[str] = set()
    for step, (name, change) in enumerate(steps):
        change()
        for gone in published - set(batches):
            store.fs.rm(store.artifact_path("text", gone))
        for partition, documents in batches.items():
            publish(store, partition, documents)
        published = set(batches)
        report = index.sync_index(store, "text", encoding=LISTS)
        assert report.rows == sum(len(d) for d in batches.values()), name
        if step == 0:
            assert report.first_stage["trained"] and report.first_stage["assigned"] == report.rows
        else:  # incremental: only the rows written by this sync are assigned; deleted rows leave the lists
            assert not report.first_stage["trained"], name
            assert report.first_stage["assigned"] == report.inserted + report.updated, (name, report)
        lists = assert_every_row_is_in_its_nearest_list(store, LISTS)
        assert lists.count == 6 and len(set(lists.lists.tolist())) > 1, name
        reader = index.IndexReader(store, "text")
        rows = [(p, d) for p in sorted(batches) for d in sorted(batches[p])]
        found = 0
        for partition, doc_id in rows[::10]:
            query = batches[partition][doc_id][:3]
            result = reader.search_staged(query, k=5, settings=PROBING)
            assert result.scanned < reader.rows, (name, result.scanned)
            found += (partition, doc_id) == keys(result.hits)[0]  # the document the query is cut from
            exact = {(h.partition, h.doc_id): h.score for h in reader.search(query, k=reader.rows, exact=True)}
            for hit in result.hits:  # the scores returned are exact MaxSim
                assert abs(hit.score - exact[(hit.partition, hit.doc_id)]) < 1e-6
        assert found >= 0.8 * len(rows[::10]), f"{name}: {found} of {len(rows[::10])} found through 3 of 6 lists"


def test_probing_every_list_answers_as_the_full_scan_of_a_fresh_build(tmp_path):
    rng = np.random.default_rng(22)
    batches = corpus(rng, "ab", 120)
    synced, fresh = DocumentStore(str(tmp_path / "synced")), DocumentStore(str(tmp_path / "fresh"))
    publish(synced, "a", batches["a"])
    index.sync_index(synced, "text", encoding=LISTS)
    publish(synced, "b", batches["b"])
    index.sync_index(synced, "text", encoding=LISTS)
    for partition, documents in batches.items():
        publish(fresh, partition, documents)
    index.sync_index(fresh, "text")  # 240 rows: no IVF, every code scanned
    every = SearchSettings(fde_candidates=30, hamming_candidates=10, fde_probes=6)
    with_ivf, without = index.IndexReader(synced, "text"), index.IndexReader(fresh, "text")
    for doc_id in ["a-3", "a-77", "b-5", "b-119"]:
        query = batches[doc_id[0]][doc_id][:4]
        got = with_ivf.search_staged(query, k=5, settings=every)
        want = without.search_staged(query, k=5, settings=every)
        assert got.scanned == want.scanned == 240
        assert [(h.doc_id, h.score) for h in got.hits] == [(h.doc_id, h.score) for h in want.hits]


def test_an_ivf_written_for_the_previous_encoding_is_rebuilt_by_the_next_sync_not_misread(tmp_path):
    rng = np.random.default_rng(23)
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "a", corpus(rng, "a", 150)["a"])
    index.sync_index(store, "text", encoding=LISTS)
    old_codes, old_dataset = codes_of(store)
    old_file = f"{ivf.folder(store, 'text')}/v{old_dataset.version:012d}.parquet"
    stale = store.fs.cat_file(old_file)
    other = EncodingSettings(fde_lists=6, fde_seed=7)
    report = index.sync_index(store, "text", encoding=other)
    assert report.rebuilt and report.first_stage["trained"] and report.first_stage["assigned"] == 150
    new_codes, dataset = codes_of(store)
    assert not np.array_equal(new_codes, old_codes)
    assert ivf.load(store, "text", dataset, LISTS) is None  # an IVF is read only by the rows it was made for
    assert_every_row_is_in_its_nearest_list(store, other)
    # the previous encoding's IVF put where the current version's belongs (a copy, a crash): not read
    store.fs.pipe_file(f"{ivf.folder(store, 'text')}/v{dataset.version:012d}.parquet", stale)
    assert ivf.load(store, "text", dataset, other) is None
    reader = index.IndexReader(store, "text")
    scanned = reader.search_staged(np.ones((2, DIM), np.float32), k=3, settings=PROBING).scanned
    assert scanned == 150  # the full scan
    again = index.sync_index(store, "text", encoding=other)
    assert not again.wrote and again.first_stage["trained"]
    assert_every_row_is_in_its_nearest_list(store, other)


def test_changing_the_number_of_lists_retrains_the_ivf_without_rewriting_rows(tmp_path):
    rng = np.random.default_rng(24)
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "a", corpus(rng, "a", 150)["a"])
    index.sync_index(store, "text", encoding=LISTS)
    more = EncodingSettings(fde_lists=10)
    report = index.sync_index(store, "text", encoding=more)
    assert not report.wrote and report.first_stage["trained"] and report.first_stage["lists"] == 10
    assert assert_every_row_is_in_its_nearest_list(store, more).count == 10


def test_a_version_whose_ivf_was_never_written_answers_by_a_full_scan_until_the_next_sync(tmp_path):
    rng = np.random.default_rng(25)
    store = DocumentStore(str(tmp_path / "store"))
    batches = corpus(rng, "ab", 100)
    publish(store, "a", batches["a"])
    index.sync_index(store, "text", encoding=LISTS)
    publish(store, "b", batches["b"])
    index.sync_index(store, "text", encoding=LISTS)
    _, dataset = codes_of(store)
    store.fs.rm(f"{ivf.folder(store, 'text')}/v{dataset.version:012d}.parquet")  # killed before the IVF
    query = batches["b"]["b-9"][:4]
    reader = index.IndexReader(store, "text")
    flat = reader.search_staged(query, k=5, settings=PROBING)
    assert flat.scanned == 200 and keys(flat.hits)[0] == ("b", "b-9")
    report = index.sync_index(store, "text", encoding=LISTS)
    assert not report.wrote and not report.first_stage["trained"] and report.first_stage["assigned"] == 100
    assert_every_row_is_in_its_nearest_list(store, LISTS)
    probed = index.IndexReader(store, "text").search_staged(query, k=5, settings=PROBING)
    assert probed.scanned < 200 and keys(probed.hits)[0] == ("b", "b-9")
