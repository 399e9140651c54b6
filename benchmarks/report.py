"""Turns benchmark results into ``results/results.md`` (a table of figures, ratios and targets), JSON and a plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .workloads import LABELS

RESULTS = Path(__file__).resolve().parent / "results"


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables, each ratio next to its target."""
    lines = ["# Benchmark results", "", f"Machine: {results.get('machine', '?')}. Command: `make bench` "
             "(`.venv/bin/python benchmarks/run.py`). Medians of interleaved repetitions.", ""]
    for key, table in results.get("throughput", {}).items():
        shape, modality = key.split("/")
        lines += [f"## Fake server, {shape}-bound shape, {modality}s ({table['rows']} x 128 vectors per item, "
                  f"50 ms per request, batch 10, concurrency 8, {table['count']} items)", "",
                  "| client | items/s | x load generator | x seed | target |", "|---|---:|---:|---:|---|"]
        limit, seed = table["per_s"]["limit"], table["per_s"].get("seed")
        for name, per_s in table["per_s"].items():
            target = ""
            if name in ("ours_sync", "ours_async"):
                target = f">= 0.9 x: {_verdict(per_s / limit, 0.9)}"
            seed_ratio = f"{per_s / seed:.2f}" if seed else ""
            lines.append(f"| {LABELS.get(name, name)} | {per_s:,.0f} | {per_s / limit:.2f} | {seed_ratio} | {target} |")
        lines.append("")
    if "decoding" in results:
        d = results["decoding"]
        raw = d["raw_b64decode_mb_s"]
        lines += [f"## Decoding ({d['base64_mb']:.1f} MB of base64: 10 x 1,031 x 128 float32, one response)", "",
                  "| path | MB/s of base64 | x raw b64decode | bytes per vector | target |",
                  "|---|---:|---:|---:|---|",
                  f"| raw `base64.b64decode` | {raw:,.0f} | 1.00 | | |",
                  f"| ours (`wire.decode_response`, from the body: JSON work included) | {d['ours_mb_s']:,.0f} | "
                  f"{d['ours_mb_s'] / raw:.2f} | "
                  f"{d['ours_bytes_per_vector']:,.0f} (float32: {d['float32_bytes_per_vector']}) | >= 0.9 x: "
                  f"{_verdict(d['ours_mb_s'] / raw, 0.9)}; memory "
                  f"{_verdict(d['ours_bytes_per_vector'], d['float32_bytes_per_vector'] * 1.05, False)} |",
                  f"| seed (`.tolist()`) | {d['seed_tolist_mb_s']:,.0f} | {d['seed_tolist_mb_s'] / raw:.2f} | "
                  f"{d['seed_tolist_bytes_per_vector']:,.0f} "
                  f"({d['seed_tolist_bytes_per_vector'] / d['float32_bytes_per_vector']:.1f} x float32) | |"]
        if "json_path_mb_s" in d:
            j = d["json_path_mb_s"]
            lines.append(f"| ours, JSON path for unusual bodies (`wire.decode_embeddings`, parsed payload) | "
                         f"{j:,.0f} | {j / raw:.2f} | | |")
        lines.append("")
    if "real_server" in results:
        r = results["real_server"]
        lines += ["## Real CPU Infinity server (minilm-colbert-128 texts, colpali-tiny images; batch 10, "
                  "concurrency 8)", "", "| modality | load generator /s | ours /s | ratio | target |",
                  "|---|---:|---:|---:|---|"]
        for modality in ("text", "image"):
            limit, ours = r[f"{modality}_limit_per_s"], r[f"{modality}_ours_sync_per_s"]
            lines.append(f"| {modality}s ({r[f'{modality}_count']}) | {limit:,.1f} | {ours:,.1f} | {ours / limit:.2f} | "
                         f">= 0.95 x: {_verdict(ours / limit, 0.95)} |")
        lines.append("")
    if "partition" in results:
        lines += ["## Partition materialization (`pipeline.embed_partition`: read local PNGs, embed, write "
                  "Parquet)", "", "| server shape | documents | load generator docs/s | ours docs/s | ratio | target |",
                  "|---|---:|---:|---:|---:|---|"]
        for shape, p in results["partition"].items():
            ratio = p["ours_docs_s"] / p["limit_docs_s"]
            lines.append(f"| {shape} | {p['documents']} | {p['limit_docs_s']:,.0f} | {p['ours_docs_s']:,.0f} | "
                         f"{ratio:.2f} | >= 0.85 x: {_verdict(ratio, 0.85)} |")
        lines.append("")
    if "memory" in results:
        m = results["memory"]
        budget = f", default memory budget {m['memory_budget_mb']:.0f} MiB" if "memory_budget_mb" in m else ""
        lines += [f"## Memory: one 2,000-image partition through the bandwidth-bound fake{budget}", "",
                  "| documents | vectors | vectors MB | artifact MB | seconds | RSS before MB | peak RSS MB | target |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|",
                  f"| {m['documents']:,} | {m['vectors']:,} | {m['vector_mb']:,.0f} | {m['artifact_mb']:,.0f} | "
                  f"{m['seconds']:.1f} | {m['baseline_rss_mb']:,.0f} | {m['peak_rss_mb']:,.0f} | < 500 MB: "
                  f"{_verdict(m['peak_rss_mb'], 500, False)} |", ""]
    if "sensor" in results:
        s = results["sensor"]
        lines += ["## Sensor: one `new_documents_sensor` tick over SeaweedFS", "",
                  "| objects | batch folders | tick s | budget s | RSS before MB | peak RSS MB | run requests | "
                  "new partitions | cursor bytes |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {s['objects']:,} | {s['new_partitions']} | {s['tick_seconds']:.1f} | {s['budget_seconds']:.0f} "
                  f"({_verdict(s['budget_seconds'], s['tick_seconds'])}) | {s['baseline_rss_mb']:,.0f} | "
                  f"{s['peak_rss_mb']:,.0f} | {s['run_requests']} | {s['new_partitions']} | {s['cursor_bytes']} |", ""]
    if "sweep" in results:
        lines += ["Throughput against concurrency: `throughput.png` (data in `results.json`, key `sweep`).", ""]
    if "dagster" in results:
        from . import dagster_scale

        lines += dagster_scale.markdown(results["dagster"])
    if "cpu" in results:
        from . import cpu_cost

        lines += cpu_cost.markdown(results["cpu"])
    if "backfill" in results:
        from . import backfill

        lines += backfill.markdown(results["backfill"])
    if "pdf" in results:
        from . import pdf_pages

        lines += pdf_pages.markdown(results["pdf"])
    if "encoding" in results:
        from . import artifact_encoding

        lines += artifact_encoding.markdown(results["encoding"])
    if "index" in results:
        from . import index_scale

        lines += index_scale.markdown(results["index"])
    return "\n".join(lines)


