"""What the client costs, on pinned cores: the fake server alone on core 0, the client under test alone on core 1.

With the server and the client sharing two cores, part of every gap to the load generator is the server's CPU,
not ours. Here each measure runs with this process pinned to one core and the server to the other, so a ratio
compares like with like, and the CPU milliseconds this process spends per item (every thread) are reported
beside it: the load generator (the floor: receive only), ours sync and async (receive + parse + decode), and
the partition end to end (+ read the documents, encode the request, write the Parquet artifact). Repetitions
are interleaved across measures; medians with min-max.

``python -m benchmarks.cpu_cost [--repetitions 5]`` (section ``cpu`` of ``make bench``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from infinity_assets.client import allocator

from .fake_server import MODEL, SHAPES, FakeServerProcess
from .partition import materialize, write_partition
from .workloads import figure, make_images, run_client, spread

SERVER_CPU, CLIENT_CPU = 0, 1
#: (shape, items): the bandwidth-bound shape is a ColPali page (1,031 x 128 floats, ~0.7 MB of base64).
CASES = (("bandwidth", 400), ("latency", 800))
MEASURES = ("limit", "ours_sync", "ours_async", "partition")
LABELS = {"limit": "load generator (receive only)", "ours_sync": "ours, sync (+ parse, decode)",
          "ours_async": "ours, async (+ parse, decode)",
          "partition": "partition end to end (+ read, encode, write Parquet)"}


def pinned(cpu: int) -> Callable[[], None]:
    """Pin this process (and the threads it starts) to ``cpu``; return the function that undoes it."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return lambda: os.sched_setaffinity(0, before)


def run_case(shape: str, count: int, repetitions: int) -> dict[str, Any]:
    """Every measure on one shape, ``repetitions`` interleaved rounds: items/s and CPU ms per item."""
    images, rows = make_images(count), SHAPES[shape]["rows"]
    seconds: dict[str, list[float]] = {name: [] for name in MEASURES}
    cpu: dict[str, list[float]] = {name: [] for name in MEASURES}
    with FakeServerProcess.shape(shape, cpu=SERVER_CPU) as server, \
            tempfile.TemporaryDirectory(prefix="bench-cpu-") as root:
        store = write_partition(root, count)
        materialize(store, server.url)  # warm-up: imports, page cache
        for _ in range(repetitions):
            for name in MEASURES:
                if name == "partition":
                    started = time.process_time()
                    seconds[name].append(materialize(store, server.url).seconds)
                    cpu[name].append(time.process_time() - started)
                else:
                    seconds[name] += run_client(name, server.url, MODEL, "image", images, rows=rows,
                                                cpu_seconds=cpu[name])
    per_s = {name: [count / s for s in values] for name, values in seconds.items()}
    limit = statistics.median(per_s["limit"])
    return {"items": count, "rows": rows, "repetitions": repetitions,
            "per_s": {name: spread(values) for name, values in per_s.items()},
            "ratio": {name: spread([v / limit for v in values]) for name, values in per_s.items()},
            "cpu_ms_per_item": {name: spread([1000 * c / count for c in values]) for name, values in cpu.items()}}


def run(repetitions: int = 5, scale: float = 1.0) -> dict[str, Any]:
    """Both shapes, this process on core 1 and the server on core 0 (needs 2 cores)."""
    if len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("the pinned benchmark needs two cores (one for the server, one for the client)")
    allocator.tune()  # as every client does on construction, before the load generator's first repetition
    unpin = pinned(CLIENT_CPU)
    try:
        results = {}
        for shape, count in CASES:
            results[shape] = run_case(shape, max(80, int(count * scale)), repetitions)
            r = results[shape]
            print(f"  {shape}: " + ", ".join(
                f"{name} {r['ratio'][name]['median']:.2f}x {r['cpu_ms_per_item'][name]['median']:.2f} ms"
                for name in MEASURES), flush=True)
        return results
    finally:
        unpin()


def markdown(results: dict[str, Any]) -> list[str]:
    """The pinned-core tables: ratio to the load generator and CPU ms per item, median (min-max)."""
    lines: list[str] = []
    for shape, r in results.items():
        lines += ["", f"### Pinned cores, {shape}-bound images ({r['rows']} x 128 vectors per item, batch 10, "
                      f"concurrency 8, {r['items']} items, {r['repetitions']} interleaved repetitions): server on "
                      f"core {SERVER_CPU}, client on core {CLIENT_CPU}", "",
                  "| measure | items/s | x load generator | client CPU ms per item | target |",
                  "|---|---:|---:|---:|---|"]
        for name in MEASURES:
            target = {"ours_sync": 0.9, "ours_async": 0.9, "partition": 0.8}.get(name)
            if shape == "latency" and name == "partition":
                target = None
            verdict = ""
            if target is not None:
                verdict = f">= {target} x: {'met' if r['ratio'][name]['median'] >= target else '**missed**'}"
            lines.append(f"| {LABELS[name]} | {figure(r['per_s'][name], 0)} | {figure(r['ratio'][name])} | "
                         f"{figure(r['cpu_ms_per_item'][name])} | {verdict} |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    arguments = parser.parse_args()
    outcome = run(arguments.repetitions, arguments.scale)
    print(json.dumps(outcome, indent=1))
    print("\n".join(markdown(outcome)))
