"""``--only index``: the LanceDB index against brute-force numpy MaxSim over the artifacts.

Text: sentences of 14 random words from MiniLM's vocabulary, embedded by the real CPU Infinity server
(minilm-colbert-128, the real MiniLM weights projected to 128-d), queried with 5 consecutive words of a
random document (the retrieval set of the tests, scaled up). Pages: synthetic ColPali-sized pages (1,031 unit
vectors of 128-d around random topic centres); their recall is given for completeness only (random vectors
have near-ties that real pages do not). Artifacts of 500 documents each, on the local disk.

Per size: query latency p50/p95 of numpy MaxSim over the artifacts already in memory (the baseline), the
index searched exactly (flat) and with its IVF-PQ ANN index, each without and with the query's embedding;
recall@10 of ANN against exact; time of the first sync, and of a sync after one partition was re-embedded;
index size on disk (current version, after cleanup) against the artifacts' size.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from infinity_assets import InfinityEmbeddings, artifacts, index
from infinity_assets.artifacts import ArtifactWriter
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.pipeline import embed_partition
from infinity_assets.index.maxsim import maxsim_scores, normalized

MODEL, DIM = "minilm-colbert-128", 128
PER_PARTITION = 500
QUERIES = 30
#: (name, documents). 100,000 text documents (and 10,000 ColPali pages, 5 GB of floats) do not fit a few
#: minutes on 2 cores (embedding alone: ~5 min per 100k texts): scaled down, as the README says.
TEXT_CASES = (("text 1k", 1_000), ("text 10k", 10_000))
PAGE_CASES = (("ColPali-sized pages 1k", 1_000),)
PAGE_VECTORS = 1031
os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust warnings (small IVF partitions) drown the output


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _vocabulary() -> list[str]:
    from infinity_assets_dev.infinity import models_dir

    vocab = json.loads((models_dir() / MODEL / "tokenizer.json").read_text())["model"]["vocab"]
    return [word for word in vocab if word.isalpha() and len(word) > 3][:5000]


def _rewrite(store: DocumentStore, partition: str) -> None:
    """Publish a partition's artifact again with new embedded_at (as a re-embedding does): every row changes."""
    path = store.artifact_path("text", partition)
    artifact = artifacts.read_artifact(store.fs, path)
    with ArtifactWriter(store.fs, path, hidden_dim=artifact.hidden_dim, metadata=artifact.metadata) as writer:
        for number, doc_id in enumerate(artifact.doc_ids):
            writer.write(doc_id, artifact.source_uris[number], artifact.fingerprints[number],
                         artifact.vectors_of(number))


def _measure(store: DocumentStore, workdir: Path, queries: list[np.ndarray], embed: list[float]) -> dict[str, Any]:
    """Sync (ANN index built at once), then time numpy, exact and ANN searches, a changed partition, sizes."""
    started = time.perf_counter()
    first = index.sync_index(store, "text", ann_threshold_vectors=1)
    initial = time.perf_counter() - started
    assert first.ann_index, "the ANN index was not built"
    reader = index.IndexReader(store, "text")
    loaded = [artifacts.read_artifact(store.fs, p)
              for p in sorted(store.fs.glob(f"{store.path('embeddings/text')}/*.parquet"))]
    timings: dict[str, list[float]] = {"numpy": [], "exact": [], "ann": []}
    exact_ids, ann_ids = [], []
    for query in queries:
        started = time.perf_counter()
        scores = np.concatenate([maxsim_scores(query, a.vectors, a.offsets, normalize=True) for a in loaded])
        np.argpartition(-scores, 10)[:10]
        timings["numpy"].append(time.perf_counter() - started)
        started = time.perf_counter()
        exact_ids.append({(h.partition, h.doc_id) for h in reader.search(query, 10, exact=True)})
        timings["exact"].append(time.perf_counter() - started)
        started = time.perf_counter()
        ann_ids.append({(h.partition, h.doc_id) for h in reader.search(query, 10)})
        timings["ann"].append(time.perf_counter() - started)
    partition = reader.search(queries[0], 1, exact=True)[0].partition
    _rewrite(store, partition)
    started = time.perf_counter()
    update = index.sync_index(store, "text", ann_threshold_vectors=1)
    update_seconds = time.perf_counter() - started
    index.open_table(store, "text").optimize(cleanup_older_than=timedelta(0))  # size of the current version
    return {
        "documents": first.rows,
        "latency": {kind: _percentiles(s) for kind, s in timings.items()},
        "latency_with_embedding": {kind: _percentiles([e + s for e, s in zip(embed, seconds)])
                                   for kind, seconds in timings.items()},
        "ann_recall_at_10": statistics.mean(len(a & e) / 10 for a, e in zip(ann_ids, exact_ids)),
        "initial_sync_seconds": initial, "changed_partition_sync_seconds": update_seconds,
        "changed_partition_rows": update.updated,
        "index_bytes": _size(workdir / "index"), "artifact_bytes": _size(workdir / "embeddings"),
    }


