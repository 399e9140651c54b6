"""Checking a published artifact: its schema and vector encoding, its vectors, and that no document is missing.

Plain functions returning a :class:`Verdict` (passed, a sentence saying what was found, details): the asset
checks (``orchestration/checks.py``) turn them into check results, scripts can call them directly.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infinity_assets.artifacts.reader import Artifact
from infinity_assets.artifacts.schema import (
    META_PREFIX,
    PAGE_COLUMNS,
    artifact_schema,
    nonfinite_rows,
    recorded_vector_encoding,
    schema_vector_encoding,
)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one artifact check: passed or not, and a sentence saying what was found."""

    passed: bool
    description: str
    details: dict[str, Any] | None = None


def check_schema(fs: fsspec.AbstractFileSystem, path: str, hidden_dim: int | None,
                 vector_encoding: str | None = None) -> Verdict:
    """The artifact is readable Parquet with the expected columns and types, its metadata records the vector
    encoding its schema stores, and (if given) it has ``hidden_dim`` and ``vector_encoding``."""
    try:
        with fs.open(path, "rb") as handle:
            schema = pq.read_schema(handle)
    except FileNotFoundError:
        return Verdict(False, f"no artifact at {path}")
    except Exception as exc:
        return Verdict(False, f"{path} is not readable Parquet: {exc}")
    actual_dim = _hidden_dim_of(schema)
    stored = schema_vector_encoding(schema)
    expected = artifact_schema(actual_dim or 1, vector_encoding=stored or "float32").remove_metadata()
    before_pages = pa.schema([f for f in expected if f.name not in PAGE_COLUMNS])  # written before PDF pages
    if actual_dim is None or stored is None or not any(
            schema.remove_metadata().equals(s) for s in (expected, before_pages)):
        return Verdict(False, f"{path} has schema {schema.remove_metadata()}, expected {expected} "
                              "(float32 or float16 vectors)")
    metadata = {k.decode()[len(META_PREFIX):]: v.decode() for k, v in (schema.metadata or {}).items()
                if k.decode().startswith(META_PREFIX)}
    recorded = recorded_vector_encoding(metadata)
    if recorded != stored:
        return Verdict(False, f"{path} records vector_encoding {recorded!r} but stores {stored} vectors")
    if hidden_dim is not None and actual_dim != hidden_dim:
        return Verdict(False, f"{path} holds {actual_dim}-dimensional vectors; hidden_dim is configured as "
                              f"{hidden_dim}")
    if vector_encoding is not None and stored != vector_encoding:
        return Verdict(False, f"{path} stores {stored} vectors; vector_encoding is configured as "
                              f"{vector_encoding!r}: re-embed the batch (the schedule does)")
    return Verdict(True, f"readable, expected schema, hidden_dim {actual_dim}, vector_encoding {stored}",
                   {"vector_encoding": stored})


def check_vectors(artifact: Artifact) -> Verdict:
    """No NaN/Inf, at least one vector per row, and n_vectors matching the list lengths."""
    bad_rows = nonfinite_rows(artifact.vectors)
    if bad_rows.any():
        bad = sorted({artifact.doc_ids[i] for i in _docs_of_rows(artifact, bad_rows)})
        return Verdict(False, f"{len(bad)} documents have NaN or infinite values", {"documents": bad[:20]})
    lengths = np.diff(artifact.offsets)
    empty = [artifact.doc_ids[i] for i in np.flatnonzero(lengths == 0)]
    if empty:
        return Verdict(False, f"{len(empty)} documents have no vectors", {"documents": empty[:20]})
    mismatched = [artifact.doc_ids[i] for i in np.flatnonzero(lengths != artifact.n_vectors)]
    if mismatched:
        return Verdict(False, f"{len(mismatched)} documents have n_vectors different from their vectors",
                       {"documents": mismatched[:20]})
    return Verdict(True, f"{len(artifact)} documents, {len(artifact.vectors)} finite vectors "
                         f"({artifact.vector_encoding}), none empty")


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
