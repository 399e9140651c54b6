"""The search's hot loops on compiled kernels (NumKong): float16 MaxSim, sign MaxSim, masked and weighted
hamming; and the FDE's float32 products (:func:`row_products`), whose result for a row does not depend on the
rows computed with it.

Each function takes whole batches (every candidate's token rows stacked, ``offsets`` marking documents) and
makes one kernel call (:func:`sign_maxsim`: one per block of a few thousand tokens), so no Python loop runs
per page. The query side is packed once per call (``dots_pack`` / ``hammings_pack``: 20 query tokens are a
few KB); the document side is read in place: float16 token vectors straight from the Arrow buffer (no float32
copy of whole pages), FDE codes as packed bytes; token codes are unpacked to int8 0/1 one cache-sized block at
a time for NumKong's int8 dot products.

:func:`float_maxsim` rounds the query to float16 to meet the documents' dtype, so its scores are within
:func:`float16_margin` of the exact float32 MaxSim; :func:`exact_order` picks every document that could be in
the top ``k`` within that margin and :func:`exact_maxsim` rescores them in float32 (only the tokens that can
hold a query token's maximum), so the returned order and scores are exact.

NumKong picks the widest SIMD kernels the CPU has (AVX2, AVX-512, NEON, SVE) at run time and falls back to
portable C; :func:`portable_kernels` forces that fallback (to test a CPU without AVX2).
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numkong as nk
import numpy as np

#: Unit roundoff of float16 (half of 2**-10): a rounded unit query token moves by at most this in L2.
FLOAT16_UNIT_ROUNDOFF = 2.0 ** -11


def float_maxsim(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MaxSim of a unit float32 ``(q, d)`` query against documents whose unit token vectors are stacked in
    ``vectors`` (float16 or float32; document ``i`` owns ``offsets[i]:offsets[i + 1]``, at least one row
    each): ``(n_docs,)`` float32. With float16 ``vectors`` the query is rounded to float16 too: scores are
    within :func:`float16_margin` of exact."""
    return float_similarities(query, vectors, offsets)[1].sum(axis=1, dtype=np.float32)


