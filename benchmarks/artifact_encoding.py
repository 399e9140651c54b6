"""What writing and reading an artifact costs per ColPali page (1,031 x 128 float32), lever by lever (issue 14).

Every option is written end to end through :class:`~infinity_assets.artifacts.ArtifactWriter` on the local
filesystem (its background write thread included) and read back with
:func:`~infinity_assets.artifacts.read_artifact`; figures are CPU time of the whole process
(``time.process_time``: the machine is shared, wall time would measure the neighbours), repetitions interleaved
across options, median and min-max. The files go to ``/dev/shm`` (tmpfs) when there is one: a local filesystem
whose fsync does not wait for a disk, which would make a run take minutes without changing CPU time. Two kinds
of vectors: L2-normalized float32 rows, and the same rounded to bf16 (low 16 mantissa bits zero: what a bf16 GPU
model returns), which compress very differently.

A breakdown explains the baseline: building the Arrow table (``_rows_table``), encoding the vector column as
the artifact's ``list<fixed_size_list<float32>>`` against the same floats as a flat float32 column (the
difference is Parquet's repetition/definition levels, inherent to the nested type, which is a contract).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infinity_assets import artifacts
from infinity_assets.client import allocator
from infinity_assets.testing.fake_infinity import MODEL, SHAPES, FakeServerProcess

from .workloads import figure, make_images, run_client, spread

PAGE_VECTORS, HIDDEN_DIM = 1031, 128
#: Distinct pages generated per kind and cycled: 64 x 0.5 MB, far more than one Parquet data page can see, so
#: cycling gives the compressor nothing to find that fresh pages would not.
POOL = 64
KINDS = ("float32", "bf16")
VECTOR_COLUMNS = ("embedding",)
SCALAR_PARQUET_COLUMNS = ("doc_id", "source_uri", "fingerprint", "n_vectors", "embedded_at", "page", "page_text")


def vector_codec(codec: str, level: int | None = None) -> dict[str, Any]:
    """Parquet options compressing the vector floats with ``codec`` (and ``level``) and the other columns with
    zstd, as the baseline does."""
    compression = {**{column: "zstd" for column in SCALAR_PARQUET_COLUMNS}, artifacts.VECTOR_VALUES: codec}
    options: dict[str, Any] = {"compression": compression}
    if level is not None:
        options["compression_level"] = {artifacts.VECTOR_VALUES: level}
    return options


NO_SPLIT = {"use_byte_stream_split": False}
#: name: (parquet_options, other ArtifactWriter arguments); the first is the current setting, the baseline.
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "current: zstd (default level), byte stream split": ({}, {}),
    "zstd level 1": (vector_codec("zstd", 1), {}),
    "zstd, no byte stream split": (NO_SPLIT, {}),
    "lz4, byte stream split": (vector_codec("lz4"), {}),
    "lz4, no byte stream split": ({**vector_codec("lz4"), **NO_SPLIT}, {}),
    "snappy, byte stream split": (vector_codec("snappy"), {}),
    "snappy, no byte stream split": ({**vector_codec("snappy"), **NO_SPLIT}, {}),
    "uncompressed, byte stream split": (vector_codec("none"), {}),
    "uncompressed, no byte stream split": ({**vector_codec("none"), **NO_SPLIT}, {}),
    "data pages 8 MiB (default 1 MiB)": ({"data_page_size": 8 << 20}, {}),
    # Pages are cut between documents: any size under one document's 0.5 MB gives one data page per document.
    "data pages 64 KiB (one per document)": ({"data_page_size": 64 << 10}, {}),
    "page index written": ({"write_page_index": True}, {}),
    "row groups of 16 MiB (embed_partition's; writer default 64 MiB)": ({}, {"row_group_bytes": 16 << 20}),
    "row groups of 8 pages": ({}, {"row_group_size": 8}),
    "float16 vectors (vector_encoding float16: no split)": ({}, {"vector_encoding": "float16"}),
    "float16 vectors, byte stream split (DuckDB cannot read it)": (
        {"use_byte_stream_split": [artifacts.VECTOR_VALUES]}, {"vector_encoding": "float16"}),
}
BASELINE = next(iter(OPTIONS))
#: What ``make bench --only encoding`` measures besides the baseline (about 1.5 minutes): why byte stream split
#: and zstd stay, and what the pipeline's smaller row groups cost. ``python -m benchmarks.artifact_encoding``: all.
SECTION_OPTIONS = ("zstd, no byte stream split", "uncompressed, byte stream split",
                   "row groups of 16 MiB (embed_partition's; writer default 64 MiB)",
                   "float16 vectors (vector_encoding float16: no split)",
                   "float16 vectors, byte stream split (DuckDB cannot read it)")
#: The vector encodings compared end to end (float32 first: the baseline).
ENCODINGS = ("float32", "float16")
WARM_UP_PAGES = 16


def make_pages(kind: str, count: int = POOL, seed: int = 14) -> list[np.ndarray]:
    """``count`` ColPali-shaped pages: N(0, 1)/sqrt(128) rows, L2-normalized; ``bf16`` rounds them to bf16."""
    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(count):
        page = (rng.standard_normal((PAGE_VECTORS, HIDDEN_DIM)) / np.sqrt(HIDDEN_DIM)).astype(np.float32)
        page /= np.linalg.norm(page, axis=1, keepdims=True)
        if kind == "bf16":  # round to nearest even, then drop the low 16 bits
            bits = page.view(np.uint32)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            page = bits.view(np.float32)
        pages.append(page)
    return pages


def _cpu(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.process_time()
    outcome = action()
    return time.process_time() - started, outcome


def write_artifact(path: str, pages: list[np.ndarray], count: int, parquet_options: dict[str, Any],
                   writer_arguments: dict[str, Any]) -> None:
    """``count`` pages (cycling through ``pages``) as one artifact at ``path``, as the pipeline writes PDFs."""
    fs = fsspec.filesystem("file")
    now = datetime.now(timezone.utc)
    with artifacts.ArtifactWriter(fs, path, hidden_dim=HIDDEN_DIM, metadata={"model": "bench"},
                                  parquet_options=parquet_options, **writer_arguments) as writer:
        for index in range(count):
            writer.write(f"doc.pdf#page={index + 1}", "s3://bucket/raw/pdf/b/doc.pdf", "etag-1",
                         pages[index % len(pages)], now, index + 1, f"text of page {index + 1}")


def options_run(count: int, repetitions: int, workdir: Path,
                options: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Write and read ``count`` pages with each of ``options``, repetitions interleaved across options and kinds."""
    fs = fsspec.filesystem("file")
    pools = {kind: make_pages(kind) for kind in KINDS}
    samples = {kind: {name: {"write": [], "read": [], "bytes": 0} for name in options} for kind in KINDS}
    for repetition in range(repetitions + 1):  # round 0 warms every option up on a few pages, not counted
        pages = count if repetition else WARM_UP_PAGES
        for kind in KINDS:
            for name, (parquet_options, writer_arguments) in options.items():
                path = str(workdir / f"{kind}.parquet")
                write_cpu, _ = _cpu(lambda: write_artifact(path, pools[kind], pages, parquet_options,
                                                           writer_arguments))
                read_cpu, artifact = _cpu(lambda: artifacts.read_artifact(fs, path))
                last, dtype = pages - 1, artifacts.vector_dtype(writer_arguments.get("vector_encoding", "float32"))
                if not (np.array_equal(artifact.vectors_of(0), pools[kind][0].astype(dtype))
                        and np.array_equal(artifact.vectors_of(last), pools[kind][last % POOL].astype(dtype))):
                    raise AssertionError(f"{name}: the vectors read back differ from those written")
                if repetition:
                    sample = samples[kind][name]
                    sample["write"].append(write_cpu)
                    sample["read"].append(read_cpu)
                    sample["bytes"] = Path(path).stat().st_size
                del artifact
        print(f"  options: round {repetition} of {repetitions} done", flush=True)
    table: dict[str, Any] = {}
    for kind in KINDS:
        table[kind] = {}
        for name, sample in samples[kind].items():
            table[kind][name] = {"write_ms": spread(sample["write"], 1000 / count),
                                 "read_ms": spread(sample["read"], 1000 / count),
                                 "bytes_per_page": sample["bytes"] / count}
    return table