def plot(sweep: dict[str, Any], path: Path) -> None:
    """Items/s against concurrency, one panel per fake-server shape, one line per client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sweep), figsize=(6 * len(sweep), 4.5), squeeze=False)
    for axis, (key, curves) in zip(axes[0], sweep.items()):
        for name, points in curves.items():
            xs = sorted(int(c) for c in points)
            ys = [points[str(c)] for c in xs]
            if name == "seed":  # sequential by design: one point, drawn as a level
                axis.axhline(ys[0], linestyle=":", color="grey", label=f"{LABELS[name]} (sequential)")
            else:
                axis.plot(xs, ys, marker="o", label=LABELS.get(name, name))
        axis.set_xscale("log", base=2)
        axis.set_xlabel("requests in flight (concurrency)")
        axis.set_ylabel("items/s")
        axis.set_title(f"fake Infinity, {key} (batch 10, 50 ms/request)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, Any], directory: Path = RESULTS) -> str:
    """Merge ``results`` into ``directory``'s results.json (a run of some sections keeps the others' last
    figures), then write it, results.md and (with a sweep) throughput.png; return the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    merged = {**(json.loads(path.read_text()) if path.exists() else {}), **results}
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    text = markdown(merged)
    (directory / "results.md").write_text(text + "\n")
    if results.get("sweep"):
        plot(results["sweep"], directory / "throughput.png")
    return text