def float_similarities(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`float_maxsim` sums: ``(similarities, best)``, every token's dot product with every query
    token ``(tokens, q)`` (rows from ``offsets[0]``) and each document's best per query token ``(n_docs, q)``,
    float32."""
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < 2:
        return np.zeros((0, len(query)), np.float32), np.zeros((0, len(query)), np.float32)
    rows = np.ascontiguousarray(vectors[offsets[0]:offsets[-1]])
    kind = "f16" if rows.dtype == np.float16 else "f32"
    packed = nk.dots_pack(np.ascontiguousarray(query, rows.dtype), dtype=kind)
    similarities = _packed_dots(rows, packed, len(query), "float32" if kind == "f16" else "float64")
    return similarities, np.maximum.reduceat(similarities, offsets[:-1] - offsets[0], axis=0)


def row_products(rows: np.ndarray, packed: object, columns: int) -> np.ndarray:
    """``rows @ matrix.T`` for float32 ``rows`` and the ``columns`` float32 rows of a ``matrix`` packed by
    ``nk.dots_pack(matrix, dtype="f32")``: ``(len(rows), columns)`` float64, each product a function of its
    two rows alone. OpenBLAS's sgemm is not on every CPU: a row's result can depend on the rows around it in
    the call and on its threads, so codes made from it would depend on the batch a document is encoded in."""
    return _packed_dots(np.ascontiguousarray(rows, np.float32), packed, columns, "float64")


def _packed_dots(rows: np.ndarray, packed: object, columns: int, dtype: str) -> np.ndarray:
    """``nk.dots_packed(rows, packed)`` as numpy, the rows split over the cores (each part written in place)
    when there are enough."""
    parts = min(KERNEL_THREADS, max(1, len(rows) // FLOAT_BLOCK_TOKENS))
    if parts == 1:
        return np.asarray(nk.dots_packed(rows, packed))
    out = nk.empty((len(rows), columns), dtype=dtype)
    bounds = np.linspace(0, len(rows), parts + 1).astype(np.int64).tolist()
    list(_THREADS.map(lambda first, last: nk.dots_packed(rows, packed, out=out, start_row=first,
                                                         end_row=last), bounds[:-1], bounds[1:]))
    return np.asarray(out)


def float16_margin(query_tokens: int) -> float:
    """The most :func:`float_maxsim` on float16 documents can differ from exact float32 MaxSim for unit
    vectors: each query token's rounding moves each dot product by at most its L2 error, plus float32
    accumulation over 128-1,024 dimensions (bounded generously)."""
    return query_tokens * (FLOAT16_UNIT_ROUNDOFF + 1e-5)


def exact_maxsim(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, documents: np.ndarray,
                 similarities: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Exact float32 MaxSim (the reference) of ``documents`` (indices) among float16 ``vectors``, from their
    :func:`float_similarities`: a token whose approximate dot product with a query token is more than twice
    :func:`float16_margin` (of one token) below that query token's best cannot hold the exact maximum, so only
    the few others (a page's near-duplicate tokens) are recomputed in float32, not whole pages."""
    offsets = np.asarray(offsets, np.int64)
    slack = 2 * float16_margin(1)
    scores = np.empty(len(documents), np.float32)
    for out, document in enumerate(np.asarray(documents).tolist()):
        first, last = offsets[document], offsets[document + 1]
        tokens, query_tokens = np.nonzero(similarities[first - offsets[0]:last - offsets[0]] >= best[document] - slack)
        dots = np.einsum("ij,ij->i", vectors[first + tokens].astype(np.float32), query[query_tokens])
        per_query_token = np.full(len(query), -np.inf, np.float32)
        np.maximum.at(per_query_token, query_tokens, dots)
        scores[out] = per_query_token.sum(dtype=np.float32)
    return scores


def exact_order(approximate: np.ndarray, margin: float, k: int) -> np.ndarray:
    """Indices of the documents that can be in the exact top ``k`` given ``approximate`` scores off by at
    most ``margin``: every one whose score is within ``2 * margin`` of the ``k``-th best (unordered)."""
    if k >= len(approximate):
        return np.arange(len(approximate))
    kth = np.partition(approximate, len(approximate) - k)[len(approximate) - k]
    return np.flatnonzero(approximate >= kth - 2 * margin)


#: Document tokens per kernel call of :func:`sign_maxsim` and :func:`int8_maxsim` (a few MB: fewer calls cost
#: less Python per token than smaller, cache-sized blocks would save).
SIGN_BLOCK_TOKENS = 16384
#: Threads the kernels split a call over (their compiled loops release the GIL).
KERNEL_THREADS = min(4, os.cpu_count() or 1)
_THREADS = ThreadPoolExecutor(KERNEL_THREADS, thread_name_prefix="index-kernels")
#: Document tokens per kernel call of :func:`float_similarities` when there are more (one call: one core).
FLOAT_BLOCK_TOKENS = 4096
#: FDE codes per :func:`weighted_hamming` kernel call when there are more (a call runs on one core).
HAMMING_BLOCK_CODES = 2048


def sign_maxsim(query: np.ndarray, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Asymmetric MaxSim of a float ``(q, d)`` query against documents' stacked 1-bit token codes ``(n, d / 8)``
    (document ``i`` owns ``offsets[i]:offsets[i + 1]``, at least one each): ``(n_docs,)`` float32, each query
    token scoring its best ``q . (2 b - 1) / sqrt(d)`` (the cosine-like score of the query token against the
    token's sign vector, in ``[-1, 1]`` for a unit query token). The query keeps its values (rounded to int8
    per token, at most ``0.045 * max|q|`` per token off): only the document side is 1-bit, which ranks better
    than comparing 1-bit codes on both sides. Runs in blocks of :data:`SIGN_BLOCK_TOKENS` document tokens, on
    up to 4 threads."""
    dim = codes.shape[1] * 8
    narrow = dim * 127 <= np.iinfo(np.int16).max  # a 0/1 dot with the int8 query fits in int16

    def dots(first: int, last: int, packed: object) -> np.ndarray:
        bits = np.unpackbits(codes[first:last], axis=1).view(np.int8)
        products = np.asarray(nk.dots_packed(bits, packed))  # int32: the 0/1 dot, doubled once reduced
        return products.astype(np.int16) if narrow else products

    return _int8_query_maxsim(query, dots, offsets, shift=True) / np.float32(np.sqrt(dim))


def int8_maxsim(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Cosine MaxSim of a float ``(q, d)`` query against documents' stacked int8 token vectors ``(n, d)``
    (:func:`quantize_int8`; document ``i`` owns ``offsets[i]:offsets[i + 1]``, at least one each):
    ``(n_docs,)`` float32. The query is rounded to int8 per token like :func:`sign_maxsim`'s; each document
    token's dot product is divided by its int8 vector's norm, so a token's scale does not matter."""
    def dots(first: int, last: int, packed: object) -> np.ndarray:
        rows = tokens[first:last]
        norms = np.sqrt(np.asarray(nk.dot(rows, rows, out_dtype="float32")))  # each row with itself: exact
        return np.divide(np.asarray(nk.dots_packed(rows, packed)), np.maximum(norms, 1e-12)[:, None],
                         dtype=np.float32)

    return _int8_query_maxsim(query, dots, offsets, shift=False)


def quantize_int8(vectors: np.ndarray) -> np.ndarray:
    """Float ``(n, d)`` vectors as int8, each row scaled so that its largest component is +-127 (a zero row
    stays zero): the direction survives to ~1/250 per component, which is what a cosine needs."""
    largest = np.abs(vectors).max(axis=1, keepdims=True)
    return np.round(vectors * (127.0 / np.where(largest > 0, largest, 1.0))).astype(np.int8)


def _int8_query_maxsim(query: np.ndarray, dots: Callable[[int, int, object], np.ndarray], offsets: np.ndarray, *,
                       shift: bool) -> np.ndarray:
    """The query rounded to int8 per token (packed once), then per block of about :data:`SIGN_BLOCK_TOKENS`
    document tokens ``dots(first_token, last_token, packed)`` -> ``(tokens, q)`` scores in the rounded
    query's units; each query token's best per document, back in the query's units, summed. With ``shift``
    the scores are the 0/1 codes' dot products (integers, reduced as they are) and each best becomes
    ``2 * best - sum(rounded query)`` (the ``2 b - 1`` of sign codes)."""
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < 2:
        return np.zeros(0, np.float32)
    scale = 127.0 / np.maximum(np.abs(query).max(axis=1), 1e-12)
    rounded = np.round(query * scale[:, None]).astype(np.int8)
    packed = nk.dots_pack(rounded, dtype="int8")
    shifted = rounded.sum(axis=1, dtype=np.float32)
    scores = np.empty(len(offsets) - 1, np.float32)

    def block(first: int, last: int) -> None:
        values = dots(int(offsets[first]), int(offsets[last]), packed)  # (tokens, q)
        best = np.maximum.reduceat(values, offsets[first:last] - offsets[first], axis=0).astype(np.float32)
        if shift:
            best = 2.0 * best - shifted
        scores[first:last] = (best / scale).sum(axis=1, dtype=np.float32)

    blocks = _blocks(offsets, SIGN_BLOCK_TOKENS)
    if len(blocks) == 1:
        block(*blocks[0])
    else:  # the kernels release the GIL: blocks run on every core
        list(_THREADS.map(lambda bounds: block(*bounds), blocks))
    return scores


def _blocks(offsets: np.ndarray, tokens: int) -> list[tuple[int, int]]:
    """``(first, last)`` document ranges covering every document, each holding about ``tokens`` tokens (a
    longer document gets a block of its own)."""
    cuts = np.searchsorted(offsets, np.arange(offsets[0], offsets[-1], tokens), side="right") - 1
    bounds = sorted(set(cuts.tolist()) | {len(offsets) - 1})
    return list(itertools.pairwise(bounds))


def masked_hamming(codes: np.ndarray, query: np.ndarray, mask: np.ndarray,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """Hamming distance of each ``(n, nbytes)`` code (or of ``codes[rows]``) to the ``(nbytes,)`` query code
    over ``mask``'s bits: ``(n,)`` uint32 (:func:`weighted_hamming` with one mask of weight 1)."""
    return weighted_hamming(codes, query, mask[None], np.ones(1, np.uint32), rows)


def weighted_hamming(codes: np.ndarray, query: np.ndarray, masks: np.ndarray, weights: np.ndarray,
                     rows: np.ndarray | None = None) -> np.ndarray:
    """``sum_p weights[p] * (hamming distance of each code to the query over masks[p]'s bits)`` for ``(n,
    nbytes)`` codes (or ``codes[rows]``, gathered part by part), an ``(nbytes,)`` query and ``(planes,
    nbytes)`` masks: ``(n,)`` uint32, in one pass over the codes with no masked copy of them. Two plain
    hamming distances give each masked one: against the query with the bits outside the mask cleared, ``d +
    c_out``, and with them set, ``d + (outside - c_out)`` (``c_out``: the code's ones outside the mask), so
    ``d = (sum - outside) / 2``; every mask's pair is one row of the kernel's packed query. More than
    :data:`HAMMING_BLOCK_CODES` codes are split in as many parts as the machine has cores (up to 4), scanned
    at once: the kernel releases the GIL, and one core alone does not use the memory bandwidth."""
    codes = np.ascontiguousarray(codes, np.uint8)
    weights = np.asarray(weights, np.uint32)
    count = len(codes) if rows is None else len(rows)
    if not masks.any():
        return np.zeros(count, np.uint32)
    packed = nk.hammings_pack(np.concatenate([np.stack([query & mask, query | ~mask]) for mask in masks]))
    outside = np.array([len(mask) * 8 - int(np.unpackbits(mask).sum()) for mask in masks], np.uint32)
    distances = np.empty(count, np.uint32)

    def part(first: int, last: int) -> None:
        block = codes[first:last] if rows is None else codes[rows[first:last]]
        pairs = np.asarray(nk.hammings_packed(block, packed))                   # (n, 2 * planes) uint32
        total = distances[first:last]
        total[:] = 0
        for plane, weight in enumerate(weights.tolist()):  # uint32 throughout: a few passes over (n,)
            total += weight * ((pairs[:, 2 * plane] + pairs[:, 2 * plane + 1] - outside[plane]) >> 1)

    parts = min(KERNEL_THREADS, max(1, count // HAMMING_BLOCK_CODES))
    bounds = np.linspace(0, count, parts + 1).astype(np.int64).tolist()
    if parts == 1:
        part(0, count)
    else:
        list(_THREADS.map(lambda i: part(bounds[i], bounds[i + 1]), range(parts)))
    return distances


#: NumKong's SIMD kernel families (every one but ``serial``), disabled by :func:`portable_kernels`.
def _simd_families() -> list[str]:
    return [name for name, on in nk.get_capabilities().items() if on and name != "serial"]


@contextmanager
def portable_kernels() -> Iterator[None]:
    """Run the kernels on NumKong's portable C path (no SIMD) inside the block, as on a CPU without AVX2."""
    families = _simd_families()
    for name in families:
        nk.disable_capability(name)
    try:
        yield
    finally:
        for name in families:
            nk.enable_capability(name)
