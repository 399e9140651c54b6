"""An artifact written by the real ArtifactWriter reads back byte-identical in every reader users point at it.

The writer's Parquet options (codec, byte stream split, page sizes, page index) are chosen for speed; this is
what keeps them honest: pyarrow, DuckDB and Polars (each with its own Parquet decoder) and LanceDB (the index
stores the artifact's record batches) must return the same float32 bytes per document and the same doc_ids.
"""
from __future__ import annotations

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


def bf16(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with the low 16 mantissa bits zero, as a bf16 model returns them."""
    return (vectors.view(np.uint32) & 0xFFFF0000).view(np.float32)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A PDF-like artifact (pages of one document, varied vector counts, float32 and bf16 values, several row
    groups) and the float32 bytes written for each doc_id."""
    rng = np.random.default_rng(14)
    path = tmp_path_factory.mktemp("readers") / "b1.parquet"
    expected: dict[str, bytes] = {}
    with artifacts.ArtifactWriter(fsspec.filesystem("file"), str(path), hidden_dim=HIDDEN_DIM,
                                  metadata={"model": "test"}, row_group_size=3) as writer:
        for page in range(1, 8):
            vectors = rng.standard_normal((100 * page + 31, HIDDEN_DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            if page % 2:
                vectors = bf16(vectors)
            doc_id = f"report.pdf#page={page}"
            writer.write(doc_id, "s3://bucket/raw/pdf/b1/report.pdf", "etag-1", vectors,
                         datetime(2025, 1, 1, tzinfo=timezone.utc), page, f"text of page {page}")
            expected[doc_id] = vectors.tobytes()
    assert pq.ParquetFile(path).num_row_groups > 1
    return path, expected


def vector_bytes(table: pa.Table) -> dict[str, bytes]:
    """``{doc_id: float32 bytes of its vectors}`` from a table with ``doc_id`` and ``embedding`` (a list of
    fixed-size lists of float32, in whatever list and string flavours the reader returns)."""
    embedding = table.column("embedding").combine_chunks()
    result = {}
    for doc_id, vectors in zip(table.column("doc_id").to_pylist(), embedding):
        values = vectors.values.flatten().to_numpy(zero_copy_only=False)
        assert values.dtype == np.float32
        result[doc_id] = values.tobytes()
    return result


def test_pyarrow_reads_the_vectors_byte_identical(written):
    path, expected = written
    assert vector_bytes(pq.read_table(path, columns=["doc_id", "embedding"])) == expected


def test_duckdb_reads_the_vectors_byte_identical(written):
    path, expected = written
    with duckdb.connect() as connection:
        table = connection.sql("SELECT doc_id, embedding FROM read_parquet($path)",
                               params={"path": str(path)}).to_arrow_table()
    assert vector_bytes(table) == expected


def test_polars_reads_the_vectors_byte_identical(written):
    path, expected = written
    frame = polars.read_parquet(path, columns=["doc_id", "embedding"])
    assert frame.schema["embedding"] == polars.List(polars.Array(polars.Float32, HIDDEN_DIM))
    assert vector_bytes(frame.to_arrow()) == expected


def test_lancedb_stores_and_returns_the_vectors_byte_identical(written, tmp_path):
    path, expected = written
    parquet = pq.ParquetFile(path)
    table = lancedb.connect(tmp_path / "index").create_table(
        "pages", data=parquet.iter_batches(batch_size=2), schema=parquet.schema_arrow)
    assert vector_bytes(table.to_arrow()) == expected


def test_the_artifact_reader_returns_the_vectors_byte_identical(written):
    path, expected = written
    artifact = artifacts.read_artifact(fsspec.filesystem("file"), str(path))
    assert {d: artifact.vectors_of(i).tobytes() for i, d in enumerate(artifact.doc_ids)} == expected
