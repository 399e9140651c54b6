"""What the client costs, on pinned cores: the fake server alone on core 0, the client under test alone on core 1.

With the server and the client sharing two cores, part of every gap to the load generator is the server's CPU,
not ours. Here each measure runs with this process pinned to one core and the server to the other, so a ratio
compares like with like, and the CPU milliseconds this process spends per item (every thread) are reported
beside it: the load generator (the floor: receive only), ours sync and async (receive + parse + decode), and
the partition end to end (+ read the documents, encode the request, write the Parquet artifact). Repetitions
are interleaved across measures; medians with min-max.

The settings A/B (:func:`settings_ab`) weighs the client's two process-level choices on the partition end to
end: the transport (``httpcore`` with large reads, or the ``http11`` receiver) and the glibc allocator tuning
(on, as in the embedding assets' run process, or off, as in a notebook). The allocator cannot be untuned in a
process, so every repetition of every variant is a fresh child process (pinned like the rest), variants
interleaved; each child reports the CPU ms per page of its first materialization (cold, as in a Dagster run
process), of warm ones, and of the client alone on the same images.

``python -m benchmarks.cpu_cost [--repetitions 5]`` (section ``cpu`` of ``make bench``);
``python -m benchmarks.cpu_cost --settings-only`` runs the A/B alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from infinity_assets.client import allocator

from infinity_assets.testing.fake_infinity import MODEL, SHAPES, FakeServerProcess
from .partition import REPO, materialize, write_partition
from .workloads import figure, make_images, run_client, spread

SERVER_CPU, CLIENT_CPU = 0, 1
#: (shape, items): the bandwidth-bound shape is a ColPali page (1,031 x 128 floats, ~0.7 MB of base64).
CASES = (("bandwidth", 400), ("latency", 800))
MEASURES = ("limit", "ours_sync", "ours_async", "partition")
LABELS = {"limit": "load generator (receive only)", "ours_sync": "ours, sync (+ parse, decode)",
          "ours_async": "ours, async (+ parse, decode)",
          "partition": "partition end to end (+ read, encode, write Parquet)"}


#: The settings A/B's variants: (transport, allocator tuned).
SETTINGS = {"http11, tuned": ("http11", True), "httpcore, tuned": ("httpcore", True),
            "http11, untuned": ("http11", False), "httpcore, untuned": ("httpcore", False)}
SETTINGS_PAGES, SETTINGS_ROUNDS = 400, 2


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
    allocator.tune()  # as the embedding assets' run process does, before the load generator's first repetition
    unpin = pinned(CLIENT_CPU)
    try:
        results: dict[str, Any] = {}
        for shape, count in CASES:
            results[shape] = run_case(shape, max(80, int(count * scale)), repetitions)
            r = results[shape]
            print(f"  {shape}: " + ", ".join(
                f"{name} {r['ratio'][name]['median']:.2f}x {r['cpu_ms_per_item'][name]['median']:.2f} ms"
                for name in MEASURES), flush=True)
    finally:
        unpin()
    results["settings"] = settings_ab(repetitions, max(80, int(SETTINGS_PAGES * scale)))
    return results


def settings_ab(repetitions: int = 5, pages: int = SETTINGS_PAGES) -> dict[str, Any]:
    """CPU ms per page of a partition end to end (first and warm) and of the client alone for each of
    :data:`SETTINGS`, each repetition a fresh child process on core 1 (the server on core 0), variants
    interleaved; medians with min-max, and what http11 and the tuning save of each."""
    measures = ("first_cpu_ms_per_page", "cpu_ms_per_page", "ms_per_page", "client_cpu_ms_per_page")
    found: dict[str, dict[str, list[float]]] = {measure: {name: [] for name in SETTINGS} for measure in measures}
    unpin = pinned(CLIENT_CPU)
    try:
        with FakeServerProcess.shape("bandwidth", cpu=SERVER_CPU) as server, \
                tempfile.TemporaryDirectory(prefix="bench-settings-") as root:
            write_partition(root, pages)
            for _ in range(repetitions):
                for name, (kind, tuned) in SETTINGS.items():
                    outcome = _settings_child(server.url, root, kind, tuned)
                    for measure in measures:
                        found[measure][name] += outcome[measure]
    finally:
        unpin()
    result: dict[str, Any] = {"pages": pages, "rounds_per_child": SETTINGS_ROUNDS, "repetitions": repetitions}
    for measure in measures:
        result[measure] = {name: spread(values) for name, values in found[measure].items()}
    for prefix, measure in (("", "cpu_ms_per_page"), ("first_", "first_cpu_ms_per_page"),
                            ("client_", "client_cpu_ms_per_page")):
        medians = {name: value["median"] for name, value in result[measure].items()}
        result[f"{prefix}http11_saves"] = {tuned: 1 - medians[f"http11, {tuned}"] / medians[f"httpcore, {tuned}"]
                                           for tuned in ("tuned", "untuned")}
        result[f"{prefix}tuning_saves"] = {kind: 1 - medians[f"{kind}, tuned"] / medians[f"{kind}, untuned"]
                                           for kind in ("http11", "httpcore")}
    medians = {name: value["median"] for name, value in result["cpu_ms_per_page"].items()}
    print("  settings: " + ", ".join(f"{name} {m:.2f} ms" for name, m in medians.items()), flush=True)
    return result


def _settings_child(url: str, root: str, kind: str, tuned: bool) -> dict[str, Any]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("INFINITY_ASSETS_MALLOC_TUNING", "INFINITY_HTTP_TRANSPORT")}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_cost", "--child", url, root, kind, "on" if tuned else "off"],
        cwd=REPO, capture_output=True, text=True, check=False, env={**env, "TQDM_DISABLE": "1"})
    if completed.returncode:
        raise RuntimeError(f"the settings benchmark child failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _child(url: str, root: str, kind: str, tune: str) -> None:
    """One variant of :func:`settings_ab`: a first materialization of the partition (what a Dagster run process
    does, cold), then :data:`SETTINGS_ROUNDS` warm ones, then as many of the client alone (``embed_images_batch``
    on the same images)."""
    from infinity_assets.client.embeddings import InfinityEmbeddings
    from infinity_assets.storage.documents import DocumentStore

    store, options = DocumentStore(root), {"transport": kind, "tune_allocator": tune == "on"}
    cpu_started = time.process_time()
    pages = materialize(store, url, **options).total  # also the warm-up
    outcome: dict[str, list[float]] = {"first_cpu_ms_per_page": [1000 * (time.process_time() - cpu_started) / pages],
                                       "cpu_ms_per_page": [], "ms_per_page": [], "client_cpu_ms_per_page": []}
    for _ in range(SETTINGS_ROUNDS):
        started, cpu_started = time.perf_counter(), time.process_time()
        materialize(store, url, **options)
        outcome["cpu_ms_per_page"].append(1000 * (time.process_time() - cpu_started) / pages)
        outcome["ms_per_page"].append(1000 * (time.perf_counter() - started) / pages)
    images = make_images(pages)
    with InfinityEmbeddings(url=url, model_name=MODEL, hidden_dim=128, embed_batch_size=10, max_concurrency=8,
                            **options) as client:
        client.embed_images_batch(images[:80])  # warm-up: connections, the hidden_dim probe
        for _ in range(SETTINGS_ROUNDS):
            cpu_started = time.process_time()
            client.embed_images_batch(images)
            outcome["client_cpu_ms_per_page"].append(1000 * (time.process_time() - cpu_started) / pages)
    print(json.dumps(outcome))


def markdown(results: dict[str, Any]) -> list[str]:
    """The pinned-core tables: ratio to the load generator and CPU ms per item, median (min-max)."""
    lines: list[str] = []
    for shape, r in results.items():
        if shape == "settings":
            continue
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
    return lines + (settings_markdown(results["settings"]) if "settings" in results else [])


def settings_markdown(r: dict[str, Any]) -> list[str]:
    """The settings A/B table: CPU ms per page of a partition end to end (the first one in a fresh
    process, and warm) and of the client alone, and the partition's wall ms per page, median (min-max)."""
    lines = ["", f"### Client settings A/B ({r['pages']} ColPali-sized pages, bandwidth-bound fake, batch 10, "
                 f"concurrency 8; {r['repetitions']} fresh processes per variant x {r['rounds_per_child']} rounds, "
                 f"interleaved): server on core {SERVER_CPU}, client on core {CLIENT_CPU}", "",
             "| transport, allocator | partition, first in a fresh process: CPU ms per page | partition, warm: "
             "CPU ms per page | partition, warm: wall ms per page | client alone (`embed_images_batch`), warm: CPU "
             "ms per page |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {figure(r['first_cpu_ms_per_page'][name])} | {figure(r['cpu_ms_per_page'][name])} | "
              f"{figure(r['ms_per_page'][name])} | {figure(r['client_cpu_ms_per_page'][name])} |" for name in SETTINGS]
    for prefix, what in (("first_", "a fresh process's first partition"), ("", "a warm partition's"),
                         ("client_", "the client's")):
        lines += ["", "http11 saves " + ", ".join(f"{100 * v:.1f} % ({k})" for k, v in r[f"{prefix}http11_saves"].items())
                  + f" of {what} CPU per page against httpcore; the allocator tuning saves "
                  + ", ".join(f"{100 * v:.1f} % ({k})" for k, v in r[f"{prefix}tuning_saves"].items()) + "."]
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--settings-only", action="store_true", help="only the transport / allocator A/B")
    parser.add_argument("--child", nargs=4, metavar=("URL", "ROOT", "TRANSPORT", "TUNE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        _child(*arguments.child)
        sys.exit(0)
    outcome = ({"settings": settings_ab(arguments.repetitions)} if arguments.settings_only
               else run(arguments.repetitions, arguments.scale))
    print(json.dumps(outcome, indent=1))
    print("\n".join(markdown(outcome)))
