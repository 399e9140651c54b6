"""MUVERA fixed-dimensional encodings (FDE): one fixed-size code per multi-vector, for the first search stage.

MUVERA (Jayaram et al., 2024) turns MaxSim into one inner product: for each of ``repetitions`` random
SimHash partitions of the space (``simhash_bits`` random hyperplanes, so ``2 ** simhash_bits`` buckets), every
token vector falls into one bucket; a document's bucket holds the *average* of its token vectors there, a
query's bucket the *sum* of its tokens there; each bucket is projected to ``projection_dim`` dimensions by a
random ±1 matrix; the code is all buckets of all repetitions side by side (``repetitions * 2 ** simhash_bits *
projection_dim`` floats). ``<query FDE, document FDE>`` approximates the MaxSim of the two, since a query token
meets the document tokens that share its bucket, i.e. its likely best matches. A document bucket that no token
falls into is filled with the token whose SimHash signature is closest in hamming distance, so a short document
(a 12-token text) still answers every query token.

The index stores the document codes **sign-binarized** (1 bit per dimension: 1,280 bytes with the defaults)
and the first stage ranks them by the hamming distance to the query code's signs over the buckets the query
occupies (a query's empty bucket is zero in the inner product, so it is masked out). All random matrices come
from ``seed``: documents and queries must use the same :class:`FdeParams`, which the index records.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numkong as nk
import numpy as np

from infinity_assets.index.binary import pack_signs
from infinity_assets.index.kernels import row_products


@dataclass(frozen=True)
class FdeParams:
    """The random partitions and projections of an FDE, generated from ``seed`` for ``hidden_dim``."""

    hidden_dim: int
    repetitions: int = 20
    simhash_bits: int = 5
    projection_dim: int = 16
    seed: int = 0

    @property
    def buckets(self) -> int:
        """Buckets per repetition."""
        return 1 << self.simhash_bits

    @property
    def dimension(self) -> int:
        """Floats in one code (bits once binarized)."""
        return self.repetitions * self.buckets * self.projection_dim

    @cached_property
    def _matrices(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        hyperplanes = rng.standard_normal((self.hidden_dim, self.repetitions * self.simhash_bits)).astype(np.float32)
        signs = rng.integers(0, 2, (self.hidden_dim, self.repetitions * self.projection_dim)) * 2 - 1
        projections = (signs / np.sqrt(self.projection_dim)).astype(np.float32)
        return hyperplanes, projections

    @cached_property
    def _packed(self) -> tuple[object, object]:
        """:attr:`_matrices` packed for :func:`~infinity_assets.index.kernels.row_products`."""
        return tuple(nk.dots_pack(np.ascontiguousarray(matrix.T), dtype="f32") for matrix in self._matrices)

    def buckets_of(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, repetitions)`` bucket ids: the SimHash signature of each vector in each repetition."""
        sides = row_products(vectors, self._packed[0], self.repetitions * self.simhash_bits)
        bits = (sides > 0).reshape(len(vectors), self.repetitions, self.simhash_bits)
        packed = np.packbits(bits, axis=-1, bitorder="little")          # (n, R, ceil(bits / 8)) uint8
        ids = packed[..., 0].astype(np.int64)
        for byte in range(1, packed.shape[-1]):
            ids |= packed[..., byte].astype(np.int64) << (8 * byte)
        return ids

    def projected(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, repetitions, projection_dim)``: each vector projected once per repetition."""
        projected = row_products(vectors, self._packed[1], self.repetitions * self.projection_dim)
        return projected.astype(np.float32).reshape(len(vectors), self.repetitions, self.projection_dim)


def document_codes(params: FdeParams, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sign-binarized document FDEs of many documents at once: ``(n_docs, dimension // 8)`` uint8.

    ``vectors`` are all documents' (unit) token vectors stacked; document ``i`` owns ``offsets[i]:offsets[i+1]``.
    """
    n_docs = len(offsets) - 1
    buckets = params.buckets_of(vectors)                      # (T, R)
    projected = params.projected(vectors)                     # (T, R, P)
    owner = np.repeat(np.arange(n_docs), np.diff(offsets))    # (T,)
    width = params.buckets * params.projection_dim
    sums = np.empty((n_docs, params.repetitions, params.buckets, params.projection_dim), np.float32)
    counts = np.empty((n_docs, params.repetitions, params.buckets), np.int64)
    lanes = np.arange(params.projection_dim)
    for rep in range(params.repetitions):
        slot = owner * params.buckets + buckets[:, rep]       # (T,): (document, bucket)
        counts[:, rep] = np.bincount(slot, minlength=n_docs * params.buckets).reshape(n_docs, -1)
        cell = (slot[:, None] * params.projection_dim + lanes).ravel()
        summed = np.bincount(cell, weights=projected[:, rep].ravel(), minlength=n_docs * width)
        sums[:, rep] = summed.reshape(n_docs, params.buckets, params.projection_dim)
    for doc in np.flatnonzero((counts == 0).any(axis=(1, 2))):
        _fill_empty(params, sums[doc], counts[doc], buckets[offsets[doc]:offsets[doc + 1]],
                    projected[offsets[doc]:offsets[doc + 1]])
    # The sign of an average is the sign of the sum: no division needed before binarizing.
    return pack_signs(sums.reshape(n_docs, -1))


