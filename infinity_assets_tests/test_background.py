"""The corpus's background tokens: learned once a table is big enough, kept beside it, left out of the
``fde`` and ``bits`` columns only (every row, synced or appended, encodes its own pooled tokens but those),
rebuilt from (never misread) when an older table or a lost file says so, and searches stay exact."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from infinity_assets import index
from infinity_assets.index import EncodingSettings, SearchSettings, background, fde
from infinity_assets.index.binary import pack_signs
from infinity_assets.index.maxsim import normalized
from infinity_assets.index.rows import fde_codes, foreground_tokens, token_rows
from infinity_assets.storage.documents import DocumentStore

from .test_staged import DIM, PRUNING, keys, publish

DEFAULT = EncodingSettings()
TOPICS = normalized(np.random.default_rng(0).standard_normal((300, DIM)).astype(np.float32))
#: The directions every page carries a token near (its margins, say).
MARGINS = normalized(np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32))


def page(rng: np.random.Generator, topics: int = 40) -> np.ndarray:
    """A page: a token near each margin direction, and ``topics`` tokens near topics of its own (enough
    tokens for 1,000 pages to learn :data:`background.MIN_CLUSTERS` clusters from)."""
    own = TOPICS[rng.integers(0, len(TOPICS), topics)] + 0.4 / np.sqrt(DIM) * rng.standard_normal((topics, DIM))
    margins = MARGINS + 0.05 / np.sqrt(DIM) * rng.standard_normal(MARGINS.shape)
    return normalized(np.concatenate([margins, own]).astype(np.float32))


def batch(rng: np.random.Generator, name: str, count: int, topics: int = 40) -> dict[str, np.ndarray]:
    return {f"{name}-{i}": page(rng, topics) for i in range(count)}


def columns(store: DocumentStore) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fde`` codes, ``bits`` rows and offsets, ``pooled`` rows and offsets of every row of the table."""
    table = index.open_table(store, "text").to_lance().to_table(columns=["fde", "bits", "pooled"])
    bits, bit_offsets = token_rows(table.column("bits").combine_chunks())
    pooled, offsets = token_rows(table.column("pooled").combine_chunks())
    return np.stack(table.column("fde").to_numpy(zero_copy_only=False)), bits, bit_offsets, pooled, offsets


def assert_every_row_encodes_its_foreground(store: DocumentStore, encoding: EncodingSettings) -> np.ndarray:
    """Each row's ``fde`` and ``bits`` encode its pooled tokens but those of the table's recorded background
    (all of them when it has none), as a fresh encoding with that background gives; returns each row's
    count of tokens left out."""
    table = index.open_table(store, "text")
    name = index.table_background(table)
    found = background.load(store, "text", name) if name else None
    codes, bits, bit_offsets, pooled, offsets = columns(store)
    kept, kept_offsets = foreground_tokens(pooled, offsets, found)
    np.testing.assert_array_equal(bit_offsets, kept_offsets)
    np.testing.assert_array_equal(bits, pack_signs(kept))
    np.testing.assert_array_equal(codes, fde_codes(kept, kept_offsets, encoding))
    assert np.all(np.diff(kept_offsets) >= 1), "a row kept no token"
    return np.diff(offsets) - np.diff(kept_offsets)


