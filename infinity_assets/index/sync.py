"""Exact incremental sync of an index table with the artifacts, under the index's writer lock.

Sync (:func:`sync_index`) makes the table equal to the artifacts: a row is identified by ``(partition,
doc_id)`` and its version is ``(fingerprint, embedded_at)`` (a re-embedded document gets a new
``embedded_at``; a reused one keeps it). One ``merge_insert`` per sync upserts the new and changed rows and
deletes the rows of documents or batches no longer in any artifact (``when_not_matched_by_source_delete``):
one commit, so a search sees the index before or after a sync, never half of one. Unchanged rows are not
touched; running it again writes nothing. The compact columns of the search stages are computed here, from
the artifacts' vectors (:mod:`infinity_assets.index.rows`). The first build, and a rebuild for a new model,
hidden_dim or :class:`~infinity_assets.index.schema.EncodingSettings`, is one ``create_table(mode="overwrite")``
commit streaming every row. Rows are encoded with the table's background
(:mod:`infinity_assets.index.background`), learned by a rebuild from a sample of the artifacts once they hold
``background_pages`` pages: the sync that first reaches that size, or finds the background's file gone,
rebuilds the table. A table written before a search column existed (``pooled``) gets it computed from its own
``embedding`` column (:func:`add_missing_columns`: one commit, no artifact read, no row rewritten). Artifacts
made with another model or hidden_dim than the index's are not indexed (reported; their rows are removed)
until they are re-embedded. Everything happens under the
:class:`~infinity_assets.index.lock.WriterLock` of the index: one writer at a time, by construction.

Maintenance after a sync that wrote (:func:`~infinity_assets.index.compaction.compact`): the small fragments
syncs leave are merged once there are enough of them, a fragment is rewritten without its deleted rows once
they are a tenth of it (a large one is never rewritten for its size alone), and versions older than
``cleanup_older_than`` are removed. Then the first stage's IVF beside the table (:mod:`infinity_assets.index.ivf`) is
brought to the committed version: unchanged rows keep their list, new and changed rows are assigned, deleted
rows leave (a sync killed before this leaves a version without an IVF, which searches by a flat scan; the
next sync writes it).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infinity_assets import artifacts
from infinity_assets.index import background, ivf
from infinity_assets.index.background import Background
from infinity_assets.index.compaction import compact
from infinity_assets.index.lock import WriterLock
from infinity_assets.index.rows import encode_rows, pooled_column, pooled_tokens, unit_vectors, vectors_keys
from infinity_assets.index.schema import (
    INDEX_DIR,
    KEY_COLUMNS,
    VERSION_COLUMNS,
    EncodingSettings,
    create_table,
    index_schema,
    open_table,
    table_background,
    table_encoding,
    table_settings,
    table_uri,
)
from infinity_assets.storage.documents import DocumentStore, is_storage_failure

#: Old table versions are removed once older than this (a search still reading one finishes well before).
DEFAULT_CLEANUP_OLDER_THAN = timedelta(hours=1)


@dataclass
class SyncReport:
    """What one sync of an index table did."""

    modality: str
    uri: str
    model: str = ""
    hidden_dim: int = 0
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    partitions: int = 0
    partitions_changed: list[str] = field(default_factory=list)
    partitions_removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rebuilt: bool = False
    added_columns: list[str] = field(default_factory=list)  # computed for every row of an older table
    version: int = 0
    encoding: EncodingSettings = field(default_factory=EncodingSettings)
    compaction: dict[str, int] = field(default_factory=dict)  # what maintenance did (compaction.compact)
    first_stage: dict[str, Any] = field(default_factory=dict)  # what the IVF update did (ivf.update)
    background: dict[str, int] = field(default_factory=dict)  # the table's background clusters (background.py)
    lock_wait_seconds: float = 0.0
    lock_held: tuple[float, float] = (0.0, 0.0)  # wall-clock interval the writer lock was held
    seconds: float = 0.0

    @property
    def wrote(self) -> bool:
        """True if the sync changed the table."""
        return bool(self.inserted or self.updated or self.deleted or self.rebuilt or self.added_columns)


@dataclass
class ArtifactRows:
    """The scalar columns of one artifact (no vectors) and its file metadata."""

    path: str
    partition: str
    metadata: dict[str, str]
    hidden_dim: int
    rows: pa.Table  # doc_id, fingerprint, embedded_at


def sync_index(
    store: DocumentStore,
    modality: str,
    *,
    model: str | None = None,
    hidden_dim: int | None = None,
    encoding: EncodingSettings | None = None,
    cleanup_older_than: timedelta = DEFAULT_CLEANUP_OLDER_THAN,
    lock_timeout: float = 600.0,
) -> SyncReport:
    """Make the index table of ``modality`` equal to the current artifacts (see the module docstring).

    ``model`` / ``hidden_dim`` are the embedding settings the index is for (the Infinity resource's; None:
    those of the existing table, else of the artifacts); ``encoding`` the compact columns' settings (None: the
    defaults; the environment's ``INFINITY_ASSETS_INDEX_*`` are read by :meth:`EncodingSettings.from_env`, at the
    caller's edge). A table built for other settings is rebuilt.
    """
    encoding = encoding or EncodingSettings()
    started = time.monotonic()
    report = SyncReport(modality=modality, uri=table_uri(store, modality))
    with WriterLock(store.fs, _fs_path(store), is_s3=store.is_s3, timeout=lock_timeout) as lock:
        report.lock_wait_seconds = lock.waited
        table = open_table(store, modality)
        table_settings_before = table_settings(table) if table is not None else None
        found, unreadable = scan_artifacts(store, modality)
        for path, error in unreadable.items():
            report.skipped.append((path.rsplit("/", 1)[-1], f"artifact {store.uri(path)} cannot be read ({error}); "
                                   "its indexed rows are kept until it is re-embedded"))
        model, hidden_dim = _target_settings(model, hidden_dim, table, found)
        report.model, report.hidden_dim, report.encoding = model, hidden_dim, encoding
        usable: list[ArtifactRows] = []
        for artifact in found:
            reason = _unusable(artifact, model, hidden_dim)
            if reason:
                report.skipped.append((artifact.partition, reason))
            else:
                usable.append(artifact)
        report.partitions = len(usable)
        if table is None and not usable:
            report.seconds = time.monotonic() - started
            return report  # nothing to index yet: no table (search says so)
        rebuild = (table is None or table_settings(table) != (model, hidden_dim)
                   or not encoding.same_rows(table_encoding(table)))
        sample: dict[tuple, np.ndarray] = {}  # the pages the background is learned from, pooled once
        found_background, relearned = _background_of(store, modality, None if rebuild else table, usable,
                                                     encoding, sample)
        rebuild = rebuild or relearned
        schema = index_schema(hidden_dim, model, modality, encoding,
                              found_background.name if found_background else "")
        lock.check()
        if rebuild:
            # One commit holding every row: readers see the previous table (or none) until it is complete.
            plan = _plan(usable, _empty_versions())
            rows = _stream(store, usable, plan, schema, encoding, found_background, sample)
            table = create_table(store, modality, rows, schema)
            background.prune(store, modality, keep=table_background(table))
            report.rebuilt = table_settings_before is not None
            report.inserted = sum(len(ids) for ids in plan.new.values())
        else:
            report.added_columns = add_missing_columns(table, schema, encoding)
            indexed = _indexed_versions(table)
            kept = {p for p in set(indexed.column("partition").to_pylist())
                    if store.artifact_path(modality, p) in unreadable}
            plan = _plan(usable, indexed, kept)
            deletions = _delete_predicate(plan)
            if plan.writes or deletions:
                # One merge_insert: upserts and deletions become one commit, so a search never sees half a sync.
                merge = table.merge_insert(KEY_COLUMNS).when_matched_update_all().when_not_matched_insert_all()
                if deletions:
                    merge = merge.when_not_matched_by_source_delete(deletions)
                result = merge.execute(_stream(store, usable, plan, schema, encoding, found_background))
                report.inserted, report.updated = result.num_inserted_rows, result.num_updated_rows
                report.deleted = result.num_deleted_rows
        report.background = background.summary(found_background)
        report.unchanged = plan.unchanged
        report.partitions_changed = sorted(plan.changed_partitions)
        report.partitions_removed = sorted(plan.removed_partitions)
        report.rows = table.count_rows()
        if report.wrote:
            lock.check()
            report.compaction = compact(table, cleanup_older_than)
        report.version = table.version
        lock.check()
        report.first_stage = ivf.update(store, modality, table, encoding)
    report.lock_held = lock.held
    report.seconds = time.monotonic() - started
    return report


#: Rows per batch when a column is added to an existing table (~70 MB of float16 ColPali pages read at once).
ADD_COLUMN_BATCH_ROWS = 256


def add_missing_columns(table: Any, schema: pa.Schema, encoding: EncodingSettings) -> list[str]:
    """Add to ``table`` the columns of ``schema`` it lacks (only ``pooled`` can be: the columns before it were
    there from the start), computed from each row's ``embedding``, in one commit; the names added."""
    missing = [f for f in schema if f.name not in table.schema.names]
    if not missing:
        return []
    if [f.name for f in missing] != ["pooled"]:
        raise ValueError(f"index table {table.name!r} lacks columns {[f.name for f in missing]}: rebuild it "
                         "(delete the table; the next sync writes every row)")
    import lance

    @lance.batch_udf(output_schema=pa.schema(missing))
    def pooled(batch: pa.RecordBatch) -> pa.RecordBatch:
        column = pooled_column(batch.column("embedding"), encoding)
        return pa.RecordBatch.from_arrays([column], schema=pa.schema(missing))

    table.to_lance().add_columns(pooled, read_columns=["embedding"], batch_size=ADD_COLUMN_BATCH_ROWS)
    table.checkout_latest()
    return ["pooled"]