def _report(name: str, result: dict[str, Any]) -> None:
    lat = result["latency"]
    print(f"  {name}: numpy p50 {lat['numpy']['p50_ms']:.1f} ms, LanceDB exact {lat['exact']['p50_ms']:.1f} ms, "
          f"ANN {lat['ann']['p50_ms']:.1f} ms (recall@10 {result['ann_recall_at_10']:.3f}); changed partition "
          f"synced in {result['changed_partition_sync_seconds']:.1f} s; index {result['index_bytes'] / 1e6:.0f} MB "
          f"vs artifacts {result['artifact_bytes'] / 1e6:.0f} MB", flush=True)


def text_case(server_url: str, count: int, words: list[str]) -> dict[str, Any]:
    """Real MiniLM embeddings of ``count`` generated documents."""
    rng = np.random.default_rng(count)
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        store = DocumentStore(str(workdir))
        documents = [" ".join(rng.choice(words, 14)) for _ in range(count)]
        with InfinityEmbeddings(url=server_url, model_name=MODEL, hidden_dim=DIM, embed_batch_size=32) as client:
            for start in range(0, count, PER_PARTITION):
                folder = workdir / "raw" / "text" / f"p{start:06d}"
                folder.mkdir(parents=True)
                for number in range(start, min(count, start + PER_PARTITION)):
                    (folder / f"d{number:06d}.txt").write_text(documents[number])
                embed_partition(store, client, "text", f"p{start:06d}")
            queries, embed = [], []
            for number in rng.integers(count, size=QUERIES):
                started = time.perf_counter()
                queries.append(client.embed_query(" ".join(documents[number].split()[4:9])))
                embed.append(time.perf_counter() - started)
        return {**_measure(store, workdir, queries, embed), "vectors_per_document": "~16 (real)",
                "embed_query": _percentiles(embed)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def page_case(count: int, embed: list[float]) -> dict[str, Any]:
    """Synthetic ColPali-sized pages (no server: their vectors are generated)."""
    rng = np.random.default_rng(count)
    centers = normalized(rng.standard_normal((512, DIM)).astype(np.float32))

    def vectors(n: int) -> np.ndarray:
        return normalized(centers[rng.integers(len(centers), size=n)]
                          + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32))

    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        store = DocumentStore(str(workdir))
        store.ensure_artifact_dir("text")
        for start in range(0, count, PER_PARTITION):
            partition = f"p{start:06d}"
            with ArtifactWriter(store.fs, store.artifact_path("text", partition), hidden_dim=DIM,
                                metadata={"model": "colpali-sized", "partition": partition}) as writer:
                for number in range(start, min(count, start + PER_PARTITION)):
                    writer.write(f"page-{number}", f"synthetic://{number}", f"fp{number}", vectors(PAGE_VECTORS))
        queries = [vectors(24) for _ in range(QUERIES)]
        return {**_measure(store, workdir, queries, embed), "vectors_per_document": PAGE_VECTORS}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(scale: float = 1.0) -> dict[str, Any]:
    """Every case (``scale`` < 1 shrinks them for a smoke run)."""
    from infinity_assets_dev.infinity import InfinityServer

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as logs, InfinityServer([MODEL], log_dir=Path(logs)) as server:
        words = _vocabulary()
        for name, count in TEXT_CASES:
            results[name] = text_case(server.url, max(PER_PARTITION, int(count * scale)), words)
            _report(name, results[name])
    embed = [ms / 1000 for ms in (results[TEXT_CASES[0][0]]["embed_query"]["p50_ms"],)] * QUERIES
    for name, count in PAGE_CASES:
        results[name] = page_case(max(PER_PARTITION, int(count * scale)), embed)
        _report(name, results[name])
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    """The index table for results.md."""
    lines = ["", "## Index and search (LanceDB)", "",
             "Query latency p50 / p95 (ms) over 30 queries; `+ emb.` adds the query's own embedding (real CPU "
             "Infinity server, minilm-colbert-128). numpy = brute-force MaxSim over the artifacts in memory.", "",
             "| case | numpy | LanceDB exact | LanceDB ANN | ANN + emb. | ANN recall@10 | first sync "
             "| changed partition sync | index / artifacts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lat = r["latency"]
        lines.append(
            f"| {name} ({r['documents']:,} x {r['vectors_per_document']} vectors) "
            + "".join(f"| {lat[k]['p50_ms']:.1f} / {lat[k]['p95_ms']:.1f} " for k in ("numpy", "exact", "ann"))
            + f"| {r['latency_with_embedding']['ann']['p50_ms']:.1f} / {r['latency_with_embedding']['ann']['p95_ms']:.1f} "
            f"| {r['ann_recall_at_10']:.3f} | {r['initial_sync_seconds']:.1f} s "
            f"| {r['changed_partition_sync_seconds']:.2f} s ({r['changed_partition_rows']} rows) "
            f"| {r['index_bytes'] / 1e6:.0f} / {r['artifact_bytes'] / 1e6:.0f} MB |")
    return lines
