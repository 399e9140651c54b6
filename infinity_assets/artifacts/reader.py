"""Reading an artifact: all vectors as one numpy array, the reuse index, rows by doc_id, the failures sidecar.

Whatever the artifact's vector encoding (:mod:`.schema`), readers hand out float32 by default: a float32
artifact's vectors are a zero-copy view of the Arrow buffers, a float16 artifact's are upcast (one copy, exact:
every float16 is a float32). ``stored_dtype=True`` returns the stored floats instead (zero-copy in both
encodings), for callers that write them back (the pipeline's reuse) or only scan them (the vector check).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infinity_assets.artifacts.schema import (
    DEFAULT_VECTOR_ENCODING,
    Failure,
    artifact_metadata,
    failures_path,
    schema_vector_encoding,
)


@dataclass
class Artifact:
    """An artifact in memory: scalar columns, file metadata, and all vectors as one numpy array.

    ``vectors`` is ``(total_vectors, hidden_dim)`` float32 (or the stored dtype if read with
    ``stored_dtype=True``); document ``i`` owns rows ``offsets[i]:offsets[i + 1]``; :meth:`vectors_of` returns
    that view. ``vector_encoding`` is how the artifact stores them (``float32`` or ``float16``).
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
    vector_encoding: str = DEFAULT_VECTOR_ENCODING

    def __len__(self) -> int:
        return len(self.doc_ids)

    def vectors_of(self, index: int) -> np.ndarray:
        """The ``(n_vectors, hidden_dim)`` view of document ``index``."""
        return self.vectors[self.offsets[index]:self.offsets[index + 1]]


def read_artifact(fs: fsspec.AbstractFileSystem, path: str, *, stored_dtype: bool = False) -> Artifact:
    """Read a whole artifact; its vectors as float32 (a zero-copy view for a float32 artifact, an upcast copy
    for float16), or as stored with ``stored_dtype=True``."""
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        metadata = artifact_metadata(parquet)
        table = parquet.read()
    hidden_dim = table.schema.field("embedding").type.value_type.list_size
    embedding = table.column("embedding").combine_chunks()
    offsets = embedding.offsets.to_numpy().astype(np.int64)
    values = embedding.flatten().flatten()  # respects slicing; a view, not a copy
    vectors = values.to_numpy(zero_copy_only=True).reshape(-1, hidden_dim)
    if not stored_dtype and vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    return Artifact(
        metadata=metadata, hidden_dim=hidden_dim,
        doc_ids=table.column("doc_id").to_pylist(), fingerprints=table.column("fingerprint").to_pylist(),
        source_uris=table.column("source_uri").to_pylist(),
        n_vectors=table.column("n_vectors").to_numpy(), vectors=vectors, offsets=offsets - offsets[0], table=table,
        vector_encoding=schema_vector_encoding(table.schema) or DEFAULT_VECTOR_ENCODING,
    )


def read_index(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """``(metadata, {doc_id: fingerprint})`` of an existing artifact, reading only two columns; None if absent.

    The metadata's ``vector_encoding`` is filled in from the schema for artifacts written before the key.
    """
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        table = parquet.read(columns=["doc_id", "fingerprint"])
        metadata = artifact_metadata(parquet)
        metadata.setdefault("vector_encoding", schema_vector_encoding(parquet.schema_arrow) or "unknown")
    return metadata, dict(zip(table.column("doc_id").to_pylist(), table.column("fingerprint").to_pylist()))


def iter_rows(fs: fsspec.AbstractFileSystem, path: str, doc_ids: set[str], *,
              stored_dtype: bool = False) -> Iterator[pa.Table]:
    """Yield the rows of ``doc_ids`` one row group at a time (memory bounded by a row group), their
    ``embedding`` column as ``list<fixed_size_list<float32>>`` (or as stored, with ``stored_dtype=True``)."""
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        to_float32 = not stored_dtype and schema_vector_encoding(parquet.schema_arrow) != "float32"
        for index in range(parquet.num_row_groups):
            group = parquet.read_row_group(index)
            keep = pc.is_in(group.column("doc_id"), value_set=pa.array(sorted(doc_ids), pa.string()))
            selected = group.filter(keep)
            if selected.num_rows:
                yield _as_float32(selected) if to_float32 else selected


def _as_float32(table: pa.Table) -> pa.Table:
    position = table.schema.get_field_index("embedding")
    hidden_dim = table.schema.field(position).type.value_type.list_size
    column = table.column(position).cast(pa.list_(pa.list_(pa.float32(), hidden_dim)))
    return table.set_column(position, table.schema.field(position).with_type(column.type), column)


def read_failures(fs: fsspec.AbstractFileSystem, artifact_path: str) -> dict[str, Any] | None:
    """The failures sidecar of an artifact (``publish_id``, ``failures``), or None if there is none.

    Each failure has ``doc_id``, ``source_uri``, ``error`` and ``kind`` (a :class:`FailureKind` value; a
    sidecar written before failures had kinds gets them from :meth:`Failure.from_json`)."""
    path = failures_path(artifact_path)
    if not fs.exists(path):
        return None
    sidecar = json.loads(fs.cat_file(path))
    sidecar["failures"] = [Failure.from_json(entry).to_json() for entry in sidecar.get("failures", [])]
    return sidecar