def _fs_path(store: DocumentStore) -> str:
    return store.path(INDEX_DIR)


def scan_artifacts(store: DocumentStore, modality: str) -> tuple[list[ArtifactRows], dict[str, str]]:
    """The scalar columns of every artifact of ``modality`` (footers and three small columns; no vectors), and
    ``{path: reason}`` of the artifacts that cannot be read (corrupt, not an artifact). A store that fails
    (credentials, endpoint) raises."""
    base = store.path(f"embeddings/{modality}")
    paths = sorted(store.fs.glob(f"{base}/*.parquet"))
    unreadable: dict[str, str] = {}

    def read(path: str) -> ArtifactRows | None:
        try:
            with store.fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                metadata = artifacts.artifact_metadata(parquet)
                rows = parquet.read(columns=["doc_id", *VERSION_COLUMNS])
                hidden_dim = parquet.schema_arrow.field("embedding").type.value_type.list_size
        except FileNotFoundError:
            return None  # deleted since the listing: the batch is gone
        except Exception as exc:  # noqa: BLE001 -- one bad artifact must not stop the others
            if is_storage_failure(exc) and store.is_s3:
                raise store.store_error(exc, path) from exc
            unreadable[path] = f"{type(exc).__name__}: {exc}"
            return None
        partition = metadata.get("partition") or path.rsplit("/", 1)[-1].removesuffix(".parquet")
        return ArtifactRows(path, partition, metadata, hidden_dim, rows)

    with ThreadPoolExecutor(8) as pool:
        found = [a for a in pool.map(read, paths) if a is not None]
    return found, unreadable


