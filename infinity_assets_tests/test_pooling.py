"""Token pooling of the hamming stage: near-duplicates merge, distinct tokens stay, the index records it."""
import numpy as np
import pytest

from infinity_assets.index.pooling import pool_document, pool_tokens
from infinity_assets.index.rows import pooled_tokens
from infinity_assets.index.schema import EncodingSettings


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_near_duplicates_merge_and_distinct_tokens_stay() -> None:
    rng = np.random.default_rng(0)
    words = _unit(rng.standard_normal((5, 64)))
    copies = _unit(np.repeat(words, 10, axis=0) + 0.01 * rng.standard_normal((50, 64)))
    rare = _unit(rng.standard_normal((3, 64)))
    pooled = _unit(pool_document(np.concatenate([copies, rare]), 0.85))
    assert len(pooled) == 8
    # every original token has a pooled token within the threshold: the max over pooled tokens moves little
    assert (np.concatenate([copies, rare]) @ pooled.T).max(axis=1).min() > 0.85


def test_pool_tokens_keeps_documents_apart_and_threshold_one_keeps_all() -> None:
    rng = np.random.default_rng(1)
    same = _unit(np.repeat(rng.standard_normal((1, 32)), 6, axis=0))   # two documents of one repeated token
    vectors, offsets = np.concatenate([same, same]), np.array([0, 6, 12])
    pooled, pooled_offsets = pool_tokens(vectors, offsets, 0.85)
    assert pooled_offsets.tolist() == [0, 1, 2] and len(pooled) == 2
    kept, kept_offsets = pool_tokens(vectors, offsets, 1.0)
    assert kept is vectors and kept_offsets is offsets


def test_long_documents_pool_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import infinity_assets.index.pooling as pooling

    monkeypatch.setattr(pooling, "BLOCK_TOKENS", 8)
    same = _unit(np.ones((20, 4)))
    assert len(pooling.pool_document(same, 0.85)) == 3   # blocks of 8, 8, 4 tokens: one pooled token each


def test_pooling_is_part_of_the_recorded_encoding() -> None:
    assert EncodingSettings().bits_pool_threshold == 0.85
    old = '{"fde_projection_dim": 16, "fde_repetitions": 20, "fde_seed": 0, "fde_simhash_bits": 5, "originals": "float16"}'
    assert EncodingSettings.from_json(old) != EncodingSettings()   # a table from before pooling is rebuilt
    assert EncodingSettings.from_json(EncodingSettings().to_json()) == EncodingSettings()
    with pytest.raises(ValueError, match="bits_pool_threshold"):
        EncodingSettings(bits_pool_threshold=0.0)


def test_documents_pooled_before_are_taken_as_they_are_and_the_others_pooled_as_usual() -> None:
    rng = np.random.default_rng(4)
    vectors = _unit(rng.standard_normal((4, 16)).astype(np.float32)[rng.integers(0, 4, 30)]
                    + 0.05 * rng.standard_normal((30, 16)).astype(np.float32))
    offsets = np.array([0, 7, 19, 30])
    encoding = EncodingSettings()
    want, want_offsets = pooled_tokens(vectors, offsets, encoding)
    parts = np.split(want, want_offsets[1:-1])
    for known in ([parts[0], None, parts[2]], [None, parts[1], None], parts):
        got, got_offsets = pooled_tokens(vectors, offsets, encoding, known)
        np.testing.assert_array_equal(got_offsets, want_offsets)
        np.testing.assert_array_equal(got, want)
    marked = [np.full_like(parts[0], 7), None, None]  # rows given for a document are used, not recomputed
    assert (pooled_tokens(vectors, offsets, encoding, marked)[0][:len(parts[0])] == 7).all()


def _greedy_groups(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """The pooling's rule, one loop turn per leader: the reference :func:`pool_document` must match."""
    close = (vectors @ vectors.T) > threshold
    group = np.full(len(vectors), -1, np.int64)
    groups = 0
    for leader in np.argsort(-close.sum(axis=1), kind="stable"):
        if group[leader] < 0:
            group[close[leader] & (group < 0)] = groups
            group[leader] = groups
            groups += 1
    order = np.argsort(group, kind="stable")
    owner = group[order]
    return np.add.reduceat(vectors[order], np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]), axis=0)


@pytest.mark.parametrize("repeated", [0, 1, 10, 200])
def test_rows_near_no_other_row_are_grouped_as_one_loop_turn_each_would(repeated: int) -> None:
    rng = np.random.default_rng(repeated)
    distinct = _unit(rng.standard_normal((300, 64)))                # near no other row
    words = _unit(rng.standard_normal((5, 64)))
    copies = _unit(words[rng.integers(0, 5, repeated)] + 0.02 * rng.standard_normal((repeated, 64)))
    vectors = np.concatenate([distinct, copies])[rng.permutation(300 + repeated)]
    np.testing.assert_array_equal(pool_document(vectors, 0.85), _greedy_groups(vectors, 0.85))
    with_zeros = np.concatenate([vectors, np.zeros((2, 64), np.float32)])  # a zero row: a group of its own
    np.testing.assert_array_equal(pool_document(with_zeros, 0.85), _greedy_groups(with_zeros, 0.85))
    scaled = vectors * rng.uniform(0.3, 1.0, (len(vectors), 1)).astype(np.float32)  # some rows near no row
    np.testing.assert_array_equal(pool_document(scaled, 0.4), _greedy_groups(scaled, 0.4))  # but another