def test_a_table_learns_its_background_once_big_enough_and_every_sync_encodes_with_it(tmp_path):
    rng = np.random.default_rng(5)
    store = DocumentStore(str(tmp_path / "store"))
    batches = {"a": batch(rng, "a", 600)}
    publish(store, "a", batches["a"])
    report = index.sync_index(store, "text", encoding=DEFAULT)
    assert report.background == {} and index.table_background(index.open_table(store, "text")) == ""
    assert not assert_every_row_encodes_its_foreground(store, DEFAULT).any()  # too small: nothing left out

    batches["b"] = batch(rng, "b", 600)
    publish(store, "b", batches["b"])
    report = index.sync_index(store, "text", encoding=DEFAULT)
    assert report.rebuilt and report.rows == 1_200, report
    assert report.background["background_clusters"] >= 1, report.background
    name = index.table_background(index.open_table(store, "text"))
    assert name and [p.rsplit("/", 1)[-1] for p in store.fs.ls(background.folder(store, "text"))] == [f"{name}.npz"]
    assert (assert_every_row_encodes_its_foreground(store, DEFAULT) >= 3).all()  # the margins, on every page

    steps = [  # what changes, and the batch re-embedded
        ("change documents", lambda: batches["a"].update(batch(rng, "a", 100)), "a"),
        ("delete documents", lambda: [batches["b"].pop(f"b-{i}") for i in range(0, 600, 2)], "b"),
        ("add a batch", lambda: batches.update({"c": batch(rng, "c", 100)}), "c"),
    ]
    for label, change, partition in steps:
        change()
        publish(store, partition, batches[partition])
        report = index.sync_index(store, "text", encoding=DEFAULT)
        assert not report.rebuilt and report.unchanged > 0, label
        assert index.table_background(index.open_table(store, "text")) == name, f"{label}: learned again"
        assert (assert_every_row_encodes_its_foreground(store, DEFAULT) >= 3).all(), label

    reader = index.IndexReader(store, "text", encoding=DEFAULT)
    copied = index.IndexReader(store, "text", encoding=DEFAULT, local_copy=str(tmp_path / "copies"))
    assert copied.staged.local_copy.ready(timeout=60), copied.staged.local_copy.error
    for partition, doc_id in [(p, d) for p in sorted(batches) for d in sorted(batches[p])][::97]:
        own = batches[partition][doc_id][3:]
        query = own + 0.1 / np.sqrt(DIM) * rng.standard_normal(own.shape).astype(np.float32)
        exact = {(h.partition, h.doc_id): h.score for h in index.exact_hits(store, "text", query, k=2_000)}
        got = reader.search(query, k=5, settings=SearchSettings())
        assert keys(got)[0] == (partition, doc_id) == max(exact, key=exact.get)
        np.testing.assert_allclose([h.score for h in got], [exact[key] for key in keys(got)], rtol=1e-3)
        pruned, from_copy = reader.search(query, k=5, settings=PRUNING), copied.search(query, k=5, settings=PRUNING)
        assert keys(from_copy) == keys(pruned) and [h.score for h in from_copy] == [h.score for h in pruned]
        assert keys(pruned)[0] == (partition, doc_id)


def test_the_pages_a_background_is_learned_from_are_pooled_once_and_encoded_as_others(tmp_path, monkeypatch):
    from infinity_assets.index import pooling, rows

    calls = []

    def counted(vectors, threshold):
        calls.append(len(vectors))
        return pool_document(vectors, threshold)

    pool_document = pooling.pool_document
    monkeypatch.setattr(pooling, "pool_document", counted)
    monkeypatch.setattr(rows, "pool_document", counted)
    rng = np.random.default_rng(6)
    store = DocumentStore(str(tmp_path / "store"))
    batches = {"a": batch(rng, "a", 700), "b": batch(rng, "b", 700)}
    for partition, documents in batches.items():
        publish(store, partition, documents)
    report = index.sync_index(store, "text", encoding=DEFAULT)
    assert report.background["background_clusters"] >= 1 and report.rows == 1_400 < background.TRAIN_PAGES
    assert len(calls) == 1_400, "every page is pooled once: to learn the background, not again to be encoded"
    table = index.open_table(store, "text").to_lance().to_table(columns=["partition", "doc_id", "pooled"])
    pooled, offsets = token_rows(table.column("pooled").combine_chunks())
    for i, (partition, doc_id) in enumerate(zip(table.column("partition").to_pylist(),
                                                table.column("doc_id").to_pylist())):
        vectors = normalized(batches[partition][doc_id])
        want, _ = rows.pooled_tokens(vectors, np.array([0, len(vectors)]), DEFAULT)  # pooled afresh
        np.testing.assert_array_equal(pooled[offsets[i]:offsets[i + 1]], want, err_msg=doc_id)
    assert (assert_every_row_encodes_its_foreground(store, DEFAULT) >= 3).all()


def test_a_lost_background_file_is_learned_again_by_a_rebuild_not_guessed(tmp_path):
    rng = np.random.default_rng(6)
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "a", batch(rng, "a", 1_000))
    index.sync_index(store, "text")
    name = index.table_background(index.open_table(store, "text"))
    store.fs.rm(f"{background.folder(store, 'text')}/{name}.npz")
    publish(store, "b", batch(rng, "b", 5))
    report = index.sync_index(store, "text")
    assert report.rebuilt and report.rows == 1_005 and index.table_background(index.open_table(store, "text"))
    assert (assert_every_row_encodes_its_foreground(store, DEFAULT) >= 3).all()


