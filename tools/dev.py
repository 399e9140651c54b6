"""`make dev`: the demo's servers and sample documents, plus `dagster dev` (webserver + daemon) on 127.0.0.1.

Prints what a person needs: the UI address, what was uploaded and where to look; then Dagster's own INFO lines
(the daemon's, and the runs' through the instance's ``python_logs`` level; DEBUG events stay in the UI).
Every process runs in its own process group; Ctrl-C (or SIGTERM) stops Dagster, the extra services and both
servers. ``extra_services`` is where processes started beside the UI are declared.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

from demo import BIN, REPO, DemoEnvironment

from infinity_assets_dev.ports import free_port
from infinity_assets_dev.processes import ProcessGroup, Service, wait_until_ready

DEFAULT_PORT = int(os.environ.get("DAGSTER_PORT", "3000"))


def extra_services(demo: DemoEnvironment, workdir: Path) -> list[Service]:
    """Processes started beside the Dagster UI with the dev stack's settings (``demo.env``), stopped with it."""
    port = free_port()
    return [Service("search service (API and page viewer)",
                    [str(BIN / "infinity-assets"), "serve", *demo.serve_arguments(), "--host", "127.0.0.1",
                     "--port", str(port)],
                    ready_url=f"http://127.0.0.1:{port}/health", address=f"http://127.0.0.1:{port}")]


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the demo's servers plus the Dagster UI")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="Dagster UI port (default $DAGSTER_PORT "
                        "or 3000)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "dev",
                        help="where the servers' data and DAGSTER_HOME live (default .cache/dev)")
    args = parser.parse_args(argv)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with DemoEnvironment(args.workdir) as demo, ExitStack() as processes:
            try:
                return run_until_stopped(demo, processes, args.port, args.workdir)
            except KeyboardInterrupt:  # stop everything without a second Ctrl-C cutting the stop short
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print("\nstopping Dagster, the services and the servers ...", flush=True)
                return 0
    except KeyboardInterrupt:  # while the servers were starting: they are stopped already
        return 0


def run_until_stopped(demo: DemoEnvironment, processes: ExitStack, port: int, workdir: Path) -> int:
    """Start ``dagster dev`` and the extra services in ``processes``, print the addresses, wait for Dagster."""
    ui = f"http://127.0.0.1:{port}"
    print("starting dagster dev (webserver and daemon) ...", flush=True)
    dagster = processes.enter_context(ProcessGroup("dagster dev", [
        BIN / "dagster", "dev", "-w", REPO / "workspace.yaml", "-h", "127.0.0.1", "-p", str(port),
        "--log-level", "info"], env=demo.env, cwd=REPO))
    processes.callback(dagster.stop, 30.0, signal.SIGINT)  # dagster dev stops its children on SIGINT
    started = []
    for service in extra_services(demo, workdir):
        group = processes.enter_context(ProcessGroup(service.name, service.command, env=demo.env, cwd=workdir))
        started.append((service, group))
    wait_until_ready(f"{ui}/server_info", 300, dagster)
    for service, group in started:
        if service.ready_url:
            wait_until_ready(service.ready_url, 120, group)
    print("\n" + "\n".join([
        f"Dagster UI: {ui}  (Ctrl-C stops Dagster, the services and both servers)",
        *(f"{service.name}: {service.address}" for service, _ in started if service.address),
        f"uploaded {len(demo.uploaded)} sample documents (two corpora: docs, pages):",
        *(f"  {key}" for key in demo.uploaded),
        "where to look:",
        f"  {ui}/automation  docs_new_documents_sensor / pages_new_documents_sensor add each corpus's batches and",
        "                   request its runs (first tick now); <corpus>_index_automation_sensor syncs its index",
        f"  {ui}/runs        the runs, their logs and check results",
        f"  {ui}/assets      groups docs and pages: docs/text_embeddings by partition, docs/text_index, "
        "pages/image_embeddings, pages/image_index",
        f"Infinity: {demo.env['INFINITY_API_URL']}  S3 (SeaweedFS): {demo.env['AWS_ENDPOINT_URL']}",
    ]) + "\n", flush=True)
    dagster.process.wait()
    print(f"dagster dev exited with code {dagster.process.returncode}", flush=True)
    return dagster.process.returncode or 1

if __name__ == "__main__":
    sys.exit(main())