def _target_settings(model: str | None, hidden_dim: int | None, table: Any | None,
                     found: list[ArtifactRows]) -> tuple[str, int]:
    if model is None and table is not None:
        model = table_settings(table)[0]
    if model is None and found:
        model = max({a.metadata.get("model", "") for a in found},
                    key=lambda m: sum(a.metadata.get("model") == m for a in found))
    if hidden_dim is None:
        dims = [a.hidden_dim for a in found if a.metadata.get("model") == model]
        hidden_dim = max(set(dims), key=dims.count) if dims else (table_settings(table)[1] if table else 0)
    return model or "", hidden_dim


def _unusable(artifact: ArtifactRows, model: str, hidden_dim: int) -> str | None:
    if artifact.metadata.get("model") != model or artifact.hidden_dim != hidden_dim:
        return (f"artifact {artifact.path} was made with model {artifact.metadata.get('model')!r} "
                f"(hidden_dim {artifact.hidden_dim}); the index is for {model!r} ({hidden_dim}): re-embed the "
                "partition with the configured model")
    return None


def _empty_versions() -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in (*KEY_COLUMNS, "fingerprint")}).append_column(
        "embedded_at", pa.array([], pa.timestamp("us", tz="UTC")))


def _indexed_versions(table: Any) -> pa.Table:
    """``partition, doc_id, fingerprint, embedded_at`` of every indexed row (a scan of scalar columns)."""
    return table.to_lance().to_table(columns=[*KEY_COLUMNS, *VERSION_COLUMNS])


