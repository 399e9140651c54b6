"""Parquet multi-vector artifacts: one file per partition and modality, one row per document.

* :mod:`.schema` -- the contract: Arrow schema, file metadata, vector encodings (float32 or float16), data
  versions, Parquet options;
* :mod:`.writer` -- :class:`ArtifactWriter`, streaming row groups and publishing atomically (sidecar of
  failures first, then the artifact);
* :mod:`.reader` -- :func:`read_artifact` (all vectors as one numpy array, float32 unless the stored dtype is
  asked for), :func:`read_index`, :func:`iter_rows`, :func:`read_failures`;
* :mod:`.validation` -- the checks' verdicts on a published artifact.

The names are re-exported here: ``from infinity_assets import artifacts`` then ``artifacts.read_artifact``.
"""
from infinity_assets.artifacts.reader import Artifact, iter_rows, read_artifact, read_failures, read_index
from infinity_assets.artifacts.schema import (
    DEFAULT_VECTOR_ENCODING,
    META_PREFIX,
    PAGE_COLUMNS,
    PARQUET_OPTIONS,
    SCALAR_COLUMNS,
    VECTOR_ENCODING_ENV,
    VECTOR_ENCODINGS,
    VECTOR_VALUES,
    ArtifactError,
    Failure,
    all_finite,
    artifact_metadata,
    artifact_schema,
    data_version,
    failures_path,
    fingerprint_digest,
    legacy_failure_kind,
    nonfinite_rows,
    parquet_options,
    recorded_vector_encoding,
    schema_vector_encoding,
    vector_dtype,
    vector_encoding,
)
from infinity_assets.artifacts.validation import Verdict, check_completeness, check_schema, check_vectors
from infinity_assets.artifacts.writer import (
    S3_PART_BYTES,
    STAGING_DIR,
    WRITE_AMPLIFICATION,
    ArtifactWriter,
    Row,
    _rows_table,  # noqa: F401 -- the encoding benchmark times it on its own
)

__all__ = [
    "DEFAULT_VECTOR_ENCODING", "META_PREFIX", "PAGE_COLUMNS", "PARQUET_OPTIONS", "S3_PART_BYTES",
    "SCALAR_COLUMNS", "STAGING_DIR", "VECTOR_ENCODINGS", "VECTOR_ENCODING_ENV", "VECTOR_VALUES",
    "WRITE_AMPLIFICATION", "Artifact", "ArtifactError", "ArtifactWriter", "Failure", "Row", "Verdict",
    "all_finite", "artifact_metadata", "artifact_schema", "check_completeness", "check_schema",
    "check_vectors", "data_version", "failures_path", "fingerprint_digest", "iter_rows",
    "legacy_failure_kind", "nonfinite_rows",
    "parquet_options", "read_artifact", "read_failures", "read_index", "recorded_vector_encoding",
    "schema_vector_encoding", "vector_dtype", "vector_encoding",
]
