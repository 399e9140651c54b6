"""The search API: :class:`IndexReader` over one index table, and :func:`search_text` (embed, then search).

The default search is staged (:mod:`infinity_assets.index.staged`); ``exact=True`` scans every vector (the
ground truth). Scores are cosine MaxSim, ``sum over query vectors of the max cosine similarity with any
document vector``: for models whose vectors are L2-normalised (ColPali, ColQwen2, ColBERT) the dot MaxSim of
:mod:`infinity_assets.index.maxsim`. A reader answers from the table version it opened (a sync commits a
new version; :meth:`IndexReader.refresh` moves to it), so a search never sees half of a sync.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infinity_assets.client.allocator import limit_arenas
from infinity_assets.index.hits import Hit, add_snippets
from infinity_assets.index.schema import (
    HIT_COLUMNS,
    TABLES,
    EncodingSettings,
    SearchIndexError,
    column_bytes,
    index_uri,
    open_table,
    table_encoding,
    table_settings,
)
from infinity_assets.index.staged import SearchSettings, StagedSearch, query_vectors
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.storage.modality import Modality


@dataclass
class SearchResult:
    """Hits, best first, and how the search got them: seconds per stage (``fde``, ``hamming``, ``pooled``, ``rerank``,
    or ``exact``; ``total`` includes reading the hits' columns), candidates kept per stage, bytes read,
    ``scanned``: the FDE codes the first stage compared (fewer than the rows with an IVF), and the row
    positions in the reader's table version of the hits (``positions``) and of what each stage kept
    (``kept``; empty for the exact search)."""

    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    bytes_read: int | None = None
    scanned: int = 0
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kept: dict[str, np.ndarray] = field(default_factory=dict)


class IndexReader:
    """Searches one index table; raises :class:`SearchIndexError` if it is missing, empty or was built with
    other settings than ``encoding`` (when given). ``local_copy``: a directory where a long-lived reader keeps
    a copy of what stages 2-3 read per candidate (:mod:`~infinity_assets.index.local_copy`; made in the
    background for each version it opens, reusing what an earlier version copied); None: stage 3 reads the
    table. With a copy, stage 2's codes are read from it once it is ready, not held in memory, unless
    ``hold_bits=True``; with ``copy_originals=True`` the copy holds the rerank's ``embedding`` rows too
    (about the table's size again) where they leave the disk's reserve, and no query reads the table;
    ``"auto"`` (the default) does so for a table on object storage, and for a local one whose copy fits in
    the page cache, where the rows fit on the copy's disk
    (:func:`~infinity_assets.index.local_copy.originals_fit`); False: never.
    Opening one caps the process's malloc arenas (:func:`~infinity_assets.client.allocator.limit_arenas`).

    Example::

        reader = IndexReader(store, "text")
        reader.check_settings("minilm-colbert", 384)
        hits = reader.search(query_vectors, k=5)
        result = reader.search_staged(query_vectors, k=5, settings=SearchSettings(fde_candidates=200))
        print(result.timings)
    """

    def __init__(self, store: DocumentStore, modality: str, *, encoding: EncodingSettings | None = None,
                 local_copy: str | None = None, copy_originals: bool | str = "auto",
                 hold_bits: bool = False) -> None:
        limit_arenas()  # before this process's first scan (see allocator.limit_arenas)
        self.store, self.modality, self.local_copy, self.hold_bits = store, modality, local_copy, hold_bits
        self.copy_originals = copy_originals
        self.where = f"{index_uri(store)} (table {TABLES[modality]!r})"
        self.table = open_table(store, modality)
        if self.table is None:
            raise SearchIndexError(f"there is no {modality} index at {self.where} yet: materialize the corpus's "
                                   f"<corpus>/{Modality.of(modality).stem}_index asset (it follows the embedding "
                                   "artifacts)")
        self.model, self.hidden_dim = table_settings(self.table)
        found = table_encoding(self.table)
        if found is None:
            raise SearchIndexError(f"the {modality} index at {self.where} was built by an older version without "
                                   "the compact search columns: materialize the index asset to rebuild it")
        self.encoding = found
        if encoding is not None and not encoding.same_rows(found):
            raise SearchIndexError(f"the {modality} index at {self.where} was built with encoding {found} but "
                                   f"the search expects {encoding}: set the INFINITY_ASSETS_INDEX_* settings to "
                                   "the index's, or materialize the index asset to rebuild it with yours")
        self._open()

    def _open(self) -> None:
        self.dataset = self.table.to_lance()
        self.version = self.dataset.version
        self.staged = StagedSearch(self.dataset, self.hidden_dim, self.encoding, store=self.store,
                                   modality=self.modality, carry=tuple(HIT_COLUMNS), local_copy=self.local_copy,
                                   copy_originals=self.copy_originals, hold_bits=self.hold_bits)
        self.rows = self.staged.rows
        if self.rows == 0:
            raise SearchIndexError(f"the {self.modality} index at {self.where} is empty: no artifact has been "
                                   "embedded with its model yet; embed some documents, then materialize the index")

    def refresh(self) -> bool:
        """Move to the table's latest committed version; True if it changed (what stages 1-2 hold is then re-read)."""
        self.table.checkout_latest()
        if self.table.version == self.version:
            return False
        if table_settings(self.table) != (self.model, self.hidden_dim) or not self.encoding.same_rows(table_encoding(self.table)):
            raise SearchIndexError(f"the {self.modality} index at {self.where} was rebuilt with other settings: "
                                   "open a new IndexReader")
        self._open()
        return True

    def check_settings(self, model: str, hidden_dim: int | None) -> None:
        """Raise :class:`SearchIndexError` unless queries from ``model`` / ``hidden_dim`` fit this index."""
        if model != self.model or (hidden_dim is not None and hidden_dim != self.hidden_dim):
            raise SearchIndexError(
                f"the {self.modality} index was built with model {self.model!r} (hidden_dim {self.hidden_dim}) "
                f"but queries are embedded with {model!r} (hidden_dim {hidden_dim}): set the model settings "
                "(INFINITY_MODEL / INFINITY_IMAGE_MODEL, INFINITY_HIDDEN_DIM) to the index's, or re-embed and "
                "re-index with the new model")

    def search(self, query: np.ndarray, k: int = 5, *, exact: bool = False,
               settings: SearchSettings | None = None) -> list[Hit]:
        """The ``k`` best rows for a ``(n_query, hidden_dim)`` query, best first (cosine MaxSim)."""
        return self.search_staged(query, k, exact=exact, settings=settings).hits

    def search_staged(self, query: np.ndarray, k: int = 5, *, exact: bool = False,
                      settings: SearchSettings | None = None) -> SearchResult:
        """:meth:`search` with the stages' timings and candidates (``settings`` None: the defaults)."""
        started = time.perf_counter()
        try:
            unit = query_vectors(query, self.hidden_dim)
        except ValueError:
            raise SearchIndexError(f"query has shape {np.shape(query)}; the {self.modality} index holds "
                                   f"{self.hidden_dim}-dimensional vectors (model {self.model!r})") from None
        _io_bytes(self.dataset)
        if exact:
            ranking = self.staged.exact(unit, k)
        else:
            ranking = self.staged.search(unit, k, settings or SearchSettings())
        rows = ranking.rows.to_pylist()
        hits = [Hit(float(score), row["doc_id"], row["partition"], row["source_uri"], row["page"], row["page_text"])
                for score, row in zip(ranking.scores, rows)]
        timings = {**ranking.timings, "total": time.perf_counter() - started}
        return SearchResult(hits, timings, ranking.candidates, _io_bytes(self.dataset), ranking.scanned,
                            ranking.positions, ranking.kept)

    def copy_status(self) -> dict[str, str]:
        """Where the reader's local copy stands (:meth:`LocalCopy.status
        <infinity_assets.index.local_copy.LocalCopy.status>`); ``{"copy": "off"}`` without one."""
        copy = self.staged.local_copy
        return copy.status() if copy is not None else {"copy": "off"}

    def bytes_per_page(self) -> dict[str, float]:
        """Bytes on disk per indexed document, by column, plus ``stages_1_2`` (what the first two stages read:
        ``fde`` and ``bits``) and ``total``."""
        sizes = column_bytes(self.dataset)
        per = {name: size / self.rows for name, size in sizes.items()}
        per["stages_1_2"] = per.get("fde", 0.0) + per.get("bits", 0.0)
        per["total"] = sum(sizes.values()) / self.rows
        return per


def _io_bytes(dataset: Any) -> int | None:
    """Bytes read by ``dataset`` since the last call (None where Lance does not count them)."""
    try:
        return int(dataset.io_stats_incremental().read_bytes)
    except AttributeError:
        return None


def search_text(store: DocumentStore, client: Any, text: str, modality: str = "text", k: int = 5, *,
                exact: bool = False, snippets: bool = True, settings: SearchSettings | None = None,
                reader: IndexReader | None = None) -> list[Hit]:
    """Embed ``text`` with ``client`` (``InfinityEmbeddings.embed_query``) and search the ``modality`` index.

    Checks the client's model and hidden_dim against the index's first (nothing is embedded on a mismatch).
    ``reader``: an open reader of that index to reuse (a service keeps one and refreshes it); None opens one.
    """
    return search_text_timed(store, client, text, modality, k, exact=exact, snippets=snippets,
                             settings=settings, reader=reader).hits


def search_text_timed(store: DocumentStore, client: Any, text: str, modality: str = "text", k: int = 5, *,
                      exact: bool = False, snippets: bool = True, settings: SearchSettings | None = None,
                      reader: IndexReader | None = None) -> SearchResult:
    """:func:`search_text` with the stages' timings; ``timings["embed"]`` is the query's embedding."""
    reader = reader or IndexReader(store, modality)
    reader.check_settings(client.model_name, client.hidden_dim)
    started = time.perf_counter()
    query = client.embed_query(text)
    embed = time.perf_counter() - started
    result = reader.search_staged(query, k, exact=exact, settings=settings)
    result.timings["embed"] = embed
    if snippets:
        add_snippets(store, modality, result.hits)
    return result