def test_a_table_from_before_the_background_is_rebuilt_by_the_next_sync(tmp_path):
    rng = np.random.default_rng(7)
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "a", batch(rng, "a", 1_000))
    before = EncodingSettings(background_share=1.0)
    assert index.sync_index(store, "text", encoding=before).background == {}
    recorded = json.loads(index.open_table(store, "text").schema.metadata[b"infinity_assets.encoding"])
    del recorded["background_share"], recorded["background_pages"]
    # how a table written before the setting reads: nothing left out, the default wait
    assert EncodingSettings.from_json(json.dumps(recorded)) == EncodingSettings(background_share=1.0)
    assert not assert_every_row_encodes_its_foreground(store, before).any()
    with pytest.raises(index.SearchIndexError, match="background_share=1.0.* expects .*background_share=0.2"):
        index.IndexReader(store, "text", encoding=DEFAULT)

    report = index.sync_index(store, "text")
    assert report.rebuilt and report.background["background_clusters"] >= 1
    assert index.table_encoding(index.open_table(store, "text")) == DEFAULT
    assert (assert_every_row_encodes_its_foreground(store, DEFAULT) >= 3).all()
    with pytest.raises(ValueError, match=r"background_share=0.0: a share of pages in \(0, 1\]"):
        EncodingSettings(background_share=0.0)


def test_write_index_learns_from_its_first_pages_and_an_append_encodes_with_the_tables_background(tmp_path):
    rng = np.random.default_rng(8)
    store = DocumentStore(str(tmp_path / "store"))
    first = [(list(ids), list(vectors.values())) for ids, vectors in
             ((batch_.keys(), batch_) for batch_ in (batch(rng, f"p{n}", 400) for n in range(3)))]
    report = index.write_index(store, "text", first, model="m", hidden_dim=DIM, encoding=DEFAULT)
    name = index.table_background(index.open_table(store, "text"))
    assert report.rows == 1_200 and name
    more = batch(rng, "q", 20)
    index.write_index(store, "text", [(list(more), list(more.values()))], model="m", hidden_dim=DIM,
                      encoding=DEFAULT, append=True)
    assert index.open_table(store, "text").count_rows() == 1_220
    assert index.table_background(index.open_table(store, "text")) == name
    assert (assert_every_row_encodes_its_foreground(store, DEFAULT) >= 3).all()


def test_pages_of_short_texts_leave_nothing_out_and_are_not_rebuilt_again(tmp_path):
    rng = np.random.default_rng(9)
    store = DocumentStore(str(tmp_path / "store"))
    publish(store, "a", batch(rng, "a", 1_100, topics=4))  # ~7,700 tokens: too few for 1,024 clusters
    report = index.sync_index(store, "text")
    assert report.background == {"background_clusters": 0}
    assert index.table_background(index.open_table(store, "text"))  # learned (nothing), so not learned again
    assert not assert_every_row_encodes_its_foreground(store, DEFAULT).any()
    publish(store, "b", batch(rng, "b", 10, topics=4))
    again = index.sync_index(store, "text")
    assert not again.rebuilt and again.inserted == 10


@pytest.mark.parametrize("block", [7, background.SHARE_BLOCK])
def test_page_shares_counts_each_page_once_per_cluster_it_has_a_token_nearest_or_near(monkeypatch, block):
    """A cluster's share is the share of pages with a token nearest its centre or within ``NEAR`` of it,
    however many such tokens a page has, in blocks of one or a few pages (7 tokens) or of every page."""
    monkeypatch.setattr(background, "SHARE_BLOCK", block)
    rng = np.random.default_rng(5)
    centres = normalized(rng.standard_normal((6, DIM)).astype(np.float32))
    tokens, offsets = [], [0]
    for _ in range(40):  # pages of 1-9 tokens, each a noisy copy of a centre or a random direction
        count = int(rng.integers(1, 10))
        picked = rng.integers(-3, len(centres), count)
        rows = np.where(picked[:, None] >= 0, centres[np.maximum(picked, 0)], rng.standard_normal((count, DIM)))
        tokens.append(normalized((rows + 0.02 * rng.standard_normal((count, DIM))).astype(np.float32)))
        offsets.append(offsets[-1] + count)
    unit, offsets = np.concatenate(tokens), np.asarray(offsets)
    _, nearest = background.nearest_centres(centres, unit)
    expected = np.zeros(len(centres))
    for page in range(len(offsets) - 1):
        rows = slice(offsets[page], offsets[page + 1])
        has = (unit[rows] @ centres.T > background.NEAR).any(axis=0)
        has[nearest[rows]] = True
        expected += has
    shares = background.page_shares(centres, nearest, unit, offsets)
    np.testing.assert_array_equal(shares, expected / (len(offsets) - 1))
    assert 0 < shares.min() and shares.max() < 1  # not a case every cluster passes or fails alike


