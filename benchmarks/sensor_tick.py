"""One tick of a corpus's new-documents sensor over 100,000 objects in SeaweedFS: seconds and peak memory.

The objects are uploaded first (not timed as part of the tick); the tick runs in a fresh child process
(``python -m benchmarks.sensor_tick tick``) against a temporary Dagster instance, so its peak RSS is its own.
S3 credentials reach the child through the standard AWS environment variables, never its command line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCHES = 500
#: Where the uploaded objects are kept between runs (``make clean`` removes .cache).
DATA_DIR = REPO / ".cache" / "bench-seaweedfs"


def run(objects: int = 100_000, data_dir: Path = DATA_DIR) -> dict[str, Any]:
    """Start SeaweedFS, upload ``objects`` small text objects in 500 batch folders, time one tick in a child.

    The upload (~2 minutes on 2 cores, botocore signing 100,000 PUTs) is kept in ``data_dir`` and reused by
    later runs; a marker object outside ``raw/`` records that it completed.
    """
    from infinity_assets_dev.seaweedfs import SeaweedFS

    with SeaweedFS(data_dir) as s3:
        fs, bucket = s3.filesystem(), "bench-sensor"
        marker = f"{bucket}/uploaded-{objects}"
        started = time.monotonic()
        if not fs.exists(marker):
            if not fs.exists(bucket):
                s3.create_bucket(bucket)
            fs.pipe({f"{bucket}/raw/text/batch-{i % BATCHES:03d}/doc-{i:06d}.txt": b"x" for i in range(objects)},
                    batch_size=64)
            fs.pipe_file(marker, b"done")
        upload_seconds = time.monotonic() - started
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.sensor_tick", "tick", "--root", f"s3://{bucket}"],
            cwd=REPO, env={**os.environ, **s3.environment()}, capture_output=True, text=True, check=False)
    if completed.returncode:
        raise RuntimeError(f"the sensor tick child failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"objects": objects, "upload_seconds": upload_seconds, "budget_seconds": _budget(), **result}


def _budget() -> float:
    """The sensor's default time budget, read from the corpus settings so the report follows the code."""
    from infinity_assets.corpus import SensorSettings

    return SensorSettings().time_budget_seconds


def _tick(root: str) -> None:
    """One tick of the sensor of a text corpus ``bench`` at ``root`` (S3 settings from the AWS variables)."""
    import dagster as dg

    from infinity_assets.corpus import ClientSettings, CorpusSpec, StoreSettings
    from infinity_assets.orchestration import build_corpus_definitions

    from .partition import _high_water_mb

    spec = CorpusSpec(name="bench", store=StoreSettings(root=root), text=ClientSettings())
    sensor = build_corpus_definitions(spec).resolve_sensor_def("bench_new_documents_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance)
        before = _high_water_mb()
        started = time.monotonic()
        result = sensor(context)
        seconds = time.monotonic() - started
        peak = _high_water_mb()
    print(json.dumps({
        "tick_seconds": seconds, "baseline_rss_mb": before, "peak_rss_mb": peak,
        "run_requests": len(result.run_requests or []),
        "new_partitions": sum(len(r.partition_keys) for r in result.dynamic_partitions_requests or []),
        "cursor_bytes": len(result.cursor or "")}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="child process of the sensor tick benchmark")
    parser.add_argument("mode", choices=["tick"])
    parser.add_argument("--root", required=True)
    _tick(parser.parse_args().root)
