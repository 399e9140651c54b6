"""A backfill of 2,000 batches through the production deployment, against the fake server.

PostgreSQL, the gRPC code server, the daemon and the webserver as separate processes (deploy/dagster.yaml),
the backfill launched through GraphQL as the UI does. Measured: runs launched, wall time from launch to
completion, and that every batch was materialized exactly once. The baseline, in the same benchmark: one
batch per run (Dagster's default backfill policy), timed on a sample of batches and scaled to the same count.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg

from infinity_assets.testing.fake_infinity import MODEL, FakeServerProcess
from infinity_assets_dev.deployment import BACKFILL_FAILED, BACKFILL_SUCCEEDED, Deployment
from infinity_assets_dev.env import clean_env

#: The names of the env-configured corpus ``default``: the production location, infinity_assets.definitions.
ASSET, PARTITIONS = "default/text_embeddings", "default_text_batches"
SENSORS = ("default_new_documents_sensor", "default_index_automation_sensor")


def write_batches(root: Path, count: int, prefix: str) -> list[str]:
    """``count`` batch folders of two short text documents each under ``root``/raw/text/."""
    batches = [f"{prefix}-{i:05d}" for i in range(count)]
    for batch in batches:
        folder = root / "raw" / "text" / batch
        folder.mkdir(parents=True)
        for name in ("one", "two"):
            (folder / f"{name}.txt").write_text(f"{name} document of {batch}")
    return batches


def backfill(url: str, count: int, per_run: int, prefix: str) -> dict[str, Any]:
    """One backfill of ``count`` fresh batches with ``per_run`` batches per run, in a fresh deployment."""
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as workdir:
        root = Path(workdir) / "store"
        batches = write_batches(root, count, prefix)
        env = clean_env(INFINITY_API_URL=url, INFINITY_MODEL=MODEL, INFINITY_HIDDEN_DIM="128",
                        INFINITY_ASSETS_ROOT=str(root), INFINITY_BACKFILL_PARTITIONS_PER_RUN=str(per_run))
        with Deployment(Path(workdir), env, stopped_sensors=SENSORS) as deployment, \
                deployment.instance() as instance:
            instance.add_dynamic_partitions(PARTITIONS, batches)
            started = time.monotonic()
            backfill_id = deployment.launch_backfill(ASSET, batches)
            finished = BACKFILL_SUCCEEDED | BACKFILL_FAILED
            deployment.wait_for(lambda: instance.get_backfill(backfill_id).status.value in finished, 3600,
                                f"backfill {backfill_id} finishing")
            seconds = time.monotonic() - started
            status = instance.get_backfill(backfill_id).status
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            key = dg.AssetKey.from_user_string(ASSET)
            events = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key),
                                                     limit=count * 2).records
            per_batch = Counter(e.partition_key for e in events)
            run_seconds = sorted((r.end_time or 0) - (r.start_time or 0) for r in
                                 (instance.get_run_record_by_id(run.run_id) for run in runs) if r)
    return {"batches": count, "per_run": per_run, "status": status.value, "seconds": seconds, "runs": len(runs),
            "runs_succeeded": sum(r.status == dg.DagsterRunStatus.SUCCESS for r in runs),
            "materialized_once": sum(per_batch[b] == 1 for b in batches),
            "materialized_more": sum(per_batch[b] > 1 for b in batches),
            "run_seconds_median": run_seconds[len(run_seconds) // 2] if run_seconds else 0.0,
            "batches_per_s": count / seconds}


def run(count: int = 2000, per_run: int = 100, sample: int = 100) -> dict[str, Any]:
    """The multi-run backfill of ``count`` batches; then, on ``sample`` batches, the same policy and one batch
    per run side by side (one batch per run on all ``count`` would take the better part of an hour here)."""
    results = {}
    with FakeServerProcess.shape("latency") as server:
        for name, batches, policy in (("multi", count, per_run), ("multi_sample", sample, per_run),
                                      ("single_sample", sample, 1)):
            results[name] = backfill(server.url, batches, policy, name.replace("_", "-"))
            r = results[name]
            print(f"  {batches} batches, {policy} per run: {r['runs']} runs, {r['seconds']:.0f} s, "
                  f"{r['materialized_once']} materialized once, {r['status']}", flush=True)
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    """The backfill rows of the results table."""
    lines = ["", "### Backfills through the daemon (PostgreSQL, code server, daemon, webserver; fake server; "
                 "2 text documents per batch)", "",
             "| batches | batches per run | runs | wall time | batches/s | median run | materialized once | status |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results.values():
        lines.append(f"| {r['batches']:,} | {r['per_run']} | {r['runs']:,} | {r['seconds']:.0f} s | "
                     f"{r['batches_per_s']:.1f} | {r['run_seconds_median']:.1f} s | {r['materialized_once']:,} "
                     f"(more than once: {r['materialized_more']}) | {r['status']} |")
    sample, single = results["multi_sample"], results["single_sample"]
    lines += ["", f"On {sample['batches']} batches, {sample['per_run']} per run is x "
                  f"{single['seconds'] / sample['seconds']:.1f} faster than one per run."]
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--per-run", type=int, default=100)
    parser.add_argument("--sample", type=int, default=100)
    arguments = parser.parse_args()
    outcome = run(arguments.batches, arguments.per_run, arguments.sample)
    print(json.dumps(outcome, indent=1))
    print("\n".join(markdown(outcome)))
