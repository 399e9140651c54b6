"""The compiled kernels of the search stages against their numpy definitions, and on NumKong's portable path
(a CPU without AVX2 gets the same answers)."""
from __future__ import annotations

import itertools

import numkong as nk
import numpy as np
import pytest

from infinity_assets import index
from infinity_assets.index import kernels
from infinity_assets.index.binary import hamming_distances, pack_signs
from infinity_assets.index.fde import magnitude_planes
from infinity_assets.index.maxsim import maxsim_scores, normalized, stack
from infinity_assets.storage.documents import DocumentStore


def documents(rng: np.random.Generator, count: int, dim: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``count`` documents of 1-300 unit token vectors, stacked."""
    return stack([normalized(rng.standard_normal((int(n), dim)).astype(np.float32))
                  for n in rng.integers(1, 300, count)])


@pytest.mark.parametrize("block_tokens", [1 << 30, 100])  # the rows in one kernel call, or split over threads
def test_float16_maxsim_is_within_its_stated_bound_of_exact_float32(monkeypatch, block_tokens):
    monkeypatch.setattr(kernels, "FLOAT_BLOCK_TOKENS", block_tokens)
    rng = np.random.default_rng(1)
    vectors, offsets = documents(rng, 60)
    query = normalized(rng.standard_normal((20, 128)).astype(np.float32))
    halves = vectors.astype(np.float16)
    exact = maxsim_scores(query, halves.astype(np.float32), offsets)  # float32 over the stored float16 values
    got = kernels.float_maxsim(query, halves, offsets)
    error = np.abs(got - exact).max()
    assert 0 < error <= kernels.float16_margin(len(query)), error
    everyone = np.arange(len(offsets) - 1)
    rescored = kernels.exact_maxsim(query, halves, offsets, everyone, *kernels.float_similarities(query, halves, offsets))
    np.testing.assert_allclose(rescored, exact, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kernels.float_maxsim(query, vectors, offsets), maxsim_scores(query, vectors, offsets),
                               rtol=1e-5, atol=1e-5)


def test_exact_maxsim_finds_each_query_tokens_maximum_among_near_ties():
    """Pages holding, for each query token, two unrelated tokens with almost the same dot product with it
    (closer than float16 rounding tells apart): the float16 kernel often picks the wrong one of a pair; the
    float32 rescoring of every token within its margin still gives exact MaxSim."""
    rng = np.random.default_rng(3)
    query = normalized(rng.standard_normal((20, 128)).astype(np.float64))

    def token(q: np.ndarray, dot: float) -> np.ndarray:  # a unit vector whose dot product with q is `dot`
        w = rng.standard_normal(128)
        w -= (w @ q) * q
        return dot * q + np.sqrt(1 - dot ** 2) * w / np.linalg.norm(w)

    pages = [np.stack([token(q, dot + tie) for q, dot in zip(query, rng.uniform(0.6, 0.9, 20))
                       for tie in (0.0, rng.uniform(-1e-4, 1e-4))]).astype(np.float32) for _ in range(40)]
    vectors, offsets = stack(pages)
    halves = vectors.astype(np.float16)
    exact = maxsim_scores(query, halves.astype(np.float64), offsets)
    query = query.astype(np.float32)
    similarities, best = kernels.float_similarities(query, halves, offsets)
    kernel_picks = np.array([sum(float(halves[a + similarities[a:b, t].argmax()].astype(np.float64) @ query[t])
                                 for t in range(len(query))) for a, b in itertools.pairwise(offsets)])
    assert np.abs(kernel_picks - exact).max() > 1e-5  # rescoring only the kernel's picks would not be exact
    rescored = kernels.exact_maxsim(query, halves, offsets, np.arange(len(pages)), similarities, best)
    np.testing.assert_allclose(rescored, exact, rtol=0, atol=2e-6)


def test_exact_order_keeps_every_document_that_can_be_in_the_exact_top_k():
    rng = np.random.default_rng(2)
    exact = rng.random(500).astype(np.float32)
    margin = 0.01
    approximate = exact + rng.uniform(-margin, margin, 500).astype(np.float32)
    kept = set(kernels.exact_order(approximate, margin, 10).tolist())
    assert set(np.argsort(-exact)[:10].tolist()) <= kept
    assert len(kept) < 100  # near-ties only, not everything


def sign_maxsim_definition(query: np.ndarray, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sign MaxSim in float64 numpy: each query token's best dot product with a token's +-1 sign vector,
    over sqrt(d), summed over the query's tokens."""
    signs = np.unpackbits(codes, axis=1).astype(np.float64) * 2 - 1
    dots = signs @ query.astype(np.float64).T / np.sqrt(signs.shape[1])
    return np.maximum.reduceat(dots, offsets[:-1], axis=0).sum(axis=1)


def check_int8_query_kernel(kernel, definition, rng: np.random.Generator, documents: np.ndarray,
                            offsets: np.ndarray, monkeypatch, rtol: float,
                            dim: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A kernel that rounds the query to int8 per token, against its float64 ``definition``: within ``rtol``
    (float32 rounding) for a query int8 holds exactly, within the query's rounding bound (0.045 x each token's largest
    |value|) for a unit query, and the same whatever the block size (documents longer than a block included).
    Returns the unit query and the kernel's scores for it."""
    integer = rng.integers(-127, 128, (20, dim)).astype(np.float32)
    integer[:, 0] = 127  # every token's max |value| is 127: int8 holds it as it is
    np.testing.assert_allclose(kernel(integer, documents, offsets), definition(integer, documents, offsets),
                               rtol=rtol)
    unit = normalized(rng.standard_normal((20, dim)).astype(np.float32))
    got = kernel(unit, documents, offsets)
    assert np.abs(got - definition(unit, documents, offsets)).max() <= 0.045 * np.abs(unit).max(axis=1).sum()
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "SIGN_BLOCK_TOKENS", 100)  # most documents hold more tokens than that
        np.testing.assert_allclose(kernel(unit, documents, offsets), got, rtol=1e-6)
    return unit, got