def _fill_empty(params: FdeParams, sums: np.ndarray, counts: np.ndarray, buckets: np.ndarray,
                projected: np.ndarray) -> None:
    """Fill a document's empty buckets with its token nearest by SimHash signature (in place)."""
    ids = np.arange(params.buckets)
    for rep in np.flatnonzero((counts == 0).any(axis=1)):
        empty = ids[counts[rep] == 0]
        distance = np.bitwise_count((buckets[:, rep][:, None] ^ empty[None, :]).astype(np.uint64))   # (n, E)
        nearest = distance.argmin(axis=0)
        sums[rep, empty] = projected[nearest, rep]


def query_fde(params: FdeParams, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sums, occupied)`` of a query's FDE, both ``(dimension,)``: the summed projected buckets (float32)
    and which of them the query occupies (bool; the others are zero in the inner product)."""
    buckets = params.buckets_of(query)
    projected = params.projected(query)
    sums = np.zeros((params.repetitions, params.buckets, params.projection_dim), np.float32)
    occupied = np.zeros((params.repetitions, params.buckets, params.projection_dim), bool)
    reps = np.broadcast_to(np.arange(params.repetitions), buckets.shape)
    np.add.at(sums, (reps.ravel(), buckets.ravel()), projected.reshape(-1, params.projection_dim))
    occupied[reps.ravel(), buckets.ravel()] = True
    return sums.reshape(-1), occupied.reshape(-1)


def query_code(params: FdeParams, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(signs, mask)`` of a query's FDE, both ``(dimension // 8,)`` uint8: the sign bits of the summed
    buckets, and 1 bits over the buckets the query occupies (the others are zero in the inner product)."""
    sums, occupied = query_fde(params, query)
    return pack_signs(sums.reshape(1, -1))[0], np.packbits(occupied)


def magnitude_planes(sums: np.ndarray, mask: np.ndarray, bits: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The query FDE's magnitudes over ``mask``'s bits rounded to ``bits``-bit integers, as bit planes:
    ``(masks, weights)``, ``(bits, dimension // 8)`` uint8 and ``(bits,)`` uint32 (``2 ** p``), so that
    ``sum_p weights[p] * [bit j in masks[p]]`` is the rounded magnitude of dimension ``j`` (0 outside
    ``mask``). Weighting each differing bit by it, the hamming distance of a document's sign code to the
    query's signs becomes ``(sum of |q_j| over the mask - <q, 2 b - 1>) / 2`` in rounded units: the query
    side keeps its magnitudes, the asymmetric inner product of MUVERA's query FDE with the 1-bit code."""
    magnitudes = np.abs(sums) * np.unpackbits(mask)[:len(sums)]
    largest = magnitudes.max()
    levels = np.round(magnitudes * ((2 ** bits - 1) / largest)).astype(np.uint32) if largest > 0 else \
        np.zeros(len(sums), np.uint32)
    planes = np.stack([np.packbits((levels >> plane) & 1) for plane in range(bits)])
    return planes, (1 << np.arange(bits)).astype(np.uint32)
