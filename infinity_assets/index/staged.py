"""The staged search over one version of an index table: FDE candidates, sign MaxSim, int8 MaxSim on pooled
tokens, float MaxSim rerank.

What the first two stages read is held in memory (:class:`Resident`: the ``fde`` and ``bits`` columns, read
once per table version in one scan, ~5 KB per page with the default encoding); per query the last two read
their candidates' rows from the table (:mod:`~infinity_assets.index.take`): a few KB of int8 pooled tokens
for each of ``hamming_candidates``, then the full float16 pages of only ``pooled_candidates``. A reader
with a local copy (:mod:`~infinity_assets.index.local_copy`) reads stage 3's ``pooled`` rows from the copy's
files, and once the copy is ready it holds only the ``fde`` column (~1.3 KB per page) and reads stage 2's
``bits`` rows from the copy too (from the OS page cache, into which the copy is read when it fits; else
from the disk: slower), unless ``hold_bits=True``. With ``copy_originals`` the copy holds ``embedding`` too,
and the rerank reads its rows there.

1. **FDE** (:mod:`~infinity_assets.index.fde`): the query's MUVERA code against documents' 1-bit codes, by
   masked hamming distance. Every code is compared (one compiled scan), unless ``fde_probes`` asks for the
   IVF of the version (:mod:`~infinity_assets.index.ivf`): then only the codes of the ``fde_probes`` lists
   nearest the query (more lists are taken until they hold ``fde_candidates``). Bits on which nearly every
   document agrees with the query (``fde_agreement``) are left out: shared by near-duplicate pages, they
   would drown the bits of a rare token. Keeps ``fde_shortlist``, whose codes are compared again with each
   differing bit weighted by the query FDE's magnitude there (3-bit planes,
   :func:`~infinity_assets.index.fde.magnitude_planes`; ranks closer to MUVERA's inner product than the
   plain distance does). Keeps ``fde_candidates``.
2. **Sign MaxSim** (:func:`~infinity_assets.index.kernels.sign_maxsim`): the float query against the 1-bit
   codes of those candidates' pooled tokens (:mod:`~infinity_assets.index.pooling`). Keeps
   ``hamming_candidates`` (the setting keeps the name of the symmetric hamming MaxSim it replaced).
3. **Pooled MaxSim** (:func:`~infinity_assets.index.kernels.int8_maxsim`): cosine MaxSim against the same
   pooled tokens, kept as int8 vectors (``pooled``, read per query): it ranks nearly
   as the pooled float vectors do, so far fewer full pages need reading. Keeps ``pooled_candidates``.
   Skipped on a table written before the column existed (the next sync adds it).
4. **Float MaxSim** (cosine) on the unit ``embedding`` vectors of those few: the final order and scores,
   the same as an exact search gives for the documents returned. The kernel reads float16 vectors in place
   with the query rounded to float16 (:mod:`~infinity_assets.index.kernels`); every document that could be
   in the top ``k`` within the rounding's bound is rescored in float32, so order and scores are exact.

All four stages run on compiled kernels (:mod:`~infinity_assets.index.kernels`), one call per batch.
``exact=True`` skips the stages: a streaming scan of every document's ``embedding`` (the ground truth), on
the same kernels and the same float32 rescoring of the near-ties. A
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

from infinity_assets.client.allocator import release_free_memory
from infinity_assets.index import ivf, kernels
from infinity_assets.index.binary import pack_signs
from infinity_assets.index.fde import FdeParams, magnitude_planes, query_fde
from infinity_assets.index.local_copy import LocalCopy
from infinity_assets.index.maxsim import normalized
from infinity_assets.index.rows import take_runs, token_rows
from infinity_assets.index.schema import EncodingSettings, _from_env
from infinity_assets.index.take import RowTaker

#: How often a reader whose table version has no IVF (yet) looks for it again.
IVF_RETRY_SECONDS = 5.0
#: Rows per batch of the exact scan (bounded memory: ~64 MB of float16 ColPali pages).
EXACT_BATCH_ROWS = 256
#: Rows per batch of the scan that reads what stages 1-2 hold.
RESIDENT_BATCH_ROWS = 8192


@dataclass(frozen=True)
class SearchSettings:
    """How many candidates each stage keeps (query time; no rebuild needed to change them).

    Filled by :meth:`from_env` from ``INFINITY_ASSETS_SEARCH_<FIELD>`` variables (``FDE_CANDIDATES``,
    ``HAMMING_CANDIDATES``, ``POOLED_CANDIDATES``, ``FDE_AGREEMENT``, ``FDE_PROBES``). ``hamming_candidates``
    and ``pooled_candidates`` are raised to ``k`` when smaller.
    """

    fde_shortlist: int = 4000
    """Documents the masked hamming scan keeps for the weighted one (the query's FDE magnitudes weighting
    each bit), which keeps ``fde_candidates``; at or below ``fde_candidates``: no weighted scan."""
    fde_candidates: int = 1500
    hamming_candidates: int = 150
    pooled_candidates: int = 30
    """Documents whose full pages the rerank reads (stage 3 keeps them; raised to ``k`` when smaller)."""
    fde_agreement: float = 0.9
    """FDE bits on which more than this share of the documents agree with the query are not compared
    (1.0: every bit the query occupies)."""
    fde_probes: int = 0
    """IVF lists whose codes the first stage compares (the nearest to the query; more lists are taken until
    they hold ``fde_candidates`` documents); 0: every code (the flat scan, also what a table without an IVF
    gets). Probing trades recall for time: see docs/search-at-scale.md."""

    ENV_PREFIX = "INFINITY_ASSETS_SEARCH_"

    def __post_init__(self) -> None:
        for name in ("fde_shortlist", "fde_candidates", "hamming_candidates", "pooled_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"search settings {name}={getattr(self, name)}: must be at least 1")
        if self.fde_probes < 0:
            raise ValueError(f"search settings fde_probes={self.fde_probes}: 0 (every code) or a number of lists")
        if not 0.0 < self.fde_agreement <= 1.0:
            raise ValueError(f"search settings fde_agreement={self.fde_agreement}: a share in (0, 1]")

    @classmethod
    def from_env(cls, **overrides: Any) -> SearchSettings:
        """Defaults, replaced by ``INFINITY_ASSETS_SEARCH_<FIELD>`` variables (read now), then by non-None
        ``overrides``."""
        return cls(**_from_env(cls, cls.ENV_PREFIX, overrides))


@dataclass
class Ranking:
    """Row positions (in the pinned table version) and cosine MaxSim scores, best first, with the ``carry``
    columns of those rows (read with the rerank's), what the stages kept (how many, and ``kept``: the row
    positions each stage passed on, sorted; empty for the exact search), how long each took (seconds) and how
    many FDE codes the first stage compared."""

    positions: np.ndarray
    scores: np.ndarray
    rows: pa.Table
    timings: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    scanned: int = 0
    kept: dict[str, np.ndarray] = field(default_factory=dict)


class StagedSearch:
    """The stages over one pinned LanceDB dataset version (``table.to_lance()``); ``store`` and ``modality``
    locate the version's IVF (None: the first stage scans every code); ``carry``: columns returned with the
    ranked rows, read in the rerank's own ``take`` (no second round trip); ``local_copy``: a directory where
    the ``bits`` and ``pooled`` columns are copied for stages 2 and 3
    (:class:`~infinity_assets.index.local_copy.LocalCopy`, made in the background; until it is ready stage 3
    reads the table), None: no copy; ``copy_originals``: the copy holds ``embedding`` too, and the rerank
    reads its rows there (about the table's size again on local disk), ``"auto"``: for a table on object
    storage, or a local one whose copy fits in the page cache, where the rows fit on the disk
    (:func:`~infinity_assets.index.local_copy.originals_fit`); ``hold_bits``: stage 2's
    codes held in memory (True) or, with a copy, read from it per query once it is ready (False; held until
    then, and for good if it cannot be made)."""

    def __init__(self, dataset: Any, hidden_dim: int, encoding: EncodingSettings, *, store: Any = None,
                 modality: str = "", carry: tuple[str, ...] = (), local_copy: str | None = None,
                 copy_originals: bool | str = False, hold_bits: bool = False) -> None:
        self.dataset, self.hidden_dim, self.encoding = dataset, hidden_dim, encoding
        self.hold_bits = hold_bits
        self.carry = carry
        self.store, self.modality = store, modality
        self.fde = encoding.fde(hidden_dim)
        self.taker = RowTaker(dataset)
        self.rows = int(self.taker.starts[-1])  # the live rows, counted once per fragment
        self.pooled = "pooled" in dataset.schema.names  # False: a table from before the column (stage 3 skipped)
        if copy_originals not in (True, False, "auto"):
            raise ValueError(f"copy_originals={copy_originals!r}: True, False or 'auto'")
        originals = encoding.originals if copy_originals else None
        self.local_copy = (LocalCopy(dataset, hidden_dim, local_copy, carry, originals,
                                     auto_originals=copy_originals == "auto")
                           if local_copy and self.pooled else None)
        self._resident: Resident | None = None
        self.lists: ivf.Lists | None = None
        self._ivf_retry_at = 0.0
        self._loading = threading.Lock()

    @property
    def resident(self) -> Resident:
        """What stages 1-2 read, held in memory: read on first use (once, whatever the number of threads
        searching, in one scan), with the version's IVF if it has one. Without ``hold_bits`` and with a local
        copy that is ready, only the FDE codes (stage 2 reads its codes from the copy: those held until then
        are let go)."""
        with self._loading:
            copied = not self.hold_bits and self.local_copy is not None and self.local_copy.ready()
            if self._resident is None or (not copied and self._resident.token_bits is None):
                self._resident = Resident.read(self.dataset, bits=not copied)
            elif copied and self._resident.token_bits is not None:
                self._resident = Resident(self._resident.codes, self._resident.ones, None, None)
                release_free_memory()
            if self.lists is None and self.store is not None and time.monotonic() >= self._ivf_retry_at:
                # a sync writes the IVF of a version just after committing it: a reader that opened the
                # version in between scans every code until the file is there, looked for every few seconds
                self._ivf_retry_at = time.monotonic() + IVF_RETRY_SECONDS
                self.lists = ivf.load(self.store, self.modality, self.dataset, self.encoding)
                if self.lists is not None:
                    self.lists.members()
        return self._resident

    @property
    def codes(self) -> np.ndarray:
        """Every document's FDE code, ``(rows, fde_bits / 8)`` uint8 (:attr:`resident`)."""
        return self.resident.codes

    def informative(self, signs: np.ndarray, mask: np.ndarray, agreement: float) -> np.ndarray:
        """``mask`` without the bits on which more than ``agreement`` of all documents agree with the query
        (:func:`informative_bits`)."""
        return informative_bits(signs, mask, self.resident.ones, agreement)

    def search(self, query: np.ndarray, k: int, settings: SearchSettings) -> Ranking:
        """The ``k`` best rows for a unit ``(q, hidden_dim)`` float32 query, through the four stages."""
        started = time.perf_counter()
        candidates, shortlist, scanned = self.first_stage(query, settings)
        return self.ranked(query, candidates, k, settings, {"fde": _lap(started)}, shortlist, scanned)

    def first_stage(self, query: np.ndarray, settings: SearchSettings) -> tuple[np.ndarray, int, int]:
        """Stage 1 (:func:`fde_stage`) over the version's codes and IVF; every row in a table of at most
        ``fde_candidates`` rows."""
        if self.rows <= settings.fde_candidates:
            return np.arange(self.rows), self.rows, self.rows
        resident = self.resident
        return fde_stage(self.fde, resident.codes, resident.ones, query, settings, self.lists)

    def ranked(self, query: np.ndarray, candidates: np.ndarray, k: int, settings: SearchSettings,
               timings: dict[str, float], shortlist: int, scanned: int) -> Ranking:
        """Stages 2-4 over the sorted row positions ``candidates`` (:meth:`first_stage`'s, or any): ``timings``
        (added to), ``shortlist`` and ``scanned`` are the first stage's, reported with the ranking."""
        kept = {"fde": candidates}
        keep = max(settings.hamming_candidates, k)
        positions = candidates
        if len(positions) > keep:
            started = time.perf_counter()
            codes, offsets = self._token_rows(positions, "bits")
            scores = kernels.sign_maxsim(query, codes, offsets)
            positions = positions[_within(-scores, keep)]
            timings["hamming"] = _lap(started)
        else:
            timings["hamming"] = 0.0
        kept["hamming"] = positions = np.sort(positions)
        keep = max(settings.pooled_candidates, k)
        if self.pooled and len(positions) > keep:
            started = time.perf_counter()
            tokens, offsets = self._token_rows(positions, "pooled")
            scores = kernels.int8_maxsim(query, tokens, offsets)
            positions = positions[_within(-scores, keep)]
            timings["pooled"] = _lap(started)
        else:
            timings["pooled"] = 0.0
        started = time.perf_counter()
        kept["pooled"] = positions = np.sort(positions)
        copy = self.local_copy if self.local_copy is not None and self.local_copy.ready() else None
        fragment_rows = self.taker.by_fragment(positions)
        if copy is not None and copy.originals:
            vectors, offsets = copy.rows(fragment_rows, "embedding")
        else:
            rows = self.taker.take(positions, ["embedding"] if copy else ["embedding", *self.carry])
            vectors, offsets = token_rows(rows.column("embedding").combine_chunks())
        best, scores = _exact_top(query, vectors, offsets, k)
        carried = (copy.hits(fragment_rows) if copy is not None else rows.select(self.carry)).take(best)
        timings["rerank"] = _lap(started)
        return Ranking(positions[best], scores, carried, timings,
                       {"shortlist": shortlist, **{stage: len(chosen) for stage, chosen in kept.items()}}, scanned,
                       kept)

    def _token_rows(self, positions: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, offsets)`` of the pooled tokens of the documents at sorted ``positions`` in ``column``
        (``bits`` or ``pooled``): ``bits`` from memory when held, else from the local copy when it is ready,
        else read from the table."""
        resident = self.resident
        if column == "bits" and resident.token_bits is not None:
            return resident.token_codes(positions)
        if self.local_copy is not None and self.local_copy.ready():
            return self.local_copy.rows(self.taker.by_fragment(positions), column)
        # rows of a few KB (int8 pooled tokens: at least the bits' count x hidden_dim bytes) when that is known
        row_bytes = resident.offsets[-1] / self.rows * self.hidden_dim if resident.token_bits is not None else None
        return token_rows(self.taker.take(positions, [column], row_bytes).column(column).combine_chunks())

    def exact(self, query: np.ndarray, k: int) -> Ranking:
        """The exact ``k`` best rows: cosine MaxSim against every row's ``embedding`` (streamed in batches),
        near-ties of the float16 kernel rescored in float32."""
        started = time.perf_counter()
        scores = []
        for batch in self.dataset.to_batches(columns=["embedding"], batch_size=EXACT_BATCH_ROWS):
            vectors, offsets = token_rows(batch.column(0))
            scores.append(kernels.float_maxsim(query, vectors, offsets))
        every = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        margin = kernels.float16_margin(len(query)) if self.encoding.originals == "float16" else 0.0
        near = np.sort(kernels.exact_order(every, margin, k))
        rows = self.taker.take(near, ["embedding", *self.carry])
        vectors, offsets = token_rows(rows.column("embedding").combine_chunks())
        best, exact_scores = _exact_top(query, vectors, offsets, k)
        return Ranking(near[best], exact_scores, rows.select(self.carry).take(best), {"exact": _lap(started)},
                       {"exact": self.rows}, self.rows)


@dataclass(frozen=True)
class Resident:
    """What stages 1-2 of one table version read, in memory: every document's FDE code, each FDE bit's
    share of documents with it set, and (unless a local copy serves them) the 1-bit codes of every document's
    pooled tokens, stacked."""

    codes: np.ndarray
    """``(rows, fde_bits / 8)`` uint8."""
    ones: np.ndarray
    """``(fde_bits,)`` float32 (:func:`bit_shares`)."""
    token_bits: np.ndarray | None
    """``(pooled tokens, hidden_dim / 8)`` uint8; document ``i`` owns ``offsets[i]:offsets[i + 1]`` (None:
    not held)."""
    offsets: np.ndarray | None

    @classmethod
    def read(cls, dataset: Any, bits: bool = True) -> Resident:
        """Read the ``fde`` column (and ``bits``) of a pinned dataset version (one scan), copied batch by
        batch into numpy arrays (no Arrow buffer outlives the scan)."""
        codes, token_bits, lengths = [], [], []
        for batch in dataset.to_batches(columns=["fde", "bits"] if bits else ["fde"], batch_size=RESIDENT_BATCH_ROWS):
            column = batch.column("fde")
            codes.append(column.flatten().to_numpy().reshape(-1, column.type.list_size).copy())
            if bits:
                values, offsets = token_rows(batch.column("bits"))
                token_bits.append(values[:offsets[-1]].copy())
                lengths.append(np.diff(offsets))
        all_codes = np.concatenate(codes)
        offsets = None
        if bits:
            offsets = np.zeros(len(all_codes) + 1, np.int64)
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        resident = cls(all_codes, bit_shares(all_codes), np.concatenate(token_bits) if bits else None, offsets)
        del codes, token_bits
        release_free_memory()
        return resident

    def token_codes(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, offsets)`` of the pooled tokens of the documents at ``positions``, stacked (a copy of
        each document's contiguous rows)."""
        starts, stops = self.offsets[positions], self.offsets[np.asarray(positions) + 1]
        offsets = np.zeros(len(starts) + 1, np.int64)
        np.cumsum(stops - starts, out=offsets[1:])
        return take_runs(self.token_bits, starts, stops - starts), offsets


def _exact_top(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` of the exact ``k`` best documents (float32 MaxSim), best first: the kernel's
    scores pick the documents within its error bound of the ``k``-th, which are rescored in float32."""
    similarities, per_token = kernels.float_similarities(query, vectors, offsets)
    approximate = per_token.sum(axis=1, dtype=np.float32)
    if vectors.dtype == np.float32:
        best = _largest(approximate, k)
        return best, approximate[best]
    near = np.sort(kernels.exact_order(approximate, kernels.float16_margin(len(query)), k))
    exact = kernels.exact_maxsim(query, vectors, offsets, near, similarities, per_token)
    best = _largest(exact, k)
    return near[best], exact[best]


def fde_stage(fde: FdeParams, codes: np.ndarray, ones: np.ndarray, query: np.ndarray, settings: SearchSettings,
              lists: ivf.Lists | None = None) -> tuple[np.ndarray, int, int]:
    """Stage 1 for a unit query over ``(rows, fde_bits / 8)`` ``codes`` (``ones``: their :func:`bit_shares`;
    ``lists``: their IVF, None: every code scanned): the sorted row positions of the ``fde_candidates`` best,
    the size of the masked scan's shortlist and the number of codes scanned. The masked hamming scan keeps a
    shortlist of ``fde_shortlist``, which the query's magnitudes rescore (:func:`kernels.weighted_hamming`)."""
    sums, occupied = query_fde(fde, query)
    signs, mask = pack_signs(sums[None])[0], np.packbits(occupied)
    if settings.fde_agreement < 1.0:
        mask = informative_bits(signs, mask, ones, settings.fde_agreement)
    positions, probed = np.arange(len(codes)), None
    if lists is not None and 0 < settings.fde_probes < lists.count:
        positions = probed = lists.probe(signs, mask, settings.fde_probes, settings.fde_candidates)
    scanned = len(positions)
    distances = kernels.masked_hamming(codes, signs, mask, probed)
    positions = positions[_within(distances, max(settings.fde_shortlist, settings.fde_candidates))]
    shortlist = len(positions)
    if len(positions) > settings.fde_candidates:
        planes, weights = magnitude_planes(sums, mask)
        distances = kernels.weighted_hamming(codes, signs, planes, weights, positions)
        positions = positions[_within(distances, settings.fde_candidates)]
    return np.sort(positions), shortlist, scanned


def informative_bits(signs: np.ndarray, mask: np.ndarray, ones: np.ndarray, agreement: float) -> np.ndarray:
    """``mask`` without the bits on which more than ``agreement`` of all documents agree with the query
    (``ones``: each bit's share of documents with it set): bits every page shares (the common tokens of
    near-duplicate pages) say nothing about which page to pick and would drown the few bits of a rare token."""
    query_bits = np.unpackbits(signs).astype(bool)
    agree = np.where(query_bits, ones, 1.0 - ones)
    return mask & np.packbits(agree <= agreement)


def query_vectors(query: np.ndarray, hidden_dim: int) -> np.ndarray:
    """A query as unit float32 rows; ValueError unless it is a non-empty ``(q, hidden_dim)`` matrix."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[1] != hidden_dim or not len(query):
        raise ValueError(f"query has shape {query.shape}")
    return normalized(query)


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


def bit_shares(codes: np.ndarray) -> np.ndarray:
    """The share of documents with each bit of the codes set, ``(bits,)`` float32 (in blocks of rows)."""
    ones = np.zeros(codes.shape[1] * 8, np.float64)
    for start in range(0, len(codes), 8192):
        ones += np.unpackbits(codes[start:start + 8192], axis=1).sum(axis=0)
    return (ones / max(1, len(codes))).astype(np.float32)


def _lap(started: float) -> float:
    return time.perf_counter() - started