def _vector_rows(pages: list[np.ndarray], count: int) -> list[artifacts.Row]:
    now = datetime.now(timezone.utc)
    return [(f"doc.pdf#page={i + 1}", "s3://bucket/raw/pdf/b/doc.pdf", "etag-1", pages[i % len(pages)], now,
             i + 1, f"text of page {i + 1}") for i in range(count)]


def breakdown_run(count: int, repetitions: int, workdir: Path) -> dict[str, Any]:
    """CPU per page of building the Arrow table, and of encoding the vectors nested (the artifact) or flat."""
    schema = artifacts.artifact_schema(HIDDEN_DIM)
    vector_options = {"compression": "zstd", "use_dictionary": False, "write_statistics": False,
                      "use_byte_stream_split": True}
    result: dict[str, Any] = {}
    for kind in KINDS:
        rows = _vector_rows(make_pages(kind, POOL), count)
        nested = artifacts._rows_table(rows, schema).select(["embedding"])
        flat = pa.table({"values": nested.column("embedding").combine_chunks().flatten().flatten()})
        steps: dict[str, list[float]] = {"rows_table": [], "nested": [], "flat": [], "nested_plain": [],
                                         "flat_plain": []}
        for repetition in range(repetitions + 1):  # round 0 warms up
            seconds, _ = _cpu(lambda: artifacts._rows_table(rows, schema))
            timings = {"rows_table": seconds}
            for step, table, compression in (("nested", nested, "zstd"), ("flat", flat, "zstd"),
                                             ("nested_plain", nested, "none"), ("flat_plain", flat, "none")):
                path = workdir / f"{step}.parquet"
                options = {**vector_options, "compression": compression,
                           "use_byte_stream_split": compression != "none"}
                timings[step], _ = _cpu(lambda: pq.write_table(table, path, **options))
            if repetition:
                for step, seconds in timings.items():
                    steps[step].append(seconds)
        result[kind] = {step: spread(values, 1000 / count) for step, values in steps.items()}
        print(f"  breakdown {kind}: " + ", ".join(f"{s} {v['median']:.2f} ms" for s, v in result[kind].items()),
              flush=True)
    return result


