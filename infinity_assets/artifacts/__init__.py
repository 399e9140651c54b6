"""Parquet multi-vector artifacts: the schema, a streaming writer that publishes atomically, a zero-copy reader.

One artifact per partition and modality, one row per document::

    doc_id string, source_uri string, fingerprint string, n_vectors int32,
    embedding list<fixed_size_list<float32, hidden_dim>>, embedded_at timestamp(us, UTC),
    page int32 (nullable: the page number of a PDF page, null otherwise), page_text string (nullable: its text layer)

File key-value metadata (keys prefixed ``infinity_assets.``): model, hidden_dim, modality, encoding, partition,
package version, publish_id, data_version, failed. Documents that failed are listed in a JSON sidecar
``<artifact>.failures.json`` carrying the same publish_id.

Publishing order: the sidecar first, then the artifact, each atomically. A crash between the two leaves a
sidecar whose publish_id does not match the artifact's, which :func:`check_completeness` reports.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

META_PREFIX = "infinity_assets."
STAGING_DIR = ".staging"
SCALAR_COLUMNS = ["doc_id", "source_uri", "fingerprint", "n_vectors", "embedded_at", "page"]
#: Columns added with PDF pages; artifacts written before them are still read and checked.
PAGE_COLUMNS = ("page", "page_text")


def artifact_schema(hidden_dim: int, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema of an artifact with ``hidden_dim``-wide vectors and the given file metadata."""
    schema = pa.schema([
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("n_vectors", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.list_(pa.float32(), hidden_dim)), nullable=False),
        pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("page", pa.int32(), nullable=True),
        pa.field("page_text", pa.string(), nullable=True),
    ])
    return schema.with_metadata({f"{META_PREFIX}{k}": str(v) for k, v in (metadata or {}).items()})


def failures_path(artifact_path: str) -> str:
    """Where the failures sidecar of an artifact lives."""
    return artifact_path.removesuffix(".parquet") + ".failures.json"


def fingerprint_digest(fingerprints: Mapping[str, str]) -> str:
    """A stable digest of ``{source key: fingerprint}``: changes when any source is added, changed or removed."""
    digest = hashlib.sha256()
    for key in sorted(fingerprints):
        digest.update(f"{key}\t{fingerprints[key]}\n".encode())
    return digest.hexdigest()[:24]


def data_version(fingerprints: Mapping[str, str], model: str, hidden_dim: int | None) -> str:
    """The data version of a partition's artifact: its sources' fingerprints and the embedding settings."""
    return hashlib.sha256(f"{model}\n{hidden_dim}\n{fingerprint_digest(fingerprints)}".encode()).hexdigest()[:24]


#: Size of one part of the multipart upload of an artifact to S3 (S3's minimum is 5 MiB).
S3_PART_BYTES = 8 << 20


#: The Parquet leaf column of the vectors' floats.
VECTOR_VALUES = "embedding.list.element.list.element"
#: Peak memory of the writer, in multiples of a row group's vector bytes: the row group being written (its
#: contiguous copy, Parquet's repetition/definition levels (two int16 per float) and pages: measured 3.7 x) and
#: the next one, buffered and copied.
WRITE_AMPLIFICATION = 6


#: How ``pq.ParquetWriter`` encodes an artifact. Vectors: no dictionary (floats hardly repeat; trying costs
#: time and memory), no min/max statistics (useless for vectors, 7 % of the write), zstd with byte stream
#: split. Per ColPali page (1,031 x 128; ``python -m benchmarks.artifact_encoding``, CPU medians of 2 runs)
#: this writes 446 KB in 4.5-4.9 ms (float32) and 182 KB in 3.9-4.3 ms (bf16-derived floats); nothing is
#: cheaper at equal size. lz4, snappy or no compression save 4-29 % CPU on float32 for 10-20 % more bytes, and
#: on bf16 cost 24 %-190 % more bytes for at best 5-22 % less CPU. Without split zstd is 12 % cheaper but 10 %
#: bigger on float32, 1.5 x slower and 39 % bigger on bf16. zstd's default level is 1 (same bytes). Data pages
#: of one document, the page index: no consistent saving. 16 MiB row groups (embed_partition's): 10-19 % less
#: write CPU, 5-30 % more read CPU, so the writer's 64 MiB default stays. 40-55 % of encoding the vectors is
#: Parquet's repetition/definition levels of list<fixed_size_list> (2.0-2.7 ms/page flat against 4.2-4.4
#: nested), which the schema, a contract, imposes.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["doc_id", "source_uri", "fingerprint"],
    "write_statistics": SCALAR_COLUMNS,
    "use_byte_stream_split": [VECTOR_VALUES],
}