@pytest.mark.parametrize("dim", [128, 384])  # its products held in int16, and too large for it
def test_sign_maxsim_kernel_equals_its_definition(monkeypatch, dim):
    rng = np.random.default_rng(3)
    vectors, offsets = documents(rng, 80, dim)
    check_int8_query_kernel(kernels.sign_maxsim, sign_maxsim_definition, rng, pack_signs(vectors), offsets,
                            monkeypatch, rtol=1e-6, dim=dim)
    ones = np.full((3, dim // 8), 255, np.uint8)  # the largest products there are: every bit set,
    for extreme in (127.0, -127.0):                # every query value at an int8 extreme
        query = np.full((1, dim), extreme, np.float32)
        np.testing.assert_allclose(kernels.sign_maxsim(query, ones, np.array([0, 1, 3])),
                                   sign_maxsim_definition(query, ones, np.array([0, 1, 3])), rtol=1e-6)


def int8_maxsim_definition(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Cosine MaxSim in float64 numpy against int8 token vectors (each taken as the direction it stores)."""
    rows = tokens.astype(np.float64)
    dots = rows / np.linalg.norm(rows, axis=1, keepdims=True) @ query.astype(np.float64).T
    return np.maximum.reduceat(dots, offsets[:-1], axis=0).sum(axis=1)


def test_int8_maxsim_kernel_equals_its_definition_and_stays_within_its_bound_of_float(monkeypatch):
    """Against its definition as any int8-query kernel; against the float vectors the int8 ones were quantized
    from: within the query's and the documents' rounding bounds."""
    rng = np.random.default_rng(6)
    vectors, offsets = documents(rng, 80)
    unit, got = check_int8_query_kernel(kernels.int8_maxsim, int8_maxsim_definition, rng,
                                        kernels.quantize_int8(vectors), offsets, monkeypatch, rtol=1e-5)
    query_bound = 0.045 * np.abs(unit).max(axis=1).sum()
    # a token rounded to int8 at its own scale moves by at most sqrt(d) * max|v| / 127 in direction
    document_bound = len(unit) * np.sqrt(128) * np.abs(vectors).max() / 127
    exact = maxsim_scores(unit, vectors, offsets)
    assert np.abs(got - exact).max() <= query_bound + document_bound
    assert np.corrcoef(got, exact)[0, 1] > 0.999


def test_masked_hamming_kernel_equals_the_numpy_definition(monkeypatch):
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (1000, 1280), dtype=np.uint8)
    query = rng.integers(0, 256, 1280, dtype=np.uint8)
    mask = np.where(rng.random(1280) < 0.4, rng.integers(0, 256, 1280), 0).astype(np.uint8)
    expected = hamming_distances(codes, query, mask)
    np.testing.assert_array_equal(kernels.masked_hamming(codes, query, mask), expected)
    assert not kernels.masked_hamming(codes, query, np.zeros(1280, np.uint8)).any()
    monkeypatch.setattr(kernels, "HAMMING_BLOCK_CODES", 300)  # split over the threads, in uneven parts
    monkeypatch.setattr(kernels, "KERNEL_THREADS", 3)
    np.testing.assert_array_equal(kernels.masked_hamming(codes, query, mask), expected)
    rows = rng.permutation(1000)[:700]  # a subset, gathered part by part
    np.testing.assert_array_equal(kernels.masked_hamming(codes, query, mask, rows), expected[rows])


def test_weighted_hamming_is_the_asymmetric_inner_product_of_the_query_fde_with_the_1_bit_codes():
    """Weighting each differing bit by the query FDE's rounded magnitude (magnitude_planes) ranks as the
    inner product of the rounded query FDE with the documents' signs ``2 b - 1`` over the mask."""
    rng = np.random.default_rng(6)
    sums = rng.standard_normal(10240).astype(np.float32)
    codes = rng.integers(0, 256, (500, 1280), dtype=np.uint8)
    signs = pack_signs(sums[None])[0]
    mask = np.where(rng.random(1280) < 0.5, rng.integers(0, 256, 1280), 0).astype(np.uint8)
    planes, weights = magnitude_planes(sums, mask)
    levels = sum(int(w) * np.unpackbits(plane).astype(np.int64) for plane, w in zip(planes, weights))
    inside = np.unpackbits(mask).astype(bool)
    np.testing.assert_array_equal(levels[~inside], 0)
    assert levels.max() == 7 and np.corrcoef(levels[inside], np.abs(sums[inside]))[0, 1] > 0.95
    rounded = np.where(sums > 0, 1, -1) * levels
    inner = (np.unpackbits(codes, axis=1).astype(np.int64) * 2 - 1) @ rounded
    got = kernels.weighted_hamming(codes, signs, planes, weights)
    np.testing.assert_array_equal(got.astype(np.int64), (levels.sum() - inner) // 2)
    expected = sum(int(w) * hamming_distances(codes, signs, plane).astype(np.int64) for plane, w in zip(planes, weights))
    np.testing.assert_array_equal(got, expected)


def test_a_cpu_without_simd_gets_the_same_answers(tmp_path):
    """NumKong's portable C kernels (every SIMD family disabled) give the same scores and hits."""
    rng = np.random.default_rng(5)
    vectors, offsets = documents(rng, 40)
    query = normalized(rng.standard_normal((20, 128)).astype(np.float32))
    codes, signs = pack_signs(vectors), pack_signs(query)
    store = DocumentStore(str(tmp_path / "store"))
    pages = [vectors[a:b] for a, b in itertools.pairwise(offsets)]
    index.write_index(store, "images", [([f"d{i}" for i in range(len(pages))], pages)], model="m", hidden_dim=128)
    settings = index.SearchSettings(fde_candidates=20, hamming_candidates=8, pooled_candidates=6)

    def answers() -> tuple:
        reader = index.IndexReader(store, "images")
        staged = reader.search(query, k=5, settings=settings)
        exact = reader.search(query, k=5, exact=True)
        return (kernels.float_maxsim(query, vectors.astype(np.float16), offsets),
                kernels.sign_maxsim(query, codes, offsets),
                kernels.masked_hamming(codes, signs[0], signs[1]),
                kernels.weighted_hamming(codes, signs[0], signs[:3], np.array([1, 2, 4], np.uint32)),
                kernels.int8_maxsim(query, kernels.quantize_int8(vectors), offsets),
                [(h.doc_id, h.score) for h in staged], [(h.doc_id, h.score) for h in exact])

    fast = answers()
    assert any(on for name, on in nk.get_capabilities().items() if name != "serial"), "no SIMD to turn off here"
    with kernels.portable_kernels():
        assert not any(on for name, on in nk.get_capabilities().items() if name != "serial")
        portable = answers()
    for got, want in zip(portable[:5], fast[:5]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [d for d, _ in portable[5]] == [d for d, _ in fast[5]]
    assert portable[6] == fast[6]  # exact search: float32 rescoring, the same scores bit for bit
    np.testing.assert_allclose([s for _, s in portable[5]], [s for _, s in fast[5]], rtol=1e-6)