@contextlib.contextmanager
def _vector_encoding(encoding: str) -> Iterator[None]:
    """``INFINITY_ASSETS_VECTOR_ENCODING=encoding`` for the block: the setting a deployment uses."""
    before = os.environ.get(artifacts.VECTOR_ENCODING_ENV)
    os.environ[artifacts.VECTOR_ENCODING_ENV] = encoding
    try:
        yield
    finally:
        if before is None:
            del os.environ[artifacts.VECTOR_ENCODING_ENV]
        else:
            os.environ[artifacts.VECTOR_ENCODING_ENV] = before


def end_to_end(pages: int = 400, repetitions: int = 3) -> dict[str, Any]:
    """CPU ms and artifact bytes per page of a partition end to end (read the PNGs, embed through the
    bandwidth-bound fake, write the artifact) for each of :data:`ENCODINGS`, against the load generator
    (receive only) on the same pages.

    The setup of ``cpu_cost.py``: the fake server pinned to core 0, this process to core 1, the allocator tuned
    as in the embedding assets' run process, repetitions interleaved; CPU is this process's (every thread).
    """
    from .cpu_cost import CLIENT_CPU, SERVER_CPU, pinned
    from .partition import materialize, write_partition

    if len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("the end-to-end encoding benchmark needs two cores (server and client pinned apart)")
    allocator.tune()
    cpu: dict[str, list[float]] = {name: [] for name in ("limit", *ENCODINGS)}
    sizes: dict[str, float] = {}
    unpin = pinned(CLIENT_CPU)
    try:
        with FakeServerProcess.shape("bandwidth", cpu=SERVER_CPU) as server, \
                tempfile.TemporaryDirectory(prefix="bench-encoding-e2e-") as root:
            store, images = write_partition(root, pages), make_images(pages)
            for encoding in ENCODINGS:  # warm-up: imports, page cache, connections
                with _vector_encoding(encoding):
                    materialize(store, server.url)
            for _ in range(repetitions):
                run_client("limit", server.url, MODEL, "image", images, rows=SHAPES["bandwidth"]["rows"],
                           cpu_seconds=cpu["limit"])
                for encoding in ENCODINGS:
                    with _vector_encoding(encoding):
                        started = time.process_time()
                        report = materialize(store, server.url)
                        cpu[encoding].append(time.process_time() - started)
                    if report.vector_encoding != encoding:
                        raise AssertionError(f"asked for {encoding}, the partition wrote {report.vector_encoding}")
                    sizes[encoding] = report.artifact_bytes / report.total
    finally:
        unpin()
    result = {"pages": pages, "repetitions": repetitions, "bytes_per_page": sizes,
              "cpu_ms_per_page": {name: spread(values, 1000 / pages) for name, values in cpu.items()}}
    print("  end to end: " + ", ".join(f"{name} {v['median']:.2f} ms" for name, v in
                                       result["cpu_ms_per_page"].items()), flush=True)
    return result


