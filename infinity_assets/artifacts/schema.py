"""The artifact's contract: its Arrow schema, its file metadata, its vector encodings and Parquet options.

One row per document::

    doc_id string, source_uri string, fingerprint string, n_vectors int32,
    embedding list<fixed_size_list<float32 | float16, hidden_dim>>, embedded_at timestamp(us, UTC),
    page int32 (nullable: the page number of a PDF page, null otherwise), page_text string (nullable: its text layer)

File key-value metadata (keys prefixed ``infinity_assets.``): model, hidden_dim, modality, encoding (the wire
encoding), vector_encoding, partition, package version, publish_id, data_version, failed.

The vector encoding is a choice, recorded in ``vector_encoding`` and in the embedding column's type:

* ``float32`` (the default): lossless, exactly the floats the server returned;
* ``float16``: half the bytes, a relative rounding error of at most 2**-11 per value. The models compute in
  bf16, whose 8 significant bits float16's 11 hold: a bf16 value of magnitude 6.1e-5 to 65,504 is stored
  exactly, a smaller one to within 3e-8. A value beyond float16's range is refused when written (an
  L2-normalized token vector is far inside it).

Readers honour both and hand out float32 unless asked for the stored dtype (:mod:`.reader`). Artifacts written
before ``vector_encoding`` existed are float32 (their schema says so).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infinity_assets.storage.failures import FailureKind

META_PREFIX = "infinity_assets."
SCALAR_COLUMNS = ["doc_id", "source_uri", "fingerprint", "n_vectors", "embedded_at", "page"]
#: Columns added with PDF pages; artifacts written before them are still read and checked.
PAGE_COLUMNS = ("page", "page_text")
#: The Parquet leaf column of the vectors' floats.
VECTOR_VALUES = "embedding.list.element.list.element"

#: The vector encodings an artifact may use, and the Arrow type of their floats.
VECTOR_ENCODINGS: dict[str, pa.DataType] = {"float32": pa.float32(), "float16": pa.float16()}
DEFAULT_VECTOR_ENCODING = "float32"
#: The environment variable that sets the vector encoding of new artifacts (run config overrides it).
VECTOR_ENCODING_ENV = "INFINITY_ASSETS_VECTOR_ENCODING"

#: How ``pq.ParquetWriter`` encodes an artifact: no dictionary for the vectors (floats hardly repeat), no
#: min/max statistics for them (useless for vectors), zstd with byte stream split (which groups the bytes of
#: each float by significance, what makes floats compress). The measurements behind each choice are in
#: ``benchmarks/README.md`` (section ``encoding``).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["doc_id", "source_uri", "fingerprint"],
    "write_statistics": SCALAR_COLUMNS,
    "use_byte_stream_split": [VECTOR_VALUES],
}


def parquet_options(vector_encoding: str = DEFAULT_VECTOR_ENCODING) -> dict[str, Any]:
    """The Parquet options of an artifact of ``vector_encoding``: :data:`PARQUET_OPTIONS`, except that float16
    vectors are not byte-stream-split (DuckDB 2.0 cannot read a split float16 column, and every reader users
    point at an artifact must read it; the split would save 8 % of the bytes)."""
    if vector_encoding == "float16":
        return {**PARQUET_OPTIONS, "use_byte_stream_split": False}
    return dict(PARQUET_OPTIONS)


class ArtifactError(Exception):
    """An embedding cannot go into an artifact (wrong shape, NaN, no vectors); names the document."""


@dataclass(frozen=True)
class Failure:
    """A document that could not be embedded: why (``error``, for people) and what kind of failure it is
    (``kind``, which decides: a retryable one leaves the batch's data version stale)."""

    doc_id: str
    source_uri: str
    error: str
    kind: FailureKind = FailureKind.DOCUMENT

    def to_json(self) -> dict[str, str]:
        """The failure as the sidecar records it."""
        return {"doc_id": self.doc_id, "source_uri": self.source_uri, "error": self.error,
                "kind": self.kind.value}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> Failure:
        """A failure of a sidecar; one written before failures had kinds gets the kind its message meant."""
        kind = entry.get("kind")
        return cls(entry["doc_id"], entry["source_uri"], entry["error"],
                   FailureKind(kind) if kind else legacy_failure_kind(entry["error"]))


def legacy_failure_kind(error: str) -> FailureKind:
    """The kind of a failure recorded without one (sidecars of earlier versions), from the phrases those
    versions wrote: a transient failure ended in "; retry later" and said whether the file changed or was
    deleted."""
    if "; retry later" not in error:
        return FailureKind.DOCUMENT
    if "deleted after it was listed" in error:
        return FailureKind.DELETED
    if "the file changed" in error:
        return FailureKind.CHANGED
    return FailureKind.UNREADABLE


def vector_encoding(value: str | None = None) -> str:
    """The vector encoding to write: ``value``, else ``$INFINITY_ASSETS_VECTOR_ENCODING``, else ``float32``.

    Raises ``ValueError`` naming the setting for an unknown encoding. Example:
    ``vector_encoding("float16") == "float16"``.
    """
    chosen = value if value not in (None, "") else os.environ.get(VECTOR_ENCODING_ENV) or DEFAULT_VECTOR_ENCODING
    if chosen not in VECTOR_ENCODINGS:
        source = "vector_encoding" if value not in (None, "") else f"environment variable {VECTOR_ENCODING_ENV}"
        raise ValueError(f"{source}={chosen!r} is not a vector encoding; use one of {sorted(VECTOR_ENCODINGS)} "
                         "(float32 is lossless, float16 half the bytes)")
    return chosen


def vector_dtype(encoding: str) -> np.dtype:
    """The numpy dtype of an encoding's stored floats (``float32`` or ``float16``)."""
    return np.dtype(VECTOR_ENCODINGS[encoding].to_pandas_dtype())


def all_finite(vectors: np.ndarray) -> bool:
    """Whether a float array holds no NaN and no infinity (float16 tested on its bits, see
    :func:`nonfinite_rows`)."""
    if vectors.dtype == np.float16:
        return bool((vectors.view(np.uint16) & 0x7FFF).max(initial=0) < 0x7C00)
    return bool(np.isfinite(vectors).all())


def nonfinite_rows(vectors: np.ndarray) -> np.ndarray:
    """A boolean mask of the rows of a ``(n, dim)`` float array holding a NaN or an infinity.

    float16 is tested on its bits (exponent all ones): numpy's ``isfinite`` on float16 converts every value
    and costs ten times the float32 test.
    """
    if vectors.dtype == np.float16:
        return ((vectors.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1)
    return ~np.isfinite(vectors).all(axis=1)


def artifact_schema(hidden_dim: int, metadata: Mapping[str, Any] | None = None, *,
                    vector_encoding: str = DEFAULT_VECTOR_ENCODING) -> pa.Schema:
    """The Arrow schema of an artifact with ``hidden_dim``-wide vectors stored as ``vector_encoding``."""
    floats = VECTOR_ENCODINGS[vector_encoding]
    schema = pa.schema([
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("n_vectors", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.list_(floats, hidden_dim)), nullable=False),
        pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("page", pa.int32(), nullable=True),
        pa.field("page_text", pa.string(), nullable=True),
    ])
    return schema.with_metadata({f"{META_PREFIX}{k}": str(v) for k, v in (metadata or {}).items()})


def artifact_metadata(parquet: pq.ParquetFile) -> dict[str, str]:
    """The ``infinity_assets.*`` key-value metadata of an artifact file, without the prefix."""
    raw = parquet.metadata.metadata or {}
    return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items() if k.decode().startswith(META_PREFIX)}


