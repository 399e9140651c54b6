"""End-to-end partition materialization (``pipeline.embed_partition``: read, embed, write the artifact).

Two measurements: documents/s of a partition against the load generator on the same images and server, and
the peak RSS of materializing a 2,000-image partition (~1 GB of vectors) through the bandwidth-bound fake,
taken in a fresh child process (``python -m benchmarks.partition memory ...``) so nothing else inflates it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from infinity_assets import artifacts, pipeline
from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.storage.documents import DocumentStore

from infinity_assets.testing.fake_infinity import MODEL
from .loadgen import load_generator
from .workloads import make_images, request_bodies

REPO = Path(__file__).resolve().parents[1]
PARTITION = "bench"


def write_partition(root: str, count: int) -> DocumentStore:
    """A local document store with ``count`` PNG images in batch folder ``bench``."""
    folder = Path(root) / "raw" / "images" / PARTITION
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(make_images(count)):
        (folder / f"page-{index:05d}.png").write_bytes(image)
    return DocumentStore(root)


def materialize(store: DocumentStore, url: str, concurrency: int = 8, row_group_size: int = 256,
                **client_options: Any) -> pipeline.PartitionReport:
    """One full materialization of the partition (any previous artifact removed first, so nothing is reused);
    ``client_options`` go to :class:`InfinityEmbeddings` (e.g. ``transport="http11"``)."""
    path = store.artifact_path("images", PARTITION)
    for stale in (path, artifacts.failures_path(path)):
        if store.fs.exists(stale):
            store.fs.rm(stale)
    with InfinityEmbeddings(url=url, model_name=MODEL, hidden_dim=128, embed_batch_size=10,
                            max_concurrency=concurrency, **client_options) as client:
        report = pipeline.embed_partition(store, client, "images", PARTITION, row_group_size=row_group_size)
    if report.embedded != report.total or report.failed:
        raise RuntimeError(f"the benchmark partition had failures: {report.failures[:3]}")
    return report


def throughput(url: str, count: int, repetitions: int = 3) -> dict[str, Any]:
    """Median documents/s of a materialization and of the load generator, interleaved, same images."""
    images = make_images(count)
    bodies = request_bodies(images, "image", MODEL, 10)
    with tempfile.TemporaryDirectory(prefix="bench-partition-") as root:
        ours, limit = against_load_generator(write_partition(root, count), url, bodies, repetitions)
    return {"documents": count, "ours_docs_s": count / ours, "limit_docs_s": count / limit}


def against_load_generator(store: DocumentStore, url: str, bodies: list[bytes],
                           repetitions: int) -> tuple[float, float]:
    """Median seconds of materializing the partition and of the load generator sending ``bodies``, after one
    warm-up of each (imports, page cache, first connections), repetitions interleaved."""
    materialize(store, url)
    load_generator(url, bodies[:8], 8)
    ours, limit = [], []
    for _ in range(repetitions):
        ours.append(materialize(store, url).seconds)
        limit.append(load_generator(url, bodies, 8))
    return statistics.median(ours), statistics.median(limit)


def peak_rss(url: str, count: int, row_group_size: int = 256) -> dict[str, Any]:
    """Materialize ``count`` images in a child process; its peak RSS (MB), seconds and artifact size."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.partition", "memory", "--url", url, "--count", str(count),
         "--row-group-size", str(row_group_size)],
        cwd=REPO, capture_output=True, text=True, check=False)
    if completed.returncode:
        raise RuntimeError(f"the memory benchmark child failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _high_water_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: that one survives exec and would report the
    parent's peak (the benchmark runner's) in a freshly started child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status; the memory benchmark needs Linux")


def _memory_child(url: str, count: int, row_group_size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as root:
        store = write_partition(root, count)
        baseline = _high_water_mb()
        report = materialize(store, url, row_group_size=row_group_size)
        peak = _high_water_mb()
        print(json.dumps({"documents": count, "vectors": report.vectors, "seconds": report.seconds,
                          "vector_mb": report.vectors * 128 * 4 / 2**20, "artifact_mb": report.artifact_bytes / 2**20,
                          "baseline_rss_mb": baseline, "peak_rss_mb": peak,
                          "row_group_size": row_group_size,
                          "memory_budget_mb": pipeline.DEFAULT_MEMORY_BUDGET / 2**20}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="child process of the partition memory benchmark")
    parser.add_argument("mode", choices=["memory"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--row-group-size", type=int, default=256)
    arguments = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    _memory_child(arguments.url, arguments.count, arguments.row_group_size)
