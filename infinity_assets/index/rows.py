"""Index rows from artifact rows: the compact columns every search stage reads, computed from the vectors.

One code path for the sync and for :func:`~infinity_assets.index.bulk.write_index` (benchmarks writing
rows straight from token-vector batches), so an index built either way is the same. Artifact vectors may be
float32 or float16 (the artifact's recorded encoding); they are upcast, L2-normalised, then encoded as the
table's :class:`~infinity_assets.index.schema.EncodingSettings` say.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from infinity_assets.index.background import Background
from infinity_assets.index.binary import pack_signs
from infinity_assets.index.fde import document_codes
from infinity_assets.index.kernels import quantize_int8
from infinity_assets.index.pooling import pool_document, pool_tokens
from infinity_assets.index.schema import EncodingSettings

ENCODED_COLUMNS = ("fde", "bits", "embedding", "pooled")
#: Raised when the code below writes other rows for the same settings (benchmarks key their cached builds on it).
ROW_FORMAT = 5


def token_rows(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, offsets)`` of a ``list<fixed_size_list<T, d>>`` array: its tokens as ``(n, d)`` rows in the
    column's own dtype (a view of the Arrow buffer, no copy; a sliced array's own rows only) and the offsets
    of its documents from 0."""
    offsets = column.offsets.to_numpy().astype(np.int64)
    width = column.type.value_type.list_size
    values = column.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return values, offsets - offsets[0]


def take_runs(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The runs ``tokens[starts[i]:starts[i] + lengths[i]]`` stacked in order (each document's contiguous
    token rows), copied slice by slice (no per-token index to build)."""
    pairs = zip(np.asarray(starts).tolist(), np.asarray(lengths).tolist())
    runs = [tokens[start:start + length] for start, length in pairs]
    return np.concatenate(runs) if runs else tokens[:0].copy()


def unit_vectors(embedding: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, offsets)`` of a ``list<fixed_size_list<float, d>>`` column: float32, L2-normalised rows."""
    if isinstance(embedding, pa.ChunkedArray):
        embedding = embedding.combine_chunks()
    values, offsets = token_rows(embedding)
    return _unit_rows(values), offsets


def _unit_rows(values: np.ndarray) -> np.ndarray:
    """``values`` as float32 rows scaled to unit L2 norm (a zero row stays zero)."""
    vectors = values.astype(np.float32)  # a copy: scaled in place
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    vectors /= np.where(norms > 0, norms, 1.0)[:, None]
    return vectors


def encoded_columns(vectors: np.ndarray, offsets: np.ndarray, encoding: EncodingSettings,
                    background: Background | None = None,
                    known: Sequence[np.ndarray | None] | None = None) -> dict[str, pa.Array]:
    """The ``fde``, ``bits``, ``embedding`` and ``pooled`` columns of documents given as unit ``vectors`` and
    ``offsets``: ``fde`` and ``bits`` encode the pooled tokens but those of the table's ``background``
    (:func:`foreground_tokens`; ``fde`` encodes every token instead when ``encoding.fde_source`` says so);
    ``known``: documents already pooled (:func:`pooled_tokens`)."""
    stored, pooled_offsets = pooled_tokens(vectors, offsets, encoding, known)
    foreground, foreground_offsets = foreground_tokens(stored, pooled_offsets, background)
    if encoding.fde_source == "pooled":
        codes = fde_codes(foreground, foreground_offsets, encoding)
    else:
        codes = document_codes(encoding.fde(vectors.shape[1]), vectors, offsets)
    originals = vectors.astype(np.float16 if encoding.originals == "float16" else np.float32)
    return {
        "fde": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel()), codes.shape[1]),
        "bits": _vector_lists(foreground_offsets, pack_signs(foreground)),
        "embedding": _vector_lists(offsets, originals),
        "pooled": _vector_lists(pooled_offsets, stored),
    }


