"""``--only index``: the LanceDB index against brute-force numpy MaxSim over the artifacts.

Synthetic multi-vector documents (clustered unit vectors, 128-d) are written as artifacts of 1,000 documents
each on the local disk, then synced into the index. Measured per size: query latency p50/p95 with the index
exact (flat) and with the IVF-PQ ANN index, and the baseline (numpy MaxSim over the artifacts, already in
memory); recall@10 of ANN against exact; time to sync one changed partition; index size on disk against the
artifacts' size. The query's own embedding (real CPU Infinity server, minilm-colbert-128) is measured once and
added for the "embedding included" figures.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from infinity_assets import artifacts, index
from infinity_assets.artifacts import ArtifactWriter
from infinity_assets.documents import DocumentStore
from infinity_assets.search import maxsim_scores, normalized

DIM = 128
PER_PARTITION = 1000
QUERIES = 20
#: (name, documents, vectors per document). 100k text documents and 10k ColPali pages (1,031 vectors each,
#: 5 GB of floats) do not fit a few minutes on 2 cores: scaled down, see the README.
CASES = (("text 1k", 1_000, 32), ("text 10k", 10_000, 32), ("ColPali pages 1k", 1_000, 1031))


def _documents(rng: np.random.Generator, count: int, vectors: int, centers: np.ndarray) -> list[np.ndarray]:
    """Token vectors around random topic centres (like real embeddings: not uniform noise)."""
    out = []
    for _ in range(count):
        topic = centers[rng.integers(len(centers), size=vectors)]
        out.append(normalized(topic + 0.35 * rng.standard_normal((vectors, DIM)).astype(np.float32)))
    return out


def _write(store: DocumentStore, partition: str, docs: list[np.ndarray]) -> None:
    store.ensure_artifact_dir("text")
    with ArtifactWriter(store.fs, store.artifact_path("text", partition), hidden_dim=DIM,
                        metadata={"model": "bench", "partition": partition}) as writer:
        for number, vectors in enumerate(docs):
            writer.write(f"d{number}", f"mem://{partition}/d{number}", f"fp{number}", vectors)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def embedding_latency() -> list[float]:
    """Latencies of ``embed_query`` on the real CPU Infinity server (minilm-colbert-128)."""
    from infinity_assets import InfinityEmbeddings
    from infinity_assets_tests.servers.infinity import InfinityServer

    with tempfile.TemporaryDirectory() as logs, InfinityServer(["minilm-colbert-128"], log_dir=Path(logs)) as server:
        with InfinityEmbeddings(url=server.url, model_name="minilm-colbert-128", hidden_dim=128) as client:
            client.embed_query("warm up")
            seconds = []
            for number in range(QUERIES):
                started = time.perf_counter()
                client.embed_query(f"what do the quarterly reports say about revenue {number}")
                seconds.append(time.perf_counter() - started)
    return seconds


def run_case(name: str, count: int, vectors: int, embed_seconds: list[float]) -> dict[str, Any]:
    """One size: build, sync, query (exact, ANN, numpy), update one partition, sizes."""
    rng = np.random.default_rng(count + vectors)
    centers = normalized(rng.standard_normal((256, DIM)).astype(np.float32))
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        store = DocumentStore(str(workdir))
        for start in range(0, count, PER_PARTITION):
            _write(store, f"p{start // PER_PARTITION:04d}", _documents(rng, min(PER_PARTITION, count - start),
                                                                      vectors, centers))
        started = time.perf_counter()
        first = index.sync_index(store, "text", ann_threshold_rows=0)
        load_seconds = time.perf_counter() - started
        reader = index.IndexReader(store, "text")
        loaded = [artifacts.read_artifact(store.fs, p) for p in sorted(store.fs.glob(
            f"{store.path('embeddings/text')}/*.parquet"))]
        queries = [normalized(centers[rng.integers(256, size=24)] + 0.35 * rng.standard_normal((24, DIM))
                              .astype(np.float32)) for _ in range(QUERIES)]
        timings: dict[str, list[float]] = {"numpy": [], "exact": [], "ann": []}
        exact_ids, ann_ids = [], []
        for query in queries:
            started = time.perf_counter()
            scores = np.concatenate([maxsim_scores(query, a.vectors, a.offsets) for a in loaded])
            np.argpartition(-scores, 10)[:10]
            timings["numpy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            exact_ids.append({(h.partition, h.doc_id) for h in reader.search(query, 10, exact=True)})
            timings["exact"].append(time.perf_counter() - started)
        index.sync_index(store, "text", ann_threshold_rows=1)  # builds the ANN index
        reader = index.IndexReader(store, "text")
        for query in queries:
            started = time.perf_counter()
            ann_ids.append({(h.partition, h.doc_id) for h in reader.search(query, 10)})
            timings["ann"].append(time.perf_counter() - started)
        recall = statistics.mean(len(a & e) / 10 for a, e in zip(ann_ids, exact_ids))
        _write(store, "p0000", _documents(rng, min(PER_PARTITION, count), vectors, centers))
        started = time.perf_counter()
        update = index.sync_index(store, "text", ann_threshold_rows=1)
        update_seconds = time.perf_counter() - started
        result = {
            "documents": count, "vectors_per_document": vectors,
            "latency": {kind: _percentiles(s) for kind, s in timings.items()},
            "latency_with_embedding": {kind: _percentiles([e + s for e, s in zip(embed_seconds, seconds)])
                                       for kind, seconds in timings.items()},
            "ann_recall_at_10": recall, "initial_sync_seconds": load_seconds,
            "changed_partition_sync_seconds": update_seconds, "changed_partition_rows": update.updated,
            "index_bytes": _size(workdir / "index"), "artifact_bytes": _size(workdir / "embeddings"),
            "rows": first.rows,
        }
        lat = result["latency"]
        print(f"  {name}: numpy p50 {lat['numpy']['p50_ms']:.1f} ms, exact {lat['exact']['p50_ms']:.1f} ms, "
              f"ANN {lat['ann']['p50_ms']:.1f} ms (recall@10 {recall:.3f}); changed partition synced in "
              f"{update_seconds:.1f} s; index {result['index_bytes'] / 1e6:.0f} MB vs artifacts "
              f"{result['artifact_bytes'] / 1e6:.0f} MB", flush=True)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(scale: float = 1.0) -> dict[str, Any]:
    """Every case (``scale`` < 1 shrinks the documents for a smoke run)."""
    embed_seconds = embedding_latency()
    results: dict[str, Any] = {"embed_query": _percentiles(embed_seconds)}
    for name, count, vectors in CASES:
        results[name] = run_case(name, max(200, int(count * scale)), vectors, embed_seconds)
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    """The index table for results.md."""
    lines = ["", "## Index and search (LanceDB)", "",
             f"Query embedding (real CPU Infinity, minilm-colbert-128): p50 {results['embed_query']['p50_ms']:.1f} ms, "
             f"p95 {results['embed_query']['p95_ms']:.1f} ms.", "",
             "| case | numpy MaxSim p50/p95 | LanceDB exact p50/p95 | LanceDB ANN p50/p95 | + embedding, ANN p50 "
             "| ANN recall@10 | changed partition sync | index / artifacts size |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if name == "embed_query":
            continue
        lat = r["latency"]
        lines.append(
            f"| {name} ({r['documents']:,} x {r['vectors_per_document']} vectors) "
            f"| {lat['numpy']['p50_ms']:.1f} / {lat['numpy']['p95_ms']:.1f} ms "
            f"| {lat['exact']['p50_ms']:.1f} / {lat['exact']['p95_ms']:.1f} ms "
            f"| {lat['ann']['p50_ms']:.1f} / {lat['ann']['p95_ms']:.1f} ms "
            f"| {r['latency_with_embedding']['ann']['p50_ms']:.1f} ms | {r['ann_recall_at_10']:.3f} "
            f"| {r['changed_partition_sync_seconds']:.2f} s ({r['changed_partition_rows']} rows) "
            f"| {r['index_bytes'] / 1e6:.0f} / {r['artifact_bytes'] / 1e6:.0f} MB |")
    return lines
