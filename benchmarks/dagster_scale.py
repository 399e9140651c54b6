"""What Dagster itself costs at 10,000 and 100,000 dynamic partitions (one per batch folder), on this machine.

On a fresh SQLite instance (the default ``dagster dev`` storage; PostgreSQL is typically faster for the
queries and is what deploy/dagster.yaml uses): adding the partitions in one request (what the sensor does per
tick, in smaller groups), reading them back (every sensor tick and every UI partition view does), recording
one materialization per partition (``report_runless_asset_event``, the cost of the events a backfill writes),
and the materialized-partitions query behind the UI's partition status.
``python -m benchmarks.dagster_scale [--sizes 10000,100000]`` or ``benchmarks/run.py --only dagster``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import dagster as dg

#: The names a corpus ``default`` gives its text batches and embeddings.
PARTITIONS_DEF = "default_text_batches"
ASSET = dg.AssetKey(["default", "text_embeddings"])


def measure(size: int, materialized: int = 10_000) -> dict[str, Any]:
    """Seconds for each Dagster operation with ``size`` dynamic partitions (``materialized`` of them done)."""
    keys = [f"batch-{i:07d}" for i in range(size)]
    with tempfile.TemporaryDirectory(prefix="bench-dagster-") as home, \
            dg.DagsterInstance.from_config(home) as instance:
        started = time.perf_counter()
        for start in range(0, size, 1000):  # the sensor adds at most a tick's worth at once
            instance.add_dynamic_partitions(PARTITIONS_DEF, keys[start:start + 1000])
        add_s = time.perf_counter() - started
        started = time.perf_counter()
        found = instance.get_dynamic_partitions(PARTITIONS_DEF)
        list_s = time.perf_counter() - started
        assert len(found) == size
        done = min(size, materialized)
        started = time.perf_counter()
        for key in keys[:done]:
            instance.report_runless_asset_event(dg.AssetMaterialization(ASSET, partition=key))
        events_s = time.perf_counter() - started
        started = time.perf_counter()
        statuses = instance.get_materialized_partitions(ASSET)
        status_s = time.perf_counter() - started
        assert len(statuses) == done
    return {"partitions": size, "add_s": add_s, "list_s": list_s, "materialized": done,
            "event_ms": 1000 * events_s / done, "materialized_query_s": status_s}


def run(sizes: tuple[int, ...] = (10_000, 100_000)) -> list[dict[str, Any]]:
    """One measurement per size."""
    return [measure(size) for size in sizes]


def markdown(results: list[dict[str, Any]]) -> list[str]:
    """The Dagster rows of the results table."""
    lines = ["", "### Dagster at scale (SQLite instance, dynamic partitions)", "",
             "| partitions | add (1,000 per request) | list them | one materialization event | "
             "materialized-partitions query |", "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['partitions']:,} | {r['add_s']:.1f} s | {1000 * r['list_s']:.0f} ms | "
                     f"{r['event_ms']:.1f} ms | {1000 * r['materialized_query_s']:.0f} ms "
                     f"({r['materialized']:,} materialized) |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    arguments = parser.parse_args()
    results = run(tuple(int(s) for s in arguments.sizes.split(",")))
    print(json.dumps(results, indent=1))
    print("\n".join(markdown(results)))
