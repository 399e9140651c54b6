"""1-bit token vectors, 32x smaller than float32, and hamming distances over them (numpy definitions).

A token vector is kept as the signs of its dimensions, packed 8 to a byte (16 bytes for 128-d ColPali, 48
for 384-d MiniLM), as Vespa's ColPali recipe does. For unit vectors, the hamming distance between two sign
codes tracks the angle between the vectors (SimHash with the coordinate axes as hyperplanes), so
``hamming MaxSim = sum over query tokens of (bits - min hamming distance to any document token)`` ranks
documents close to float MaxSim, good enough to pick the few candidates the float rerank then orders exactly.

The search's second stage now scores the float query against these codes (sign MaxSim,
:func:`infinity_assets.index.kernels.sign_maxsim`), which ranks better; hamming MaxSim here is last round's
stage 2, kept as the benchmark's baseline, and :func:`hamming_distances` is the definition the compiled
masked hamming of the FDE stage is tested against. Popcounts use ``np.bitwise_count`` (numpy >= 2), else a
256-entry lookup table.
"""
from __future__ import annotations

import numpy as np

_POPCOUNT_TABLE = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def pack_signs(vectors: np.ndarray) -> np.ndarray:
    """``(n, d)`` floats -> ``(n, ceil(d / 8))`` uint8: bit set where the value is > 0 (big-endian in a byte)."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of every element of an unsigned integer array (same shape, uint8)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, words.itemsize)
    return _POPCOUNT_TABLE[as_bytes].sum(axis=-1, dtype=np.uint8)


def as_words(codes: np.ndarray) -> np.ndarray:
    """``(n, nbytes)`` uint8 codes viewed as the widest unsigned words that divide ``nbytes`` (no copy when
    contiguous): popcounts over 8-byte words are 8x fewer operations than over bytes."""
    codes = np.ascontiguousarray(codes)
    for width, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if codes.shape[-1] % width == 0:
            return codes.view(dtype)
    return codes


def hamming_distances(codes: np.ndarray, query: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Hamming distance of each ``(n, nbytes)`` code to one ``(nbytes,)`` query code, over ``mask``'s bits
    if given; ``(n,)`` uint32."""
    words, query_words = as_words(codes), as_words(query[None, :])[0]
    difference = words ^ query_words
    if mask is not None:
        difference &= as_words(mask[None, :])[0]
    return popcount(difference).sum(axis=1, dtype=np.uint32)


def hamming_maxsim(query_codes: np.ndarray, codes: np.ndarray, offsets: np.ndarray, bits: int) -> np.ndarray:
    """Hamming MaxSim of a query against many documents: ``(n_docs,)`` float32.

    ``query_codes`` ``(q, nbytes)``; ``codes`` all documents' token codes stacked, document ``i`` owning rows
    ``offsets[i]:offsets[i + 1]`` (at least one each); ``bits`` the vectors' dimension. Each query token scores
    ``1 - 2 * min hamming / bits`` (the cosine of the angle the hamming distance estimates, in [-1, 1]).
    All query tokens are compared at once, a bounded number of document tokens at a time.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) < 2:
        return np.zeros(0, np.float32)
    words = as_words(codes[offsets[0]:offsets[-1]])
    query_words = as_words(query_codes)
    starts = offsets[:-1] - offsets[0]
    minimum = np.empty((len(starts), len(query_words)), np.uint16)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(query_words) * words.shape[1]))
    first = 0
    while first < len(starts):
        last = int(np.searchsorted(starts, starts[first] + chunk, side="right"))
        last = max(last, first + 1)
        begin, end = starts[first], (starts[last] if last < len(starts) else len(words))
        block = words[begin:end]
        distance = popcount(block[:, None, 0] ^ query_words[None, :, 0]).astype(np.uint16)   # (t, q)
        for word in range(1, words.shape[1]):
            distance += popcount(block[:, None, word] ^ query_words[None, :, word])
        minimum[first:last] = np.minimum.reduceat(distance, starts[first:last] - begin, axis=0)
        first = last
    return (len(query_words) - 2.0 * minimum.sum(axis=1, dtype=np.float32) / bits).astype(np.float32)


#: Document tokens x query tokens x words compared per block (bounds the temporaries to ~16 MB).
_CHUNK_ELEMENTS = 1 << 21