def schema_vector_encoding(schema: pa.Schema) -> str | None:
    """The vector encoding an artifact's schema stores (None if its embedding column is not one we write)."""
    try:
        value_type = schema.field("embedding").type.value_type
    except (KeyError, AttributeError):
        return None
    if not pa.types.is_fixed_size_list(value_type):
        return None
    return next((name for name, floats in VECTOR_ENCODINGS.items() if value_type.value_type == floats), None)


def recorded_vector_encoding(metadata: Mapping[str, str]) -> str:
    """The vector encoding an artifact's metadata records (``float32`` for artifacts written before the key)."""
    return metadata.get("vector_encoding") or DEFAULT_VECTOR_ENCODING


def failures_path(artifact_path: str) -> str:
    """Where the failures sidecar of an artifact lives."""
    return artifact_path.removesuffix(".parquet") + ".failures.json"


def fingerprint_digest(fingerprints: Mapping[str, str]) -> str:
    """A stable digest of ``{source key: fingerprint}``: changes when any source is added, changed or removed."""
    digest = hashlib.sha256()
    for key in sorted(fingerprints):
        digest.update(f"{key}\t{fingerprints[key]}\n".encode())
    return digest.hexdigest()[:24]


def data_version(fingerprints: Mapping[str, str], model: str, hidden_dim: int | None,
                 vector_encoding: str = DEFAULT_VECTOR_ENCODING) -> str:
    """The data version of a partition's artifact: its sources' fingerprints and the embedding settings.

    A new model, hidden_dim or vector encoding gives a new version. float32 adds nothing to the digest, so
    artifacts made before encodings were a choice keep their versions (and are not re-embedded for it).
    """
    settings = f"{model}\n{hidden_dim}\n"
    if vector_encoding != DEFAULT_VECTOR_ENCODING:
        settings += f"vector_encoding={vector_encoding}\n"
    return hashlib.sha256(f"{settings}{fingerprint_digest(fingerprints)}".encode()).hexdigest()[:24]
