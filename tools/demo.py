"""`make demo`: the whole flow on this machine, with the real servers and Dagster's own machinery.

Starts SeaweedFS and the real Infinity server (two models) on 127.0.0.1, uploads the sample documents
(``infinity_assets_dev.samples``) into two buckets, one per corpus, and starts ``dagster-daemon run`` on a fresh
``DAGSTER_HOME`` with the repo's ``dagster.yaml``, as a deployment would. The code location is this checkout's
dg project (``infinity_assets_dev.definitions``): two :class:`InfinityCorpusComponent` instances from
``infinity_assets_dev/defs/``, ``docs`` (text, a ColBERT model, ``s3://docs``) and ``pages`` (images and PDF
pages, a ColQwen2-style model, ``s3://pages``), with 5-second sensor ticks. Each corpus's sensor adds its batch
partitions and requests its runs, the run queue launches them, and each corpus's index automation sensor syncs
its LanceDB index. The demo only watches the instance until that work is done, prints every run with its checks,
asks the ``infinity-assets search`` CLI of each corpus, prints the ``serve`` command, and stops every process it
started. Exits non-zero if any run, check or search failed. ``tools/dev.py`` (``make dev``) reuses
:class:`DemoEnvironment`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

from infinity_assets_dev.deployment import BACKFILL_FAILED  # noqa: E402
from infinity_assets_dev.infinity import InfinityServer  # noqa: E402
from infinity_assets_dev.processes import ProcessGroup, log_tail  # noqa: E402
from infinity_assets_dev.samples import BATCHES, PAGE_QUERY, QUERY, sample_objects  # noqa: E402
from infinity_assets_dev.seaweedfs import SeaweedFS  # noqa: E402

TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colqwen2-tiny"
#: How long the daemon may take for the sensor's runs and the index syncs before the demo gives up.
WORK_TIMEOUT_SECONDS = float(os.environ.get("INFINITY_ASSETS_DEMO_TIMEOUT", "420"))
#: The demo's corpora (infinity_assets_dev/defs/<name>/defs.yaml): bucket, modality, and the sample keys it holds.
CORPORA = {"docs": ("docs", "text", ("raw/text/", "eval/")), "pages": ("pages", "images", ("raw/images/",))}
#: The asset names of each modality inside a corpus.
EMBEDDING_ASSETS = {"text": "text_embeddings", "images": "image_embeddings"}
INDEX_ASSETS = {"text": "text_index", "images": "image_index"}
LOCATION_MODULE = "infinity_assets_dev.definitions"


def corpus_key(corpus: str, name: str):
    """The asset key ``<corpus>/<name>``."""
    import dagster as dg

    return dg.AssetKey([corpus, name])


class DemoEnvironment:
    """SeaweedFS + Infinity on 127.0.0.1 with the sample documents, a DAGSTER_HOME, and the env the code needs.

    ``env`` is the whole environment of the processes to start (this one's, minus any INFINITY_* / AWS_*
    variable of the caller, plus the servers' settings); ``python_log_level`` goes into the instance's
    ``python_logs`` (the run workers' console logger level).
    """

    def __init__(self, workdir: Path, *, python_log_level: str = "INFO") -> None:
        self.workdir = workdir
        self.home = workdir / "dagster_home"
        self.python_log_level = python_log_level
        self._stack = ExitStack()
        self.env: dict[str, str] = {}
        self.uploaded: list[str] = []

    def __enter__(self) -> DemoEnvironment:
        print("starting SeaweedFS and the Infinity server on 127.0.0.1 ...", flush=True)
        try:
            self.s3 = self._stack.enter_context(SeaweedFS(self.workdir / "seaweedfs"))
            self.infinity = self._stack.enter_context(
                InfinityServer([TEXT_MODEL, IMAGE_MODEL], log_dir=self.workdir / "logs"))
            self.upload_samples()
        except BaseException:
            self._stack.close()
            raise
        self.home.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        config["python_logs"] = {**config.get("python_logs", {}), "python_log_level": self.python_log_level}
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_", "DAGSTER_"))}
        self.env = {
            **inherited,
            "DAGSTER_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "INFINITY_API_URL": self.infinity.url, "DEMO_TEXT_MODEL": TEXT_MODEL, "DEMO_IMAGE_MODEL": IMAGE_MODEL,
            "DEMO_DOCS_ROOT": "s3://docs", "DEMO_PAGES_ROOT": "s3://pages", "AWS_ENDPOINT_URL": self.s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_REGION": "us-east-1",
            "LANCE_LOG": os.environ.get("LANCE_LOG", "error"),  # Lance's Rust warnings are for its developers
        }
        # One index sync at a time (the README's deployment steps); the `infinity` pool has dagster.yaml's default.
        self.dagster("instance", "concurrency", "set", "index_writer", "1")
        return self

    def __exit__(self, *exc_info: object) -> None:
        print("stopping the servers", flush=True)
        self._stack.close()

    def upload_samples(self) -> None:
        """Put each corpus's sample documents (and the labelled text queries) into its bucket."""
        fs = self.s3.filesystem()
        objects = sample_objects()
        for corpus, (bucket, modality, prefixes) in CORPORA.items():
            if not fs.exists(bucket):
                self.s3.create_bucket(bucket)
            mine = {key: data for key, data in objects.items() if key.startswith(prefixes)}
            fs.pipe({f"{bucket}/{key}": data for key, data in mine.items()})
            self.uploaded += sorted(f"s3://{bucket}/{key}" for key in mine if key.startswith("raw/"))
            print(f"corpus {corpus}: uploaded {sum(k.startswith('raw/') for k in mine)} {modality} documents in "
                  f"{len(BATCHES[modality])} batches to s3://{bucket}/raw/{modality}/"
                  + (f" and labelled queries to s3://{bucket}/eval/text.jsonl" if "eval/text.jsonl" in mine else ""),
                  flush=True)

    def dagster(self, *arguments: str) -> None:
        """``dagster <arguments>`` on this instance; raises with its output if it fails."""
        done = subprocess.run([BIN / "dagster", *arguments], env=self.env, cwd=self.workdir, capture_output=True,
                              text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"dagster {' '.join(arguments)} failed:\n{done.stdout}\n{done.stderr}")

    def workspace(self, module: str) -> Path:
        """A workspace file loading the code location ``module`` from the repo."""
        path = self.workdir / "workspace.yaml"
        path.write_text(yaml.safe_dump({"load_from": [{"python_module": {
            "module_name": module, "working_directory": str(REPO), "location_name": "infinity_assets"}}]}))
        return path

    def serve_arguments(self) -> list[str]:
        """``infinity-assets serve`` arguments serving both corpora (the viewer offers the choice)."""
        return [argument for corpus, (bucket, _, _) in CORPORA.items()
                for argument in ("--corpus", f"{corpus}=s3://{bucket}")]

    def serve_command(self) -> str:
        """The command line that serves both corpora's indexes (``infinity-assets serve``), with its environment."""
        names = ("INFINITY_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION")
        settings = " ".join(f"{name}={self.env[name]}" for name in names)
        return (f"{settings} AWS_SECRET_ACCESS_KEY=<the store's secret> {BIN / 'infinity-assets'} serve "
                f"{' '.join(self.serve_arguments())} --host 127.0.0.1 --port 8080")


class WorkWatcher:
    """Reads the demo's instance until the sensor's runs and backfills and the index syncs are done."""

    def __init__(self, instance) -> None:
        self.instance = instance

    def failures(self) -> list[str]:
        """Runs and backfills that ended badly."""
        import dagster as dg

        bad_runs = [f"run {r.run_id[:8]} {r.status.value}" for r in self.instance.get_runs()
                    if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
        bad_backfills = [f"backfill {b.backfill_id} {b.status.value}" for b in self.instance.get_backfills()
                         if b.status.value in BACKFILL_FAILED]
        return bad_runs + bad_backfills

    def done(self) -> bool:
        """Every sample batch embedded, every index synced after its embeddings, nothing queued or running."""
        import dagster as dg

        if any(r.status not in (dg.DagsterRunStatus.SUCCESS,) for r in self.instance.get_runs()):
            return False
        if any(b.status.value != "COMPLETED_SUCCESS" for b in self.instance.get_backfills()):
            return False
        for corpus, (_, modality, _) in CORPORA.items():
            embedded = self.instance.fetch_materializations(corpus_key(corpus, EMBEDDING_ASSETS[modality]),
                                                            limit=1000)
            if not set(BATCHES[modality]) <= {record.partition_key for record in embedded.records}:
                return False
            synced = self.instance.fetch_materializations(corpus_key(corpus, INDEX_ASSETS[modality]),
                                                          limit=1).records
            if not synced or synced[0].storage_id < max(record.storage_id for record in embedded.records):
                return False
        return True

    def report(self) -> bool:
        """Print every run (what launched it, its target, status, checks) and the latest evaluation of every
        check; True if every run succeeded and every check's latest evaluation passed.

        Every evaluation of every check must have passed, not only the latest.
        """
        import dagster as dg

        runs_ok, every_passed, latest = True, True, {}
        print("\nruns (launched by the daemon)")
        for run in reversed(self.instance.get_runs()):  # oldest first
            records = self.instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
            checks = {}
            for record in records:
                evaluation = record.event_log_entry.dagster_event.event_specific_data
                checks[evaluation.check_name] = evaluation.passed
                every_passed &= evaluation.passed
                latest[(evaluation.asset_key.to_user_string(), evaluation.check_name)] = (
                    record.storage_id, evaluation.passed, run.run_id)
            runs_ok &= run.status == dg.DagsterRunStatus.SUCCESS
            origin = run.tags.get("dagster/sensor_name") or (
                f"backfill {run.tags['dagster/backfill']}" if "dagster/backfill" in run.tags else "manual")
            partition = run.tags.get("dagster/partition")
            targets = ", ".join(sorted(key.to_user_string() for key in run.asset_selection or ()))
            target = f"{targets}[{partition}]" if partition else targets
            print(f"  run {run.run_id[:8]} {origin:24} {target:34} {run.status.value}; checks " + (", ".join(
                f"{name} {'passed' if passed else 'FAILED'}" for name, passed in sorted(checks.items())) or "none"),
                flush=True)
        for backfill in self.instance.get_backfills():
            print(f"  backfill {backfill.backfill_id} {backfill.status.value}")
        print("checks (latest evaluation of each)")
        for (asset, check), (_, passed, run_id) in sorted(latest.items()):
            print(f"  {asset}.{check}: {'passed' if passed else 'FAILED'} (run {run_id[:8]})")
        checks_ok = bool(latest) and every_passed
        for asset in [corpus_key(corpus, INDEX_ASSETS[modality]) for corpus, (_, modality, _) in CORPORA.items()]:
            records = self.instance.fetch_materializations(asset, limit=1).records
            if not records:
                print(f"  {asset.to_user_string()}: never materialized")
                runs_ok = False
                continue
            metadata = records[0].asset_materialization.metadata
            print(f"{asset.to_user_string()}: {metadata['dagster/row_count'].value} rows ({metadata['inserted'].value} inserted) "
                  f"at {metadata['uri'].value}")
        return runs_ok and checks_ok


def run_daemon_until_done(demo: DemoEnvironment, module: str = LOCATION_MODULE) -> bool:
    """Start ``dagster-daemon run`` and poll the instance until the work is done; stop the daemon's group."""
    import dagster as dg

    log_path = demo.workdir / "logs" / "dagster-daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print("starting dagster-daemon (sensors, run queue, backfills, automation) ...", flush=True)
    with open(log_path, "wb") as log, ProcessGroup(
            "dagster-daemon", [BIN / "dagster-daemon", "run", "-w", demo.workspace(module)], env=demo.env,
            cwd=demo.workdir, output=log) as daemon, dg.DagsterInstance.from_config(str(demo.home)) as instance:
        watcher, seen = WorkWatcher(instance), 0
        while True:
            failures = watcher.failures()
            if failures or watcher.done():
                break
            if not daemon.alive() or time.monotonic() - started > WORK_TIMEOUT_SECONDS:
                failures = ["the daemon exited" if not daemon.alive() else
                            f"the work was not done within {WORK_TIMEOUT_SECONDS:g} s"]
                break
            runs = instance.get_runs()
            if len(runs) != seen:
                seen = len(runs)
                print(f"  {time.monotonic() - started:5.1f} s: {seen} runs "
                      f"({sum(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)} succeeded)", flush=True)
            daemon.sample_cpu()
            time.sleep(1.0)
        elapsed, cpu = time.monotonic() - started, daemon.sample_cpu()
        print(f"daemon work {'FAILED: ' + '; '.join(failures) if failures else 'done'} after {elapsed:.1f} s "
              f"({cpu:.1f} s CPU of the daemon, its code server and its runs, sampled each second)", flush=True)
        if failures:
            print(f"--- {log_path} (tail)\n{log_tail(log_path)}", flush=True)
            watcher.report()
            return False
        return watcher.report()


def search(demo: DemoEnvironment) -> bool:
    """Ask each corpus's index through the ``infinity-assets search`` console script; True if both answered."""
    answers = []
    for query, options in ((QUERY, ["--root", "s3://docs", "--k", "3"]),
                           (PAGE_QUERY, ["--root", "s3://pages", "--modality", "images", "--k", "6"])):
        # The query model is the one each index records; the server is $INFINITY_API_URL.
        print(f"\n$ infinity-assets search {query!r} {' '.join(options)}", flush=True)
        answers.append(subprocess.run([BIN / "infinity-assets", "search", query, *options], env=demo.env,
                                      cwd=demo.workdir, timeout=300).returncode)
    return answers == [0, 0]


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="infinity-assets-demo-"))
    print(f"workdir: {workdir}", flush=True)
    try:
        with DemoEnvironment(workdir) as demo:
            ok = run_daemon_until_done(demo)
            ok = search(demo) and ok
            print("\nnext: `make dev` keeps these servers up beside the Dagster UI and serves the index (search API "
                  "and page viewer);\nwith servers of your own, serve an index with (the demo's values shown):\n  "
                  + demo.serve_command())
        print("\ndemo " + ("finished: every run and check succeeded" if ok else "FAILED"), flush=True)
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
