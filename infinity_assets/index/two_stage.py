"""The staged search over one version of an index table: FDE candidates, hamming MaxSim, float MaxSim rerank.

1. **FDE** (:mod:`~infinity_assets.index.fde`): the query's MUVERA code against every document's 1-bit
   code, by masked hamming distance; the codes (``fde_bits / 8`` bytes per document) are the only column held
   in memory, read once per table version. Bits on which nearly every document agrees with the query
   (``fde_agreement``) are left out: shared by near-duplicate pages, they would drown the bits of a rare
   token. Keeps ``fde_candidates``.
2. **Hamming MaxSim** (:mod:`~infinity_assets.index.binary`) on the 1-bit codes of those candidates' pooled
   tokens (:mod:`~infinity_assets.index.pooling`; read by row position, ``take``). Keeps ``hamming_candidates``.
3. **Float MaxSim** (cosine) on the unit ``embedding`` vectors of those few: the final order and scores,
   the same as an exact search gives for the documents returned.

``exact=True`` skips the stages: a streaming scan of every document's ``embedding`` (the ground truth). A
table that holds no more documents than a stage keeps loses nothing at that stage, so small indexes answer
exactly. Candidates tied with a stage's last are kept too, so the answer does not depend on the order of the
rows. Row positions are those of the pinned dataset version: a concurrent sync commits a new version and
does not move them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from infinity_assets.index.binary import hamming_distances, hamming_maxsim, pack_signs
from infinity_assets.index.fde import query_code
from infinity_assets.index.maxsim import maxsim_scores, normalized
from infinity_assets.index.schema import EncodingSettings, _from_env

#: Rows per batch of the exact scan (bounded memory: ~64 MB of float16 ColPali pages).
EXACT_BATCH_ROWS = 256


@dataclass(frozen=True)
class SearchSettings:
    """How many candidates each stage keeps (query time; no rebuild needed to change them).

    Filled by :meth:`from_env` from ``INFINITY_ASSETS_SEARCH_FDE_CANDIDATES`` and
    ``INFINITY_ASSETS_SEARCH_HAMMING_CANDIDATES``. ``hamming_candidates`` is raised to ``k`` when smaller.
    """

    fde_candidates: int = 1000
    hamming_candidates: int = 50
    fde_agreement: float = 0.9
    """FDE bits on which more than this share of the documents agree with the query are not compared
    (1.0: every bit the query occupies)."""

    ENV_PREFIX = "INFINITY_ASSETS_SEARCH_"

    def __post_init__(self) -> None:
        if self.fde_candidates < 1 or self.hamming_candidates < 1:
            raise ValueError(f"search settings {self}: every stage must keep at least one candidate")

    @classmethod
    def from_env(cls, **overrides: Any) -> SearchSettings:
        """Defaults, replaced by ``INFINITY_ASSETS_SEARCH_<FIELD>`` variables (read now), then by non-None
        ``overrides``."""
        return cls(**_from_env(cls, cls.ENV_PREFIX, overrides))


@dataclass
class Ranking:
    """Row positions (in the pinned table version) and cosine MaxSim scores, best first, with what the
    stages kept and how long each took (seconds)."""

    positions: np.ndarray
    scores: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)


class StagedSearch:
    """The stages over one pinned LanceDB dataset version (``table.to_lance()``)."""

    def __init__(self, dataset: Any, hidden_dim: int, encoding: EncodingSettings) -> None:
        self.dataset, self.hidden_dim, self.encoding = dataset, hidden_dim, encoding
        self.fde = encoding.fde(hidden_dim)
        self.rows = dataset.count_rows()
        self._codes: np.ndarray | None = None
        self._ones = np.zeros(0, np.float32)
        self._loading = threading.Lock()

    @property
    def codes(self) -> np.ndarray:
        """Every document's FDE code, ``(rows, fde_bits / 8)`` uint8, read on first use (once, whatever the
        number of threads searching)."""
        with self._loading:
            if self._codes is None:
                column = self.dataset.to_table(columns=["fde"]).column("fde").combine_chunks()
                codes = column.flatten().to_numpy().reshape(-1, column.type.list_size)
                self._ones = _bit_means(codes)
                self._codes = codes
        return self._codes

    def informative(self, signs: np.ndarray, mask: np.ndarray, agreement: float) -> np.ndarray:
        """``mask`` without the bits on which more than ``agreement`` of all documents agree with the query:
        bits every page shares (the common tokens of near-duplicate pages) say nothing about which page to
        pick and would drown the few bits of a rare token."""
        query_bits = np.unpackbits(signs).astype(bool)
        agree = np.where(query_bits, self._ones, 1.0 - self._ones)
        return mask & np.packbits(agree <= agreement)

    def search(self, query: np.ndarray, k: int, settings: SearchSettings) -> Ranking:
        """The ``k`` best rows for a unit ``(q, hidden_dim)`` float32 query, through the three stages."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        positions = np.arange(self.rows)
        if self.rows > settings.fde_candidates:
            signs, mask = query_code(self.fde, query)
            codes = self.codes
            if settings.fde_agreement < 1.0:
                mask = self.informative(signs, mask, settings.fde_agreement)
            distances = hamming_distances(codes, signs, mask)
            positions = _within(distances, settings.fde_candidates)
        timings["fde"] = _lap(started)
        kept_fde = int(len(positions))
        keep = max(settings.hamming_candidates, k)
        if len(positions) > keep:
            started = time.perf_counter()
            positions = np.sort(positions)
            codes, offsets = _vectors(self._take(positions, "bits"), np.uint8)
            scores = hamming_maxsim(pack_signs(query), codes, offsets, self.hidden_dim)
            positions = positions[_within(-scores, keep)]
            timings["hamming"] = _lap(started)
        else:
            timings["hamming"] = 0.0
        started = time.perf_counter()
        positions = np.sort(positions)
        vectors, offsets = _vectors(self._take(positions, "embedding"), np.float32)
        scores = maxsim_scores(query, vectors, offsets)
        best = _largest(scores, k)
        timings["rerank"] = _lap(started)
        return Ranking(positions[best], scores[best], timings,
                       {"fde": kept_fde, "hamming": int(len(positions))})

    def exact(self, query: np.ndarray, k: int) -> Ranking:
        """The exact ``k`` best rows: cosine MaxSim against every row's ``embedding`` (streamed in batches)."""
        started = time.perf_counter()
        scores = []
        for batch in self.dataset.to_batches(columns=["embedding"], batch_size=EXACT_BATCH_ROWS):
            vectors, offsets = _vectors(batch.column(0), np.float32)
            scores.append(maxsim_scores(query, vectors, offsets))
        every = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        best = _largest(every, k)
        return Ranking(best, every[best], {"exact": _lap(started)}, {"exact": self.rows})

    def _take(self, positions: np.ndarray, column: str) -> pa.Array:
        return self.dataset.take(positions.tolist(), columns=[column]).column(column).combine_chunks()


