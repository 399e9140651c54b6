"""Writing an artifact: rows streamed into Parquet row groups, published atomically when complete.

Publishing order: the failures sidecar first, then the artifact, each atomically (``os.replace`` of a staged
file locally, a multipart upload that completes only on success on S3). A crash between the two leaves a
sidecar whose publish_id does not match the artifact's, which :func:`~.validation.check_completeness` reports.
Readers therefore see the old artifact or the complete new one, never a partial file.

Row groups are encoded and written on a small thread pool (pyarrow releases the GIL) while the next one fills,
so a writer's caller keeps receiving embeddings instead of waiting for Parquet.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infinity_assets.artifacts.schema import (
    DEFAULT_VECTOR_ENCODING,
    META_PREFIX,
    VECTOR_ENCODINGS,
    ArtifactError,
    Failure,
    artifact_schema,
    failures_path,
    all_finite,
    vector_dtype,
)
from infinity_assets.artifacts.schema import parquet_options as default_parquet_options

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
#: Size of one part of the multipart upload of an artifact to S3 (S3's minimum is 5 MiB).
S3_PART_BYTES = 8 << 20
#: Peak memory of the writer, in multiples of a row group's vector bytes: the row group being written (its
#: contiguous copy, Parquet's repetition/definition levels and pages) and the next one, buffered and copied.
WRITE_AMPLIFICATION = 6

_WRITE_THREADS = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="artifact-write")

#: One row as the writer buffers it: doc_id, source_uri, fingerprint, vectors, embedded_at, page, page_text.
Row = tuple[str, str, str, np.ndarray, datetime, "int | None", "str | None"]


class ArtifactWriter:
    """Streams rows into an artifact in row groups and publishes it atomically when the block exits cleanly.

    Memory is bounded by row groups (``row_group_size`` documents or ``row_group_bytes`` of vectors, whichever
    comes first), one written in the background while the next fills: about ``WRITE_AMPLIFICATION`` x
    ``row_group_bytes`` at the peak. ``vector_encoding`` (``float32`` or ``float16``, see :mod:`.schema`) is
    how the vectors are stored; it is recorded in the file metadata. ``parquet_options`` override
    :func:`~.schema.parquet_options` (benchmarks compare encodings with it). On a local filesystem the file is
    written under ``<dir>/.staging/`` and moved into place with ``os.replace``; on S3 it is a multipart upload
    that completes only on success and is aborted otherwise. If the block raises, nothing is published and the
    previous artifact stays as it was.

    Example::

        with ArtifactWriter(fs, "root/embeddings/text/b1.parquet", hidden_dim=128, metadata={...}) as writer:
            writer.write("a.txt", "s3://bucket/raw/text/b1/a.txt", "etag", vectors)
            writer.add_failure(Failure("bad.txt", "...", "invalid UTF-8 at byte 3"))
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, hidden_dim: int,
                 metadata: Mapping[str, Any] | None = None, row_group_size: int = 256,
                 row_group_bytes: int = 64 << 20, parquet_options: Mapping[str, Any] | None = None,
                 vector_encoding: str = DEFAULT_VECTOR_ENCODING) -> None:
        if vector_encoding not in VECTOR_ENCODINGS:
            raise ValueError(f"vector_encoding {vector_encoding!r} is not one of {sorted(VECTOR_ENCODINGS)}")
        self.fs, self.path, self.hidden_dim = fs, path, hidden_dim
        self.vector_encoding, self._dtype = vector_encoding, vector_dtype(vector_encoding)
        self.parquet_options = {**default_parquet_options(vector_encoding), **(parquet_options or {})}
        self.publish_id = uuid.uuid4().hex
        self.metadata = {**(metadata or {}), "hidden_dim": hidden_dim, "vector_encoding": vector_encoding,
                         "publish_id": self.publish_id}
        self.schema = artifact_schema(hidden_dim, self.metadata, vector_encoding=vector_encoding)
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
        with np.errstate(over="ignore"):  # an overflow is reported below, naming the document
            stored = np.ascontiguousarray(embedding, dtype=self._dtype)
        if not all_finite(stored):
            if stored.dtype == embedding.dtype or not np.isfinite(embedding).all():
                raise ArtifactError(f"document {doc_id!r}: the server returned NaN or infinite values")
            raise ArtifactError(
                f"document {doc_id!r}: a value exceeds the range of vector_encoding {self.vector_encoding!r} "
                f"(|x| > {float(np.finfo(self._dtype).max):g}); use vector_encoding 'float32'")
        return stored

    def _write_sidecar(self) -> None:
        sidecar = {"publish_id": self.publish_id, "artifact": posixpath.basename(self.path),
                   "failures": [f.to_json() for f in self.failures]}
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
    floats = schema.field("embedding").type.value_type.value_type
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=floats), hidden_dim)
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
