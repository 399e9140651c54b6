"""``make bench``: every benchmark of issue 7 in one command, on 127.0.0.1; prints and writes the results table.

Sections (``--only`` picks some): ``throughput`` (fake server, both shapes, all clients side by side),
``cpu`` (pinned cores: the server on one, the client under test on the other; CPU ms per item, ``cpu_cost.py``),
``sweep`` (throughput against concurrency, the plot), ``decoding``, ``real`` (real CPU Infinity server),
``partition`` (end-to-end materialization), ``memory`` (2,000-image partition) and ``sensor`` (one tick over
100,000 SeaweedFS objects), ``index`` (two-stage search against exact MaxSim, LanceDB and public engines at 10,000-100,000 pages; ``index_scale.py``), ``pdf`` (render cost per page, peak RSS of a
1,000-page PDF, ``pdf_pages.py``), ``dagster`` (Dagster's own cost at 10,000 and 100,000 dynamic partitions,
``dagster_scale.py``), ``backfill`` (a 2,000-batch backfill through the daemon of the production deployment,
``backfill.py``), ``encoding`` (the artifact's Parquet encoding: write and read CPU ms per ColPali page for the
current settings and the main alternatives, ``artifact_encoding.py``; all options: run that module), ``service``
(`infinity-assets serve`: the API's p50/p95 under concurrent clients against ``search_text`` called directly, and
the viewer's page weight, ``service.py``).
Results go to ``benchmarks/results/`` after each section.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make the repo importable


from benchmarks import (  # noqa: E402
    artifact_encoding,
    backfill,
    cpu_cost,
    dagster_scale,
    decoding,
    index_scale,
    partition,
    pdf_pages,
    real_server,
    report,
    sensor_tick,
    service,
)
from benchmarks.baselines import ensure_official_client  # noqa: E402
from infinity_assets.client import allocator  # noqa: E402
from infinity_assets.testing.fake_infinity import MODEL, SHAPES, FakeServerProcess  # noqa: E402
from benchmarks.workloads import CLIENTS, make_images, make_texts, run_client  # noqa: E402

SECTIONS = ("throughput", "cpu", "sweep", "decoding", "real", "partition", "memory", "sensor", "index", "pdf", "dagster",
            "backfill", "encoding", "service")
#: (shape, modality, items): sized so the slowest client (the seed's) takes a few seconds per repetition.
THROUGHPUT_CASES = (("latency", "text", 1600), ("latency", "image", 800), ("bandwidth", "image", 400))
SWEEP_CASES = (("latency", "text"), ("bandwidth", "image"))
CONCURRENCIES = (1, 2, 4, 8, 16)


def _inputs(modality: str, count: int) -> list[Any]:
    return make_texts(count) if modality == "text" else make_images(count)


def throughput(repetitions: int, scale: float) -> dict[str, Any]:
    """All clients at batch 10, concurrency 8, on each fake shape; repetitions interleaved across clients."""
    tables: dict[str, Any] = {}
    for shape, modality, count in THROUGHPUT_CASES:
        count = max(80, int(count * scale))
        inputs, rows = _inputs(modality, count), SHAPES[shape]["rows"]
        times: dict[str, list[float]] = {name: [] for name in CLIENTS}
        with FakeServerProcess.shape(shape) as server:
            for _ in range(repetitions):
                for name in times:
                    times[name] += run_client(name, server.url, MODEL, modality, inputs, rows=rows)
        per_s = {name: count / statistics.median(seconds) for name, seconds in times.items()}
        tables[f"{shape}/{modality}"] = {"count": count, "rows": rows, "per_s": per_s, "seconds": times}
        print(f"  {shape}/{modality}: " + ", ".join(f"{n} {v:,.0f}/s" for n, v in per_s.items()), flush=True)
    return tables


def sweep(scale: float) -> dict[str, Any]:
    """Items/s against concurrency for each client (the seed's algorithm is sequential: concurrency 1 only)."""
    curves: dict[str, Any] = {}
    for shape, modality in SWEEP_CASES:
        rows, per_item = SHAPES[shape]["rows"], (200 if shape == "latency" else 50)
        key = f"{shape}/{modality}"
        curves[key] = {}
        with FakeServerProcess.shape(shape) as server:
            for name in CLIENTS:
                points = {}
                for concurrency in CONCURRENCIES if name != "seed" else (1,):
                    count = max(40, int(per_item * max(concurrency, 2) * scale))
                    seconds = run_client(name, server.url, MODEL, modality, _inputs(modality, count),
                                         concurrency=concurrency, rows=rows)[0]
                    points[str(concurrency)] = count / seconds
                curves[key][name] = points
                print(f"  {key} {name}: " + ", ".join(f"c={c} {v:,.0f}/s" for c, v in points.items()), flush=True)
    return curves


def main() -> int:
    """Run the chosen sections, print the table, write benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repetition (a smoke run)")
    parser.add_argument("--index-pages", type=int, default=None,
                        help="the index section's largest synthetic table (default 100,000); results go to "
                             "benchmarks/results/index-<pages>/, not over the full run's")
    parser.add_argument("--index-s3-pages", type=int, default=None,
                        help="the synthetic table the index section's S3 rows upload to SeaweedFS and "
                             "search (one of its sizes; default the smallest); needs ~3x its size free")
    parser.add_argument("--index-s3-move-build", action="store_true",
                        help="the S3 rows move the local build to SeaweedFS (downloaded back after them), so "
                             "the disk needs ~2x the table free, not ~3x, for the reader to copy it")
    parser.add_argument("--index-parts", default=None,
                        help="comma-separated parts of the index section to run (default: all); results "
                             "go to benchmarks/results/index-<pages>-<parts>/")
    args = parser.parse_args()
    if args.index_s3_pages:  # read where the S3 rows run, in this process or a part's own
        os.environ[index_scale.S3_PAGES_VARIABLE] = str(args.index_s3_pages)
    if args.index_s3_move_build:
        os.environ[index_scale.S3_MOVE_BUILD_VARIABLE] = "1"
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    os.environ.setdefault("TQDM_DISABLE", "1")
    repetitions, scale = (1, 0.25) if args.quick else (args.repetitions, 1.0)
    ensure_official_client()
    allocator.tune()  # as the embedding assets' run process does: every client measured gets the same allocator
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, {platform.platform()}, "
                                          f"Python {platform.python_version()}"}
    # a smoke run's figures are not results: they go beside them, not over them
    directory = report.RESULTS / "quick" if args.quick else report.RESULTS
    if (args.index_pages or args.index_parts) and not args.quick:
        directory = report.RESULTS / "-".join(["index", str(args.index_pages or "full"),
                                               *(args.index_parts.split(",") if args.index_parts else [])])
    started = time.monotonic()
    for section in chosen:
        print(f"[{time.monotonic() - started:5.0f}s] {section}", flush=True)
        if section == "throughput":
            results["throughput"] = throughput(repetitions, scale)
        elif section == "cpu":
            results["cpu"] = cpu_cost.run(max(repetitions, 5) if not args.quick else 1, scale)
        elif section == "sweep":
            results["sweep"] = sweep(scale)
        elif section == "decoding":
            results["decoding"] = decoding.run()
        elif section == "real":
            results["real_server"] = real_server.run(texts=int(400 * scale), images=int(160 * scale),
                                                     repetitions=repetitions)
        elif section == "partition":
            results["partition"] = {}
            for shape, count in (("latency", 800), ("bandwidth", 400)):
                with FakeServerProcess.shape(shape) as server:
                    results["partition"][shape] = partition.throughput(server.url, max(80, int(count * scale)),
                                                                       repetitions)
        elif section == "memory":
            with FakeServerProcess.shape("bandwidth") as server:
                results["memory"] = partition.peak_rss(server.url, 2000)
        elif section == "sensor":
            results["sensor"] = sensor_tick.run()
        elif section == "index":
            parts = tuple(args.index_parts.split(",")) if args.index_parts else None
            results["index"] = index_scale.run(quick=args.quick, pages=args.index_pages, parts=parts)
        elif section == "dagster":
            results["dagster"] = dagster_scale.run()
        elif section == "backfill":
            results["backfill"] = backfill.run(count=max(200, int(2000 * scale)), sample=max(20, int(100 * scale)))
        elif section == "encoding":
            results["encoding"] = artifact_encoding.run(pages=max(100, int(400 * scale)), repetitions=repetitions,
                                                        only=artifact_encoding.SECTION_OPTIONS)
        elif section == "service":
            results["service"] = service.run(requests=max(60, int(200 * scale)))
        elif section == "pdf":
            with FakeServerProcess.shape("bandwidth") as server:
                results["pdf"] = {"render": pdf_pages.render(max(50, int(200 * scale))),
                                  "end_to_end": [pdf_pages.end_to_end(server.url, max(1, int(documents * scale)),
                                                                      pages, repetitions=repetitions)
                                                 for documents, pages in pdf_pages.SHAPES],
                                  "memory": pdf_pages.peak_rss(server.url, max(250, int(1000 * scale)))}
        report.write(results, directory)
    results["total_seconds"] = time.monotonic() - started
    print(report.write(results, directory))
    print(f"\n{results['total_seconds']:.0f}s; written to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