#: Row groups are encoded and written here (pyarrow releases the GIL), one at a time per writer, while the
#: next one fills: a writer's caller keeps receiving embeddings instead of waiting for Parquet.
_WRITE_THREADS = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="artifact-write")


#: One row as the writer buffers it: doc_id, source_uri, fingerprint, vectors, embedded_at, page, page_text.
Row = tuple[str, str, str, np.ndarray, datetime, "int | None", "str | None"]


class ArtifactError(Exception):
    """An embedding cannot go into an artifact (wrong shape, NaN, no vectors); names the document."""


@dataclass(frozen=True)
class Failure:
    """A document that could not be embedded, and why."""

    doc_id: str
    source_uri: str
    error: str


class ArtifactWriter:
    """Streams rows into an artifact in row groups and publishes it atomically when the block exits cleanly.

    Memory is bounded by row groups (``row_group_size`` documents or ``row_group_bytes`` of vectors, whichever
    comes first), one written in the background while the next fills: about ``WRITE_AMPLIFICATION`` x
    ``row_group_bytes`` at the peak. ``parquet_options`` override :data:`PARQUET_OPTIONS` (benchmarks compare
    encodings with it). On a local filesystem the file is written under ``<dir>/.staging/`` and
    moved into place with ``os.replace``; on S3 it is a multipart upload that completes only on success and is
    aborted otherwise.
    If the block raises, nothing is published and the previous artifact stays as it was.

    Example::

        with ArtifactWriter(fs, "root/embeddings/text/b1.parquet", hidden_dim=128, metadata={...}) as writer:
            writer.write("a.txt", "s3://bucket/raw/text/b1/a.txt", "etag", vectors)
            writer.add_failure(Failure("bad.txt", "...", "invalid UTF-8 at byte 3"))
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, hidden_dim: int,
                 metadata: Mapping[str, Any] | None = None, row_group_size: int = 256,
                 row_group_bytes: int = 64 << 20, parquet_options: Mapping[str, Any] | None = None) -> None:
        self.fs, self.path, self.hidden_dim = fs, path, hidden_dim
        self.parquet_options = {**PARQUET_OPTIONS, **(parquet_options or {})}
        self.publish_id = uuid.uuid4().hex
        self.metadata = {**(metadata or {}), "hidden_dim": hidden_dim, "publish_id": self.publish_id}
        self.schema = artifact_schema(hidden_dim, self.metadata)
        self.row_group_size, self.row_group_bytes = row_group_size, row_group_bytes
        self.rows = 0
        self.vectors = 0
        self.failures: list[Failure] = []
        self._closing_metadata: dict[str, str] = {}
        self._local = _is_local(fs)
        self._buffer: list[Row] = []
        self._buffered_bytes = 0
        self._pending_write: concurrent.futures.Future[None] | None = None
        self._sink: Any = None
        self._staging_path: str | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ArtifactWriter:
        if self._local:
            staging = posixpath.join(posixpath.dirname(self.path), STAGING_DIR)
            os.makedirs(staging, exist_ok=True)
            _remove_stale_staging(staging, posixpath.basename(self.path))
            self._staging_path = posixpath.join(staging, f"{posixpath.basename(self.path)}.{self.publish_id}.tmp")
            self._sink = open(self._staging_path, "wb")
        else:
            # Parts of S3_PART_BYTES are uploaded as row groups are written (s3fs would buffer 50 MB).
            self._sink = self.fs.open(self.path, "wb", block_size=S3_PART_BYTES)
        self._writer = pq.ParquetWriter(self._sink, self.schema, **self.parquet_options)
        return self

    def write(self, doc_id: str, source_uri: str, fingerprint: str, embedding: np.ndarray,
              embedded_at: datetime | None = None, page: int | None = None, page_text: str | None = None) -> None:
        """Add one document's multi-vector (``page``/``page_text`` for a PDF page); raises
        :class:`ArtifactError` naming the document if it is unusable."""
        embedding = self._check(doc_id, embedding)
        self._buffer.append((doc_id, source_uri, fingerprint, embedding, embedded_at or _now(), page, page_text))
        self._buffered_bytes += embedding.nbytes
        self.rows += 1
        self.vectors += len(embedding)
        if len(self._buffer) >= self.row_group_size or self._buffered_bytes >= self.row_group_bytes:
            self.flush()

    def add_metadata(self, key: str, value: object) -> None:
        """Add a file metadata entry known only at the end (written when the artifact is closed)."""
        self._closing_metadata[f"{META_PREFIX}{key}"] = str(value)

    def add_failure(self, failure: Failure) -> None:
        """Record a document that could not be embedded (it goes into the failures sidecar)."""
        self.failures.append(failure)

    def flush(self) -> None:
        """Write the buffered rows as one row group (in the background; an error is raised by the next flush or
        on exit)."""
        if not self._buffer:
            return
        assert self._writer is not None
        table = _rows_table(self._buffer, self.schema)
        self._buffer, self._buffered_bytes = [], 0
        self._wait_for_write()
        self._pending_write = _WRITE_THREADS.submit(self._writer.write_table, table)

    def _wait_for_write(self) -> None:
        pending, self._pending_write = self._pending_write, None
        if pending is not None:
            pending.result()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self.flush()
            self._wait_for_write()
            assert self._writer is not None
            self._writer.add_key_value_metadata(
                {**self._closing_metadata, f"{META_PREFIX}failed": str(len(self.failures))})
            self._writer.close()
            self._write_sidecar()
        except BaseException:
            self._abort()
            raise
        self._publish()

    @property
    def bytes_written(self) -> int:
        """Size of the published artifact in bytes."""
        return int(self.fs.size(self.path))

    def _check(self, doc_id: str, embedding: np.ndarray) -> np.ndarray:
        if not isinstance(embedding, np.ndarray) or embedding.ndim != 2 or embedding.shape[1] != self.hidden_dim:
            shape = getattr(embedding, "shape", type(embedding).__name__)
            raise ArtifactError(f"document {doc_id!r}: embedding has shape {shape}, expected (n, {self.hidden_dim})")
        if embedding.shape[0] == 0:
            raise ArtifactError(f"document {doc_id!r}: the server returned no vectors (only padding)")
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        if not np.isfinite(embedding).all():
            raise ArtifactError(f"document {doc_id!r}: the server returned NaN or infinite values")
        return embedding

    def _write_sidecar(self) -> None:
        sidecar = {"publish_id": self.publish_id, "artifact": posixpath.basename(self.path),
                   "failures": [f.__dict__ for f in self.failures]}
        _atomic_put(self.fs, failures_path(self.path), json.dumps(sidecar, indent=1).encode(), self._local)

    def _publish(self) -> None:
        if self._local:
            self._sink.flush()
            os.fsync(self._sink.fileno())
            self._sink.close()
            assert self._staging_path is not None
            os.replace(self._staging_path, self.path)
        else:
            self._sink.close()  # completes the multipart upload: the object appears now, whole

    def _abort(self) -> None:
        if self._pending_write is not None:
            concurrent.futures.wait([self._pending_write])
            self._pending_write = None
        if not self._local and self._sink is not None:
            _discard_upload(self._sink, self.path)  # first: nothing written after it may complete the upload
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        if self._local:
            if self._sink is not None:
                self._sink.close()
            if self._staging_path and os.path.exists(self._staging_path):
                os.remove(self._staging_path)


def _discard_upload(sink: Any, path: str) -> None:
    """Abort an S3 multipart upload so that nothing can complete it later.

    An s3fs file completes its upload in ``close()``, which its ``__del__`` calls: a file left open after a
    failure would publish a partial object whenever it is garbage-collected. Marking it closed first rules
    that out even when the abort request itself fails (server unreachable); the incomplete upload then stays
    invisible to readers until the bucket's lifecycle rule for incomplete uploads removes it.
    """
    sink.closed = True
    try:
        sink.discard()
    except Exception as exc:  # noqa: BLE001 -- the upload is already unreachable for close(); say so and go on
        logger.warning("could not abort the incomplete upload of %s (%s); it stays invisible to readers",
                       path, exc)


def _rows_table(rows: list[Row], schema: pa.Schema) -> pa.Table:
    hidden_dim = schema.field("embedding").type.value_type.list_size
    counts = np.fromiter((len(r[3]) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    flat = np.concatenate([r[3] for r in rows]).reshape(-1)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), hidden_dim)
    embedding = pa.ListArray.from_arrays(pa.array(offsets), vectors)
    columns = [
        pa.array([r[0] for r in rows], pa.string()),
        pa.array([r[1] for r in rows], pa.string()),
        pa.array([r[2] for r in rows], pa.string()),
        pa.array(counts),
        embedding.cast(schema.field("embedding").type),
        pa.array([r[4] for r in rows], pa.timestamp("us", tz="UTC")),
        pa.array([r[5] for r in rows], pa.int32()),
        pa.array([r[6] for r in rows], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())


def _atomic_put(fs: fsspec.AbstractFileSystem, path: str, data: bytes, local: bool) -> None:
    if local:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)  # a single PUT: the object appears whole or not at all


def _remove_stale_staging(staging: str, name: str) -> None:
    # Only one run writes a partition at a time (the asset's pool); leftovers are from a killed writer.
    for entry in os.listdir(staging):
        if entry.startswith(f"{name}.") and entry.endswith(".tmp"):
            try:
                os.remove(os.path.join(staging, entry))
            except FileNotFoundError:
                pass


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Artifact:
    """An artifact in memory: scalar columns, file metadata, and all vectors as one zero-copy numpy view.

    ``vectors`` is ``(total_vectors, hidden_dim)`` float32 over the Arrow buffer (no copy); document ``i`` owns
    rows ``offsets[i]:offsets[i + 1]``; :meth:`vectors_of` returns that view.
    """

    metadata: dict[str, str]
    hidden_dim: int
    doc_ids: list[str]
    fingerprints: list[str]
    source_uris: list[str]
    n_vectors: np.ndarray
    vectors: np.ndarray
    offsets: np.ndarray
    table: pa.Table

    def __len__(self) -> int:
        return len(self.doc_ids)

    def vectors_of(self, index: int) -> np.ndarray:
        """The ``(n_vectors, hidden_dim)`` view of document ``index``."""
        return self.vectors[self.offsets[index]:self.offsets[index + 1]]


def artifact_metadata(parquet: pq.ParquetFile) -> dict[str, str]:
    """The ``infinity_assets.*`` key-value metadata of an artifact file, without the prefix."""
    raw = parquet.metadata.metadata or {}
    return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items() if k.decode().startswith(META_PREFIX)}


def read_artifact(fs: fsspec.AbstractFileSystem, path: str) -> Artifact:
    """Read a whole artifact; the vectors are a zero-copy view of the Arrow buffers."""
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        metadata = artifact_metadata(parquet)
        table = parquet.read()
    hidden_dim = table.schema.field("embedding").type.value_type.list_size
    embedding = table.column("embedding").combine_chunks()
    offsets = embedding.offsets.to_numpy().astype(np.int64)
    values = embedding.flatten().flatten()  # respects slicing; a view, not a copy
    vectors = values.to_numpy(zero_copy_only=True).reshape(-1, hidden_dim)
    return Artifact(
        metadata=metadata, hidden_dim=hidden_dim,
        doc_ids=table.column("doc_id").to_pylist(), fingerprints=table.column("fingerprint").to_pylist(),
        source_uris=table.column("source_uri").to_pylist(),
        n_vectors=table.column("n_vectors").to_numpy(), vectors=vectors, offsets=offsets - offsets[0], table=table,
    )


def read_index(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """``(metadata, {doc_id: fingerprint})`` of an existing artifact, reading only two columns; None if absent."""
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        table = parquet.read(columns=["doc_id", "fingerprint"])
        metadata = artifact_metadata(parquet)
    return metadata, dict(zip(table.column("doc_id").to_pylist(), table.column("fingerprint").to_pylist()))


def iter_rows(fs: fsspec.AbstractFileSystem, path: str, doc_ids: set[str]) -> Iterator[pa.Table]:
    """Yield the rows of ``doc_ids`` one row group at a time (memory bounded by a row group)."""
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        for index in range(parquet.num_row_groups):
            group = parquet.read_row_group(index)
            keep = pc.is_in(group.column("doc_id"), value_set=pa.array(sorted(doc_ids), pa.string()))
            selected = group.filter(keep)
            if selected.num_rows:
                yield selected


def read_failures(fs: fsspec.AbstractFileSystem, artifact_path: str) -> dict[str, Any] | None:
    """The failures sidecar of an artifact (``publish_id``, ``failures``), or None if there is none."""
    path = failures_path(artifact_path)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


# ---------------------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class Verdict:
    """The outcome of one artifact check: passed or not, and a sentence saying what was found."""

    passed: bool
    description: str
    details: dict[str, Any] | None = None


def check_schema(fs: fsspec.AbstractFileSystem, path: str, hidden_dim: int | None) -> Verdict:
    """The artifact is readable Parquet with the expected columns and types (and ``hidden_dim``, if given)."""
    try:
        with fs.open(path, "rb") as handle:
            schema = pq.read_schema(handle)
    except FileNotFoundError:
        return Verdict(False, f"no artifact at {path}")
    except Exception as exc:
        return Verdict(False, f"{path} is not readable Parquet: {exc}")
    actual_dim = _hidden_dim_of(schema)
    expected = artifact_schema(actual_dim if actual_dim else 1).remove_metadata()
    before_pages = pa.schema([f for f in expected if f.name not in PAGE_COLUMNS])  # written before PDF pages
    if actual_dim is None or not any(schema.remove_metadata().equals(s) for s in (expected, before_pages)):
        return Verdict(False, f"{path} has schema {schema.remove_metadata()}, expected {expected}")
    if hidden_dim is not None and actual_dim != hidden_dim:
        return Verdict(False, f"{path} holds {actual_dim}-dimensional vectors; hidden_dim is configured as {hidden_dim}")
    return Verdict(True, f"readable, expected schema, hidden_dim {actual_dim}")


def check_vectors(artifact: Artifact) -> Verdict:
    """No NaN/Inf, at least one vector per row, and n_vectors matching the list lengths."""
    if not np.isfinite(artifact.vectors).all():
        bad = sorted({artifact.doc_ids[i] for i in _docs_of_rows(artifact, ~np.isfinite(artifact.vectors).all(axis=1))})
        return Verdict(False, f"{len(bad)} documents have NaN or infinite values", {"documents": bad[:20]})
    lengths = np.diff(artifact.offsets)
    empty = [artifact.doc_ids[i] for i in np.flatnonzero(lengths == 0)]
    if empty:
        return Verdict(False, f"{len(empty)} documents have no vectors", {"documents": empty[:20]})
    mismatched = [artifact.doc_ids[i] for i in np.flatnonzero(lengths != artifact.n_vectors)]
    if mismatched:
        return Verdict(False, f"{len(mismatched)} documents have n_vectors different from their vectors",
                       {"documents": mismatched[:20]})
    return Verdict(True, f"{len(artifact)} documents, {len(artifact.vectors)} finite vectors, none empty")


def check_completeness(artifact: Artifact, sidecar: dict[str, Any] | None, expected_sources: Iterable[str]) -> Verdict:
    """Every listed source is in the artifact or the failures of the same publish; no row of an unlisted source.

    Sources are compared by URI (a JSONL file is one source of many documents).
    """
    publish_id = artifact.metadata.get("publish_id")
    if sidecar is None or sidecar.get("publish_id") != publish_id:
        return Verdict(False, "the failures sidecar is missing or belongs to another publish of the artifact")
    failed = {f["source_uri"] for f in sidecar.get("failures", [])}
    present = set(artifact.source_uris)
    expected = set(expected_sources)
    missing = sorted(expected - present - failed)
    unexpected = sorted(present - expected)
    duplicates = len(artifact.doc_ids) - len(set(artifact.doc_ids))
    if missing or unexpected or duplicates:
        return Verdict(False, f"{len(missing)} sources missing, {len(unexpected)} unexpected, "
                              f"{duplicates} duplicated documents",
                       {"missing": missing[:20], "unexpected": unexpected[:20]})
    return Verdict(True, f"all {len(expected)} sources accounted for: {len(artifact)} documents embedded, "
                         f"{len(sidecar.get('failures', []))} failed")


def _hidden_dim_of(schema: pa.Schema) -> int | None:
    try:
        value_type = schema.field("embedding").type.value_type
        return value_type.list_size if pa.types.is_fixed_size_list(value_type) else None
    except (KeyError, AttributeError):
        return None


def _docs_of_rows(artifact: Artifact, row_mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(row_mask)
    return np.searchsorted(artifact.offsets, rows, side="right") - 1