def query_vectors(query: np.ndarray, hidden_dim: int) -> np.ndarray:
    """A query as unit float32 rows; ValueError unless it is a non-empty ``(q, hidden_dim)`` matrix."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != hidden_dim or not len(query):
        raise ValueError(f"query has shape {query.shape}")
    return normalized(query)


def _vectors(column: pa.Array, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, offsets)`` of a ``list<fixed_size_list<T, d>>`` array (float values upcast to float32)."""
    offsets = column.offsets.to_numpy().astype(np.int64)
    width = column.type.value_type.list_size
    values = column.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return values.astype(dtype, copy=False), offsets - offsets[0]


def _largest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties in index order)."""
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return best[np.lexsort((best, -scores[best]))]


def _within(distances: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest distances and of every one tied with the ``k``-th: the candidates do not
    depend on the order of the rows (an index synced incrementally answers as a fresh build)."""
    if k >= len(distances):
        return np.arange(len(distances))
    kth = np.partition(distances, k - 1)[k - 1]
    return np.flatnonzero(distances <= kth)


def _bit_means(codes: np.ndarray) -> np.ndarray:
    """The share of documents with each bit of the codes set, ``(bits,)`` float32 (in blocks of rows)."""
    ones = np.zeros(codes.shape[1] * 8, np.float64)
    for start in range(0, len(codes), 8192):
        ones += np.unpackbits(codes[start:start + 8192], axis=1).sum(axis=0)
    return (ones / max(1, len(codes))).astype(np.float32)


def _lap(started: float) -> float:
    return time.perf_counter() - started