def test_a_rows_fde_code_and_background_cosine_do_not_depend_on_the_rows_encoded_with_it():
    """A sync encodes rows in other batches than a fresh build: each row's codes must be a function of the row
    alone (OpenBLAS's sgemm, which these once used, gives a row other last bits beside other rows on some
    CPUs)."""
    rng, dim = np.random.default_rng(3), 128  # ColPali's
    params = EncodingSettings().fde(dim)
    sizes = rng.integers(1, 300, 120)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    vectors = normalized(rng.standard_normal((offsets[-1], dim)).astype(np.float32))
    for products in (params.projected, params.buckets_of):  # the rows in one call, then 37 at a time
        in_parts = [products(vectors[a:a + 37]) for a in range(0, len(vectors), 37)]
        assert np.array_equal(products(vectors), np.concatenate(in_parts)), products.__name__
    together = fde.document_codes(params, vectors, offsets)
    alone = [fde.document_codes(params, vectors[a:b], np.array([0, b - a]))
             for a, b in zip(offsets, offsets[1:])]
    assert np.array_equal(together, np.concatenate(alone))

    centres = normalized(rng.standard_normal((512, dim)).astype(np.float32))
    similarity, nearest = background.nearest_centres(centres, vectors)
    for a, b in zip(offsets[::10], offsets[1::10]):
        part_similarity, part_nearest = background.nearest_centres(centres, vectors[a:b])
        assert np.array_equal(part_similarity, similarity[a:b]) and np.array_equal(part_nearest, nearest[a:b])


def test_a_token_is_left_out_exactly_when_its_nearest_centre_of_all_is_background_and_it_lies_within():
    """:meth:`Background.foreground` compares a token with the background centres first and with the others
    only when it lies within a background radius: the same decisions as the nearest of every centre."""
    rng, dim = np.random.default_rng(8), 128
    centres = normalized(rng.standard_normal((256, dim)).astype(np.float32))
    common = rng.random(256) < 0.3
    # pairs of centres close together, one background and one not: tokens between them are near both
    pairs = np.flatnonzero(common)[:40]
    centres[pairs + 1] = normalized(centres[pairs] + 0.08 * rng.standard_normal((40, dim)).astype(np.float32))
    common[pairs + 1] = False
    found = background.Background(centres, rng.uniform(0.3, 0.85, 256).astype(np.float32), common)
    noise = rng.uniform(0.02, 0.2, (3000, 1)) * rng.standard_normal((3000, dim))
    near = centres[rng.integers(0, 256, 3000)] + noise
    pooled = np.concatenate([near, rng.standard_normal((500, dim))]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 60, 200))])
    offsets = offsets[offsets < len(pooled)].tolist() + [len(pooled)]
    unit = normalized(pooled)
    cosines = unit @ centres.T
    nearest = cosines.argmax(axis=1)
    left_out = found.common[nearest] & (cosines.max(axis=1) > found.radii[nearest])
    want = ~left_out
    for first, last in itertools.pairwise(offsets):  # a document whose tokens all are keeps its first
        if not want[first:last].any():
            want[first] = True
    got = found.foreground(pooled, np.array(offsets))
    inside_a_background_radius_but_nearer_another = (
        ~found.common[nearest] & (cosines[:, found.common].max(axis=1) > found.radii[found.common][
            cosines[:, found.common].argmax(axis=1)]))
    assert left_out.sum() > 500 and inside_a_background_radius_but_nearer_another.sum() > 100
    np.testing.assert_array_equal(got, want)