def run(pages: int = 400, repetitions: int = 3, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The options (all, or the baseline and those named in ``only``) on ``pages`` pages of each kind, the
    breakdown of the baseline, and each vector encoding end to end (:func:`end_to_end`)."""
    chosen = {name: value for name, value in OPTIONS.items() if name == BASELINE or only is None or name in only}
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="bench-encoding-", dir=scratch) as workdir:
        options = options_run(pages, repetitions, Path(workdir), chosen)
        breakdown = breakdown_run(pages, repetitions, Path(workdir))
    return {"pages": pages, "repetitions": repetitions, "baseline": BASELINE, "options": options,
            "breakdown": breakdown, "end_to_end": end_to_end(pages, repetitions)}


def markdown(results: dict[str, Any]) -> list[str]:
    """The encoding rows of the results table: one table per kind of vectors, then the breakdown."""
    lines: list[str] = []
    for kind, options in results["options"].items():
        base = options[results["baseline"]]
        lines += ["", f"### Artifact encoding, {kind} ColPali pages (1,031 x 128; {results['pages']} pages through "
                      f"ArtifactWriter to tmpfs; CPU ms per page, median (min-max) of {results['repetitions']})",
                  "", "| vector column option | write CPU ms/page | x current | bytes/page | x current | "
                      "read CPU ms/page | x current |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in options.items():
            lines.append(f"| {name} | {figure(r['write_ms'])} | "
                         f"{r['write_ms']['median'] / base['write_ms']['median']:.2f} | "
                         f"{r['bytes_per_page']:,.0f} | {r['bytes_per_page'] / base['bytes_per_page']:.3f} | "
                         f"{figure(r['read_ms'])} | {r['read_ms']['median'] / base['read_ms']['median']:.2f} |")
    lines += ["", "### Where the baseline's write CPU goes (per page; `pq.write_table` of the vector column "
                  "alone, no statistics or dictionary)", "",
              "| vectors | `_rows_table` | nested, zstd + split | flat float32, zstd + split | "
              "nested, uncompressed | flat, uncompressed | levels' share of nested zstd |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, b in results["breakdown"].items():
        share = (b["nested"]["median"] - b["flat"]["median"]) / b["nested"]["median"]
        lines.append(f"| {kind} | {figure(b['rows_table'])} | {figure(b['nested'])} | {figure(b['flat'])} | "
                     f"{figure(b['nested_plain'])} | {figure(b['flat_plain'])} | {share:.0%} |")
    return lines + (end_to_end_markdown(results["end_to_end"]) if "end_to_end" in results else [])


def end_to_end_markdown(r: dict[str, Any]) -> list[str]:
    """The end-to-end table: CPU ms per page of each encoding against the load generator's, bytes per page."""
    limit, base = r["cpu_ms_per_page"]["limit"]["median"], r["bytes_per_page"][ENCODINGS[0]]
    lines = ["", f"### Partition end to end per vector encoding ({r['pages']} ColPali-sized pages, bandwidth-bound "
                 f"fake on core 0, this process on core 1, {r['repetitions']} interleaved repetitions; CPU ms per "
                 "page of this process, median (min-max))", "",
             "| measure | CPU ms/page | x load generator | artifact bytes/page | x float32 |",
             "|---|---:|---:|---:|---:|",
             f"| load generator (receive only) | {figure(r['cpu_ms_per_page']['limit'])} | 1.00 | | |"]
    for encoding in ENCODINGS:
        cpu, size = r["cpu_ms_per_page"][encoding], r["bytes_per_page"][encoding]
        lines.append(f"| partition, vector_encoding {encoding} | {figure(cpu)} | {cpu['median'] / limit:.2f} | "
                     f"{size:,.0f} | {size / base:.3f} |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--end-to-end-only", action="store_true", help="only the partition end to end per encoding")
    arguments = parser.parse_args()
    if arguments.end_to_end_only:
        outcome = {"end_to_end": end_to_end(arguments.pages, arguments.repetitions)}
        print(json.dumps(outcome, indent=1))
        print("\n".join(end_to_end_markdown(outcome["end_to_end"])))
        raise SystemExit(0)
    outcome = run(arguments.pages, arguments.repetitions)
    print(json.dumps(outcome, indent=1))
    print("\n".join(markdown(outcome)))
