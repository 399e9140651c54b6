"""An artifact written by the real ArtifactWriter reads back byte-identical in every reader users point at it.

The writer's Parquet options (codec, byte stream split, page sizes, page index) are chosen for speed; this is
what keeps them honest: pyarrow, DuckDB and Polars (each with its own Parquet decoder) and LanceDB (the index
stores the artifact's record batches) must return the same floats per document and the same doc_ids, in both
vector encodings: float32, and float16 (``list<fixed_size_list<float16, dim>>``). DuckDB has no half-precision
type: it returns float16 vectors as float32, exactly (every float16 is a float32).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import fsspec
import lancedb
import numpy as np
import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infinity_assets import artifacts

HIDDEN_DIM = 128
POLARS_FLOATS = {"float32": polars.Float32, "float16": polars.Float16}


def bf16(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with the low 16 mantissa bits zero, as a bf16 model returns them."""
    return (vectors.view(np.uint32) & 0xFFFF0000).view(np.float32)


@dataclass(frozen=True)
class Written:
    """An artifact on disk, its vector encoding, and per doc_id the stored vectors (in the stored dtype)."""

    path: Path
    encoding: str
    stored: dict[str, np.ndarray]

    def expected(self, dtype: type = np.float32) -> dict[str, bytes]:
        """``{doc_id: bytes of the stored vectors as dtype}`` (float32: exact for both encodings)."""
        return {doc_id: vectors.astype(dtype).tobytes() for doc_id, vectors in self.stored.items()}


