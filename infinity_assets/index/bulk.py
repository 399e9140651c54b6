"""Writing an index table straight from token-vector batches, without artifacts (benchmarks, tools).

At 100,000 ColPali pages the artifacts would be tens of GB; a benchmark that has the vectors (generated or
cached) writes the index rows directly, through the same row encoding as the sync
(:func:`~infinity_assets.index.rows.encode_rows`), so what it measures is what a synced index holds. A table
written this way is not tied to artifacts: the next :func:`~infinity_assets.index.sync.sync_index` of the
same store and modality makes it equal to the artifacts again (removing these rows).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from infinity_assets.index import background, ivf
from infinity_assets.index.background import Background
from infinity_assets.index.lock import WriterLock
from infinity_assets.index.rows import encode_rows, vectors_table
from infinity_assets.index.schema import (
    INDEX_DIR,
    EncodingSettings,
    create_table,
    index_schema,
    open_table,
    table_background,
    table_encoding,
    table_settings,
    table_uri,
    write_rows,
)
from infinity_assets.index.sync import SyncReport, add_missing_columns, learn_background
from infinity_assets.storage.documents import DocumentStore

#: One batch of pages: their doc_ids and token-vector arrays.
Batch = tuple[Sequence[str], Sequence[np.ndarray]]


def write_index(store: DocumentStore, modality: str,
                batches: Iterable[Batch], *, model: str, hidden_dim: int,
                encoding: EncodingSettings | None = None, partition: str = "vectors", append: bool = False,
                lock_timeout: float = 600.0) -> SyncReport:
    """Write ``(doc_ids, vectors)`` batches (each vector array ``(n_i, hidden_dim)``, float32 or float16) as
    index rows of ``partition``, in one commit, under the index's writer lock.

    ``append=False`` replaces the table (``create_table(mode="overwrite")``), its background learned from the
    first :data:`~infinity_assets.index.background.TRAIN_PAGES` pages when they are at least
    ``background_pages``; ``append=True`` adds the rows to the existing table, which must have the same model,
    hidden_dim and encoding (None: the defaults), encoded with its background.
    """
    started = time.monotonic()
    encoding = encoding or EncodingSettings()
    report = SyncReport(modality=modality, uri=table_uri(store, modality), model=model,
                        hidden_dim=hidden_dim, encoding=encoding)
    counted = [0]

    def checked() -> Iterator[Batch]:
        for doc_ids, vectors in batches:
            if any(v.ndim != 2 or v.shape[1] != hidden_dim for v in vectors):
                raise ValueError(f"write_index: a batch holds vectors that are not (n, {hidden_dim})")
            counted[0] += len(doc_ids)
            yield doc_ids, vectors

    def rows(pending: Iterable[Batch], schema: pa.Schema, found: Background | None) -> Iterator[pa.RecordBatch]:
        for doc_ids, vectors in pending:
            artifact_rows = vectors_table(doc_ids, vectors)
            yield from encode_rows(artifact_rows, partition, schema, encoding, found).to_batches()

    with WriterLock(store.fs, store.path(INDEX_DIR), is_s3=store.is_s3, timeout=lock_timeout) as lock:
        report.lock_wait_seconds = lock.waited
        table = open_table(store, modality) if append else None
        if table is not None:
            if table_settings(table) != (model, hidden_dim) or not encoding.same_rows(table_encoding(table)):
                raise ValueError(f"write_index(append=True): the {modality} index was built with other settings "
                                 f"({table_settings(table)}, {table_encoding(table)})")
            name = table_background(table)
            found = background.load(store, modality, name) if name else None
            schema = index_schema(hidden_dim, model, modality, encoding, name)
            lock.check()
            report.added_columns = add_missing_columns(table, schema, encoding)
            added = pa.RecordBatchReader.from_batches(schema, rows(checked(), schema, found))
            table = write_rows(store, modality, added, schema, "append")
        else:
            pending = checked()
            first = _first_pages(pending)
            found = None
            pages = sum(len(ids) for ids, _ in first)
            if encoding.background_share < 1.0 and pages >= encoding.background_pages:
                found = learn_background(store, modality, (vectors_table(ids, vectors) for ids, vectors in first),
                                         encoding)
            schema = index_schema(hidden_dim, model, modality, encoding, found.name if found else "")
            reader = pa.RecordBatchReader.from_batches(schema,
                                                       rows(itertools.chain(first, pending), schema, found))
            lock.check()
            table = create_table(store, modality, reader, schema)
            background.prune(store, modality, keep=table_background(table))
        report.background = background.summary(found)
        report.inserted = counted[0]
        report.rows = table.count_rows()
        report.version = table.version
        lock.check()
        report.first_stage = ivf.update(store, modality, table, encoding)
    report.lock_held = lock.held
    report.seconds = time.monotonic() - started
    return report


def _first_pages(batches: Iterator[Batch]) -> list[Batch]:
    """The first batches of ``batches`` that hold :data:`~infinity_assets.index.background.TRAIN_PAGES` pages
    (or all of them), taken from the iterator."""
    first, pages = [], 0
    for batch in batches:
        first.append(batch)
        pages += len(batch[0])
        if pages >= background.TRAIN_PAGES:
            break
    return first