@dataclass
class _Plan:
    new: dict[str, set[str]] = field(default_factory=dict)        # partition -> doc_ids to insert
    changed: dict[str, set[str]] = field(default_factory=dict)    # partition -> doc_ids to upsert
    removed_docs: dict[str, list[str]] = field(default_factory=dict)
    removed_partitions: dict[str, int] = field(default_factory=dict)  # partition -> its indexed rows
    unchanged: int = 0

    @property
    def writes(self) -> bool:
        """True if some rows are to be inserted or updated."""
        return any(self.new.values()) or any(self.changed.values())

    @property
    def changed_partitions(self) -> set[str]:
        return {p for p, ids in [*self.new.items(), *self.changed.items(), *self.removed_docs.items()] if ids}


def _plan(usable: list[ArtifactRows], indexed: pa.Table, kept: AbstractSet[str] = frozenset()) -> _Plan:
    """What to write: compare each artifact's (doc_id -> version) with the index's rows of its partition.

    Rows of the ``kept`` partitions (whose artifact cannot be read now) are left as they are."""
    plan = _Plan()
    by_partition: dict[str, dict[str, tuple[str, Any]]] = {}
    columns = [indexed.column(c).to_pylist() for c in (*KEY_COLUMNS, *VERSION_COLUMNS)]
    for partition, doc_id, fingerprint, embedded_at in zip(*columns):
        by_partition.setdefault(partition, {})[doc_id] = (fingerprint, embedded_at)
    present = set()
    for artifact in usable:
        present.add(artifact.partition)
        old = by_partition.get(artifact.partition, {})
        ids = artifact.rows.column("doc_id").to_pylist()
        versions = zip(artifact.rows.column("fingerprint").to_pylist(),
                       artifact.rows.column("embedded_at").to_pylist())
        new, changed = set(), set()
        for doc_id, version in zip(ids, versions):
            before = old.get(doc_id)
            if before is None:
                new.add(doc_id)
            elif before != version:
                changed.add(doc_id)
            else:
                plan.unchanged += 1
        plan.new[artifact.partition], plan.changed[artifact.partition] = new, changed
        plan.removed_docs[artifact.partition] = sorted(set(old) - set(ids))
    plan.removed_partitions = {p: len(rows) for p, rows in by_partition.items() if p not in present | kept}
    return plan