def pooled_tokens(vectors: np.ndarray, offsets: np.ndarray, encoding: EncodingSettings,
                  known: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, offsets)`` of the ``pooled`` column of documents given as unit ``vectors`` and ``offsets``:
    their pooled tokens (:mod:`~infinity_assets.index.pooling`) as int8 rows. ``known``: per document, its
    rows if they were pooled before (the same rows: pooling is per document and the int8 rounding per row),
    else None."""
    if known is None or all(rows is None for rows in known):
        pooled, pooled_offsets = pool_tokens(vectors, offsets, encoding.bits_pool_threshold)
        return quantize_int8(pooled), pooled_offsets
    threshold = encoding.bits_pool_threshold
    parts = [rows if rows is not None else quantize_int8(pool_document(vectors[first:last], threshold))
             for rows, first, last in zip(known, offsets[:-1].tolist(), offsets[1:].tolist())]
    pooled_offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(rows) for rows in parts], out=pooled_offsets[1:])
    return np.concatenate(parts), pooled_offsets


def vectors_keys(group: pa.Table) -> list[tuple]:
    """Each artifact row's ``(doc_id, fingerprint, embedded_at)``: which vectors it holds, to find them
    again in another read of the same artifacts."""
    return list(zip(*(group.column(name).to_pylist() for name in ("doc_id", "fingerprint", "embedded_at"))))


def foreground_tokens(pooled: np.ndarray, offsets: np.ndarray,
                      background: Background | None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, offsets)``: the documents' int8 ``pooled`` rows but those of the ``background`` clusters
    (:meth:`Background.foreground`; None: all of them), what ``fde`` and ``bits`` encode."""
    if background is None:
        return pooled, offsets
    keep = background.foreground(pooled, offsets)
    kept = np.zeros(len(offsets), np.int64)
    np.cumsum(np.add.reduceat(keep.astype(np.int64), offsets[:-1]), out=kept[1:])
    return pooled[keep], kept


def fde_codes(pooled: np.ndarray, offsets: np.ndarray, encoding: EncodingSettings) -> np.ndarray:
    """The FDE codes of documents from their stored int8 ``pooled`` rows (``fde_source="pooled"``): each row
    as a unit vector, so the codes are a function of the ``pooled`` column alone."""
    return document_codes(encoding.fde(pooled.shape[1]), _unit_rows(pooled), offsets)


def pooled_column(embedding: pa.Array | pa.ChunkedArray, encoding: EncodingSettings) -> pa.ListArray:
    """The ``pooled`` column of rows that lack it, from their stored ``embedding`` (an index written before the
    column existed gets it this way, without re-reading artifacts): the same pooling as
    :func:`encoded_columns`, on the stored (float16 by default) originals."""
    stored, pooled_offsets = pooled_tokens(*unit_vectors(embedding), encoding)
    return _vector_lists(pooled_offsets, stored)


def _vector_lists(offsets: np.ndarray, rows: np.ndarray) -> pa.ListArray:
    """``list<fixed_size_list<T, width>>``: document ``i`` owns ``rows[offsets[i]:offsets[i + 1]]``."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), rows.shape[1]))


def encode_rows(group: pa.Table, partition: str, schema: pa.Schema, encoding: EncodingSettings,
                background: Background | None = None,
                pooled: Mapping[tuple, np.ndarray] | None = None) -> pa.Table:
    """Artifact rows as index rows: the partition added, page columns null when the artifact has none, the
    vectors encoded (with the table's ``background``; ``pooled``: int8 pooled rows already made, by
    :func:`vectors_keys`, used instead of pooling those rows again). Raises ValueError naming a document
    without vectors."""
    vectors, offsets = unit_vectors(group.column("embedding"))
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if len(empty):
        raise ValueError(f"document {group.column('doc_id')[int(empty[0])].as_py()!r} of partition {partition!r} "
                         "has no vectors: it cannot be indexed; re-embed the partition")
    known = [pooled.get(key) for key in vectors_keys(group)] if pooled else None
    encoded = encoded_columns(vectors, offsets, encoding, background, known)
    columns = []
    for target in schema:
        if target.name == "partition":
            columns.append(pa.array([partition] * group.num_rows, pa.string()))
        elif target.name in encoded:
            columns.append(encoded[target.name])
        elif target.name in group.column_names:
            columns.append(group.column(target.name).cast(target.type))
        else:
            columns.append(pa.nulls(group.num_rows, target.type))
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())


def vectors_table(doc_ids: Sequence[str], vectors: Sequence[np.ndarray], *, source_uri: str = "") -> pa.Table:
    """Artifact-shaped rows (``doc_id, source_uri, fingerprint, n_vectors, embedding, embedded_at``) from
    token-vector arrays, for :func:`encode_rows` (benchmarks and tools that have vectors, not artifacts)."""
    from datetime import datetime, timezone

    lengths = np.fromiter((len(v) for v in vectors), dtype=np.int32, count=len(vectors))
    offsets = np.zeros(len(vectors) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    hidden_dim = vectors[0].shape[1]
    flat = np.concatenate(vectors).astype(np.float32, copy=False)
    embedding = pa.ListArray.from_arrays(pa.array(offsets),
                                         pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), hidden_dim))
    now = datetime.now(timezone.utc)
    return pa.table({
        "doc_id": pa.array(list(doc_ids), pa.string()),
        "source_uri": pa.array([source_uri or doc_id for doc_id in doc_ids], pa.string()),
        "fingerprint": pa.array(["" for _ in doc_ids], pa.string()),
        "n_vectors": pa.array(lengths),
        "embedding": embedding,
        "embedded_at": pa.array([now] * len(doc_ids), pa.timestamp("us", tz="UTC")),
    })

