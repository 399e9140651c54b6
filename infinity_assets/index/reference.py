"""References an index is compared with: exact MaxSim over the artifacts, and the artifacts' rows in the
index's form (tests, benchmarks and the index asset's drift measurement)."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from infinity_assets import artifacts
from infinity_assets.index.hits import Hit
from infinity_assets.index.maxsim import maxsim_scores
from infinity_assets.index.rows import ENCODED_COLUMNS, encode_rows
from infinity_assets.index.schema import EncodingSettings, index_schema, open_table, table_encoding
from infinity_assets.index.sync import scan_artifacts
from infinity_assets.storage.documents import DocumentStore


def exact_hits(store: DocumentStore, modality: str, query: np.ndarray, k: int) -> list[Hit]:
    """The exact cosine MaxSim top ``k`` over the artifacts themselves (float32 numpy): the reference the
    index is compared with."""
    scored: list[tuple[float, str, str, str]] = []
    for artifact_rows in scan_artifacts(store, modality)[0]:
        artifact = artifacts.read_artifact(store.fs, artifact_rows.path)
        scores = maxsim_scores(query, artifact.vectors, artifact.offsets, normalize=True)
        scored += [(float(s), d, artifact_rows.partition, u)
                   for s, d, u in zip(scores, artifact.doc_ids, artifact.source_uris)]
    scored.sort(key=lambda hit: -hit[0])
    return [Hit(score, doc_id, partition, uri) for score, doc_id, partition, uri in scored[:k]]


def index_rows(store: DocumentStore, modality: str) -> pa.Table:
    """Every row of an index table, sorted by key, with a SHA-256 of each row's encoded vector columns
    instead of the vectors (tests compare it with :func:`artifact_rows`)."""
    table = open_table(store, modality)
    if table is None:
        return pa.table({})
    return _comparable(table.to_lance().to_table())


def artifact_rows(store: DocumentStore, modality: str, model: str | None = None,
                  encoding: EncodingSettings | None = None) -> pa.Table:
    """The rows of the current artifacts in the form of :func:`index_rows` (what the index must equal),
    encoded with ``encoding`` (None: the index table's, else the defaults)."""
    if encoding is None:
        table = open_table(store, modality)
        encoding = (table_encoding(table) if table is not None else None) or EncodingSettings()
    tables = []
    for found in scan_artifacts(store, modality)[0]:
        if model is not None and found.metadata.get("model") != model:
            continue
        whole = artifacts.read_artifact(store.fs, found.path).table
        schema = index_schema(found.hidden_dim, "", modality, encoding)
        tables.append(encode_rows(whole, found.partition, schema, encoding))
    return _comparable(pa.concat_tables(tables)) if tables else pa.table({})


def _comparable(data: pa.Table) -> pa.Table:
    digests = [hashlib.sha256() for _ in range(data.num_rows)]
    for name in ENCODED_COLUMNS:
        for number, value in enumerate(_row_bytes(data.column(name).combine_chunks())):
            digests[number].update(value)
    keep = [c for c in ("partition", "doc_id", "source_uri", "fingerprint", "embedded_at", "n_vectors", "page")
            if c in data.column_names]
    out = data.select(keep).append_column("vectors_sha256", pa.array([d.hexdigest() for d in digests], pa.string()))
    return out.sort_by([("partition", "ascending"), ("doc_id", "ascending")])


def _row_bytes(column: pa.Array) -> list[bytes]:
    """Each row's values as bytes, for a ``fixed_size_list`` or ``list<fixed_size_list>`` column."""
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
        return [row.tobytes() for row in values]
    width = column.type.value_type.list_size
    values = column.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    bounds = column.offsets.to_numpy() - column.offsets.to_numpy()[0]
    return [values[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:])]