def _stream(store: DocumentStore, usable: list[ArtifactRows], plan: _Plan, schema: pa.Schema,
            encoding: EncodingSettings, found: Background | None,
            pooled: dict[tuple, np.ndarray] | None = None) -> pa.RecordBatchReader:
    """The rows to write (new and changed), read from the artifacts one row group at a time, encoded with
    the table's background ``found`` (``pooled``: rows pooled already, :func:`encode_rows`)."""
    def batches() -> Iterator[pa.RecordBatch]:
        for artifact in usable:
            doc_ids = plan.new.get(artifact.partition, set()) | plan.changed.get(artifact.partition, set())
            if doc_ids:
                for group in artifacts.iter_rows(store.fs, artifact.path, doc_ids):
                    yield from encode_rows(group, artifact.partition, schema, encoding, found,
                                           pooled).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _background_of(store: DocumentStore, modality: str, table: Any | None, usable: list[ArtifactRows],
                   encoding: EncodingSettings,
                   sample: dict[tuple, np.ndarray]) -> tuple[Background | None, bool]:
    """The background this sync encodes rows with, and whether the table is rebuilt for it: ``table`` (None:
    one rebuilt anyway) keeps the background it names; one without, that now holds ``background_pages``
    pages, or whose background file is gone, is rebuilt with a background learned now (``sample`` receives
    the pages it is learned from, pooled: :func:`learn_background`)."""
    pages = sum(artifact.rows.num_rows for artifact in usable)
    learns = encoding.background_share < 1.0 and pages >= encoding.background_pages
    name = table_background(table) if table is not None else ""
    if name:
        try:
            return background.load(store, modality, name), False
        except FileNotFoundError:
            pass  # its file is gone: learned again
    elif table is not None and not learns:
        return None, False
    return (learn_background(store, modality, _sample(store, usable, encoding.fde_seed), encoding, sample)
            if learns else None), True


def _sample(store: DocumentStore, usable: list[ArtifactRows], seed: int) -> Iterator[pa.Table]:
    """Row groups of up to :data:`background.TRAIN_PAGES` pages, from artifacts taken in a seeded random
    order."""
    pages = 0
    for index in np.random.default_rng(seed).permutation(len(usable)):
        artifact = usable[index]
        doc_ids = set(sorted(artifact.rows.column("doc_id").to_pylist())[:background.TRAIN_PAGES - pages])
        yield from artifacts.iter_rows(store.fs, artifact.path, doc_ids)
        pages += len(doc_ids)
        if pages >= background.TRAIN_PAGES:
            return


def learn_background(store: DocumentStore, modality: str, groups: Iterable[pa.Table],
                     encoding: EncodingSettings, pooled: dict[tuple, np.ndarray] | None = None) -> Background:
    """The background (:func:`background.learn`) of the pages in ``groups`` (artifact-shaped rows: their
    ``embedding`` column, pooled as the index pools it), saved beside the table of ``modality``. ``pooled``
    (if given) receives each page's int8 pooled rows by :func:`~infinity_assets.index.rows.vectors_keys`,
    for the encoding to use rather than pool those pages again."""
    pieces = []
    for group in groups:
        rows, offsets = pooled_tokens(*unit_vectors(group.column("embedding")), encoding)
        pieces.append((rows, offsets))
        if pooled is not None:
            pooled.update(zip(vectors_keys(group), np.split(rows, offsets[1:-1])))
    lengths = np.concatenate([np.diff(offsets) for _, offsets in pieces])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    learned = background.learn(np.concatenate([rows for rows, _ in pieces]), offsets, encoding.background_share,
                               encoding.fde_seed)
    background.save(store, modality, learned)
    return learned


def _delete_predicate(plan: _Plan) -> str | None:
    """A SQL filter matching the indexed rows no artifact has any more (None if there are none)."""
    clauses = []
    if plan.removed_partitions:
        clauses.append(f"partition IN ({_sql_list(sorted(plan.removed_partitions))})")
    clauses += [f"(partition = {_sql_str(partition)} AND doc_id IN ({_sql_list(doc_ids)}))"
                for partition, doc_ids in sorted(plan.removed_docs.items()) if doc_ids]
    return " OR ".join(clauses) or None


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(_sql_str(v) for v in values)
