"""The search's hot loops on compiled kernels (NumKong): float16 MaxSim, hamming MaxSim, masked hamming.

Each function takes whole batches (every candidate's token rows stacked, ``offsets`` marking documents) and
makes one kernel call, so no Python loop runs per page. The query side is packed once per call
(``dots_pack`` / ``hammings_pack``: 20 query tokens are a few KB); the document side is read in place:
float16 token vectors straight from the Arrow buffer (no float32 copy of whole pages), 1-bit codes as packed
bytes (no ``unpackbits``).

:func:`float_maxsim` rounds the query to float16 to meet the documents' dtype, so its scores are within
:func:`float16_margin` of the exact float32 MaxSim; :func:`exact_order` rescores in float32 every document
that could be in the top ``k`` within that margin, so the returned order and scores are exact.

NumKong picks the widest SIMD kernels the CPU has (AVX2, AVX-512, NEON, SVE) at run time and falls back to
portable C; :func:`portable_kernels` forces that fallback (to test a CPU without AVX2).
"""
from __future__ import annotations

from collections.abc import Iterator
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
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < 2:
        return np.zeros(0, np.float32)
    rows = np.ascontiguousarray(vectors[offsets[0]:offsets[-1]])
    kind = "f16" if rows.dtype == np.float16 else "f32"
    packed = nk.dots_pack(np.ascontiguousarray(query, rows.dtype), dtype=kind)
    similarities = np.asarray(nk.dots_packed(rows, packed))                    # (tokens, q) float32
    best = np.maximum.reduceat(similarities, offsets[:-1] - offsets[0], axis=0)  # (n_docs, q)
    return best.sum(axis=1, dtype=np.float32)


def float16_margin(query_tokens: int) -> float:
    """The most :func:`float_maxsim` on float16 documents can differ from exact float32 MaxSim for unit
    vectors: each query token's rounding moves each dot product by at most its L2 error, plus float32
    accumulation over 128-1,024 dimensions (bounded generously)."""
    return query_tokens * (FLOAT16_UNIT_ROUNDOFF + 1e-5)


def exact_maxsim(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Exact float32 MaxSim (the reference): float16 ``vectors`` are upcast, here only for the few documents
    :func:`exact_order` rescores."""
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < 2:
        return np.zeros(0, np.float32)
    rows = np.ascontiguousarray(vectors[offsets[0]:offsets[-1]], np.float32)
    packed = nk.dots_pack(np.ascontiguousarray(query, np.float32), dtype="f32")
    similarities = np.asarray(nk.dots_packed(rows, packed))
    return np.maximum.reduceat(similarities, offsets[:-1] - offsets[0], axis=0).sum(axis=1, dtype=np.float32)


def exact_order(approximate: np.ndarray, margin: float, k: int) -> np.ndarray:
    """Indices of the documents that can be in the exact top ``k`` given ``approximate`` scores off by at
    most ``margin``: every one whose score is within ``2 * margin`` of the ``k``-th best (unordered)."""
    if k >= len(approximate):
        return np.arange(len(approximate))
    kth = np.partition(approximate, len(approximate) - k)[len(approximate) - k]
    return np.flatnonzero(approximate >= kth - 2 * margin)


def hamming_maxsim(query_codes: np.ndarray, codes: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray:
    """Hamming MaxSim of ``(q, nbytes)`` query codes against documents' stacked ``(n, nbytes)`` token codes
    (document ``i`` owns ``offsets[i]:offsets[i + 1]``, at least one each): ``(n_docs,)`` float32, each query
    token scoring ``1 - 2 * min hamming / bits`` (the cosine its angle estimate gives)."""
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < 2:
        return np.zeros(0, np.float32)
    rows = np.ascontiguousarray(codes[offsets[0]:offsets[-1]], np.uint8)
    packed = nk.hammings_pack(np.ascontiguousarray(query_codes, np.uint8))
    distances = np.asarray(nk.hammings_packed(rows, packed))                  # (tokens, q) uint32
    minimum = np.minimum.reduceat(distances, offsets[:-1] - offsets[0], axis=0)
    return (len(query_codes) - 2.0 * minimum.sum(axis=1, dtype=np.float32) / bits).astype(np.float32)


def masked_hamming(codes: np.ndarray, query: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hamming distance of each ``(n, nbytes)`` code to the ``(nbytes,)`` query code over ``mask``'s bits:
    ``(n,)`` uint32. Only the bytes the mask touches are compared (a query fills few of the FDE's buckets)."""
    touched = np.flatnonzero(mask)
    if not len(touched):
        return np.zeros(len(codes), np.uint32)
    masked = np.take(codes, touched, axis=1)
    masked &= mask[touched]
    packed = nk.hammings_pack((query[touched] & mask[touched])[None, :])
    return np.asarray(nk.hammings_packed(masked, packed))[:, 0]


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