@pytest.fixture(scope="module", params=sorted(artifacts.VECTOR_ENCODINGS))
def written(request, tmp_path_factory) -> Written:
    """A PDF-like artifact (pages of one document, varied vector counts, float32 and bf16 values, several row
    groups) in each vector encoding."""
    rng = np.random.default_rng(14)
    path = tmp_path_factory.mktemp("readers") / f"b1-{request.param}.parquet"
    stored: dict[str, np.ndarray] = {}
    with artifacts.ArtifactWriter(fsspec.filesystem("file"), str(path), hidden_dim=HIDDEN_DIM,
                                  metadata={"model": "test"}, row_group_size=3,
                                  vector_encoding=request.param) as writer:
        for page in range(1, 8):
            vectors = rng.standard_normal((100 * page + 31, HIDDEN_DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            if page % 2:
                vectors = bf16(vectors)
            doc_id = f"report.pdf#page={page}"
            writer.write(doc_id, "s3://bucket/raw/pdf/b1/report.pdf", "etag-1", vectors,
                         datetime(2025, 1, 1, tzinfo=timezone.utc), page, f"text of page {page}")
            stored[doc_id] = vectors.astype(artifacts.vector_dtype(request.param))
    assert pq.ParquetFile(path).num_row_groups > 1
    return Written(path, request.param, stored)


def vector_bytes(table: pa.Table, dtype: type) -> dict[str, bytes]:
    """``{doc_id: bytes of its vectors}`` from a table with ``doc_id`` and ``embedding`` (a list of lists of
    ``dtype``, in whatever list and string flavours the reader returns)."""
    embedding = table.column("embedding").combine_chunks()
    result = {}
    for doc_id, vectors in zip(table.column("doc_id").to_pylist(), embedding):
        values = vectors.values.flatten().to_numpy(zero_copy_only=False)
        assert values.dtype == dtype
        result[doc_id] = values.tobytes()
    return result


def stored_dtype(written: Written) -> type:
    return artifacts.vector_dtype(written.encoding).type


def test_the_artifact_records_its_vector_encoding_in_metadata_and_schema(written):
    parquet = pq.ParquetFile(written.path)
    assert artifacts.artifact_metadata(parquet)["vector_encoding"] == written.encoding
    assert parquet.schema_arrow.field("embedding").type.value_type.value_type == artifacts.VECTOR_ENCODINGS[
        written.encoding]


def test_pyarrow_reads_the_vectors_byte_identical(written):
    table = pq.read_table(written.path, columns=["doc_id", "embedding"])
    assert vector_bytes(table, stored_dtype(written)) == written.expected(stored_dtype(written))


def test_duckdb_reads_the_vectors_exactly_as_float32(written):
    with duckdb.connect() as connection:
        table = connection.sql("SELECT doc_id, embedding FROM read_parquet($path)",
                               params={"path": str(written.path)}).to_arrow_table()
    assert vector_bytes(table, np.float32) == written.expected(np.float32)


def test_polars_reads_the_vectors_byte_identical(written):
    frame = polars.read_parquet(written.path, columns=["doc_id", "embedding"])
    assert frame.schema["embedding"] == polars.List(polars.Array(POLARS_FLOATS[written.encoding], HIDDEN_DIM))
    assert vector_bytes(frame.to_arrow(), stored_dtype(written)) == written.expected(stored_dtype(written))


def test_lancedb_stores_and_returns_the_vectors_byte_identical(written, tmp_path):
    parquet = pq.ParquetFile(written.path)
    table = lancedb.connect(tmp_path / "index").create_table(
        "pages", data=parquet.iter_batches(batch_size=2), schema=parquet.schema_arrow)
    assert vector_bytes(table.to_arrow(), stored_dtype(written)) == written.expected(stored_dtype(written))


def test_the_artifact_reader_returns_float32_vectors_whatever_the_encoding(written):
    artifact = artifacts.read_artifact(fsspec.filesystem("file"), str(written.path))
    assert artifact.vectors.dtype == np.float32 and artifact.vector_encoding == written.encoding
    assert {d: artifact.vectors_of(i).tobytes() for i, d in enumerate(artifact.doc_ids)} == written.expected()


def test_the_artifact_reader_returns_the_stored_dtype_when_asked(written):
    artifact = artifacts.read_artifact(fsspec.filesystem("file"), str(written.path), stored_dtype=True)
    assert artifact.vectors.dtype == stored_dtype(written)
    assert ({d: artifact.vectors_of(i).tobytes() for i, d in enumerate(artifact.doc_ids)}
            == written.expected(stored_dtype(written)))


def test_rows_read_by_doc_id_are_float32_unless_the_stored_dtype_is_asked(written):
    wanted = {"report.pdf#page=2", "report.pdf#page=7"}
    fs = fsspec.filesystem("file")
    as_float32 = pa.concat_tables(artifacts.iter_rows(fs, str(written.path), wanted))
    as_stored = pa.concat_tables(artifacts.iter_rows(fs, str(written.path), wanted, stored_dtype=True))
    expected = written.expected()
    assert vector_bytes(as_float32, np.float32) == {d: expected[d] for d in wanted}
    stored = written.expected(stored_dtype(written))
    assert vector_bytes(as_stored, stored_dtype(written)) == {d: stored[d] for d in wanted}


def test_the_schema_check_knows_the_encoding(written):
    fs, other = fsspec.filesystem("file"), ({"float32", "float16"} - {written.encoding}).pop()
    assert artifacts.check_schema(fs, str(written.path), HIDDEN_DIM, written.encoding).passed
    verdict = artifacts.check_schema(fs, str(written.path), HIDDEN_DIM, other)
    assert not verdict.passed and f"stores {written.encoding} vectors" in verdict.description
    assert other in verdict.description


def test_float16_is_half_the_vector_bytes(written):
    artifact = artifacts.read_artifact(fsspec.filesystem("file"), str(written.path), stored_dtype=True)
    assert artifact.vectors.nbytes == len(artifact.vectors) * HIDDEN_DIM * artifact.vectors.itemsize
    assert artifact.vectors.itemsize == {"float32": 4, "float16": 2}[written.encoding]


def test_duckdb_cannot_read_byte_stream_split_float16_so_float16_artifacts_are_not_split(tmp_path):
    """The reason float16 artifacts are written without byte stream split (8 % more bytes): DuckDB 2.0 refuses
    a split FLOAT16 column. If this starts passing reads, the split can be turned on for float16 too."""
    path = tmp_path / "split.parquet"
    vectors = np.ones((4, HIDDEN_DIM), np.float32)
    with artifacts.ArtifactWriter(fsspec.filesystem("file"), str(path), hidden_dim=HIDDEN_DIM,
                                  vector_encoding="float16",
                                  parquet_options={"use_byte_stream_split": [artifacts.VECTOR_VALUES]}) as writer:
        writer.write("a", "u", "f", vectors)
    with duckdb.connect() as connection, pytest.raises(duckdb.Error, match="BYTE_STREAM_SPLIT"):
        connection.sql("SELECT embedding FROM read_parquet($path)", params={"path": str(path)}).fetchall()
    default = tmp_path / "default.parquet"
    with artifacts.ArtifactWriter(fsspec.filesystem("file"), str(default), hidden_dim=HIDDEN_DIM,
                                  vector_encoding="float16") as writer:
        writer.write("a", "u", "f", vectors)
    assert "BYTE_STREAM_SPLIT" not in pq.ParquetFile(default).metadata.row_group(0).column(4).encodings


def test_a_value_beyond_float16_range_is_refused_naming_the_document(tmp_path):
    vectors = np.full((2, HIDDEN_DIM), 1e5, np.float32)
    path = tmp_path / "big.parquet"
    with pytest.raises(artifacts.ArtifactError, match="'huge'.*range of vector_encoding 'float16'.*float32"):
        with artifacts.ArtifactWriter(fsspec.filesystem("file"), str(path), hidden_dim=HIDDEN_DIM,
                                      vector_encoding="float16") as writer:
            writer.write("huge", "u", "f", vectors)
    assert not path.exists()


def test_an_unknown_encoding_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(artifacts.VECTOR_ENCODING_ENV, "int8")
    with pytest.raises(ValueError, match="INFINITY_ASSETS_VECTOR_ENCODING='int8'.*float16.*float32"):
        artifacts.vector_encoding()
    assert artifacts.vector_encoding("float16") == "float16"
    monkeypatch.delenv(artifacts.VECTOR_ENCODING_ENV)
    assert artifacts.vector_encoding() == "float32"


def test_the_vector_check_finds_a_non_finite_value_in_the_stored_floats(written):
    artifact = artifacts.read_artifact(fsspec.filesystem("file"), str(written.path), stored_dtype=True)
    assert artifacts.check_vectors(artifact).passed
    assert written.encoding in artifacts.check_vectors(artifact).description
    vectors = artifact.vectors.copy()
    vectors[artifact.offsets[3] + 5, 7] = np.inf
    verdict = artifacts.check_vectors(dataclasses.replace(artifact, vectors=vectors))
    assert not verdict.passed and verdict.details == {"documents": ["report.pdf#page=4"]}


def test_a_failures_sidecar_written_before_kinds_reads_with_the_kinds_its_messages_meant(tmp_path):
    artifact = tmp_path / "b1.parquet"
    errors = {"bad.txt": "not valid UTF-8 (byte 3: b'\\xe9'); fix the file's encoding",
              "edited.txt": "the file changed since it was listed (it no longer matches fingerprint 3-17); retry "
                            "later: the next run reads the new version",
              "big.jsonl": "after line 7: the file changed while it was read (it no longer matches fingerprint "
                           "9-1); retry later: the next run reads the new version",
              "gone.txt": "the file was deleted after it was listed; retry later: the next run will not list it",
              "flaky.txt": "could not be read (OSError: I/O error); retry later"}
    old = {"publish_id": "p1", "artifact": "b1.parquet",
           "failures": [{"doc_id": d, "source_uri": f"/raw/text/b1/{d}", "error": e} for d, e in errors.items()]}
    (tmp_path / "b1.failures.json").write_text(json.dumps(old))
    sidecar = artifacts.read_failures(fsspec.filesystem("file"), str(artifact))
    assert sidecar["publish_id"] == "p1"
    assert {f["doc_id"]: f["kind"] for f in sidecar["failures"]} == {
        "bad.txt": "document", "edited.txt": "changed", "big.jsonl": "changed", "gone.txt": "deleted",
        "flaky.txt": "unreadable"}
    assert [f["error"] for f in sidecar["failures"]] == list(errors.values())


def test_a_failures_kind_round_trips_through_the_sidecar(tmp_path):
    from infinity_assets.storage.failures import FailureKind

    path = str(tmp_path / "b1.parquet")
    failures = [artifacts.Failure(f"{kind.value}.txt", f"/raw/{kind.value}.txt", "a reason; retry later", kind)
                for kind in FailureKind]
    with artifacts.ArtifactWriter(fsspec.filesystem("file"), path, hidden_dim=HIDDEN_DIM) as writer:
        for failure in failures:
            writer.add_failure(failure)
    sidecar = artifacts.read_failures(fsspec.filesystem("file"), path)
    assert [artifacts.Failure.from_json(f) for f in sidecar["failures"]] == failures
