"""The production deployment as separate processes, for tests and benchmarks: PostgreSQL, a gRPC code server,
the daemon and the webserver, configured with deploy/dagster.yaml and a workspace shaped like
deploy/workspace.yaml (no `dagster dev`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import yaml

from infinity_assets_dev.ports import free_port
from infinity_assets_dev.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: A backfill's statuses (``instance.get_backfill(id).status.value``; Dagster's enum of them is not public):
#: ended badly, and done with every partition materialized.
BACKFILL_FAILED = frozenset({"FAILED", "COMPLETED_FAILED", "CANCELED"})
BACKFILL_SUCCEEDED = frozenset({"COMPLETED", "COMPLETED_SUCCESS"})

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
  }
}"""


class Deployment:
    """Starts the four processes on 127.0.0.1 with ``env`` (plus the PostgreSQL settings) and stops them.

    ``pools`` are created before anything runs (deploy/dagster.yaml says why); ``slot_guard`` applies the
    opt-in ops workaround of deploy/postgres (exact pool limits on Dagster 1.13.x; off by default, as in a
    deployment that has not opted in); ``stopped_sensors`` are turned
    off before the daemon starts, so a test or benchmark decides alone what is launched; ``module`` is the code
    location the code server loads.
    """

    def __init__(self, workdir: Path, env: dict[str, str], *, pools: dict[str, int] | None = None,
                 stopped_sensors: Iterable[str] = (), module: str = "infinity_assets.definitions",
                 slot_guard: bool = False) -> None:
        self.workdir = workdir
        self.home = workdir / "dagster-home"
        self.env = dict(env)
        self.pools = pools or {"infinity": 2, "index_writer": 1}
        self.stopped_sensors = list(stopped_sensors)
        self.module = module
        self.slot_guard = slot_guard
        self.grpc_port, self.web_port = free_port(), free_port()
        self.logs: list[Path] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._postgres = PostgresServer()
        self._saved_environ: dict[str, str | None] = {}

    def __enter__(self) -> Deployment:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "deploy" / "dagster.yaml", self.home / "dagster.yaml")
        workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
        workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=self.grpc_port)
        (self.workdir / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        self._postgres.__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.env.update(DAGSTER_HOME=str(self.home), DAGSTER_PG_HOST="127.0.0.1",
                        DAGSTER_PG_PORT=str(self._postgres.port), DAGSTER_PG_USERNAME="postgres",
                        DAGSTER_PG_PASSWORD="", DAGSTER_PG_DB="dagster")
        for name, value in self.env.items():  # this process reads the same instance (dagster.yaml reads them)
            if name.startswith("DAGSTER_PG_"):
                self._saved_environ[name] = os.environ.get(name)
                os.environ[name] = value
        self.cli("instance", "migrate")  # Dagster's tables (README's deployment steps)
        if self.slot_guard:
            self._postgres.apply_slot_guard()
        for pool, limit in self.pools.items():
            self.cli("instance", "concurrency", "set", pool, str(limit))
        self._spawn("code-server", [BIN / "dagster", "code-server", "start", "-m", self.module,
                                    "-h", "127.0.0.1", "-p", str(self.grpc_port)])
        self.wait_for(lambda: subprocess.run(
            [BIN / "dagster", "api", "grpc-health-check", "-p", str(self.grpc_port), "-h", "127.0.0.1"],
            capture_output=True, timeout=30).returncode == 0, 120, "the code server answering")
        for sensor in self.stopped_sensors:
            self.cli("sensor", "stop", "-w", str(self.workdir / "workspace.yaml"), sensor)
        self._spawn("daemon", [BIN / "dagster-daemon", "run", "-w", self.workdir / "workspace.yaml"])
        self._spawn("webserver", [BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", str(self.web_port),
                                  "-w", self.workdir / "workspace.yaml"])
        self.wait_for(self._webserver_up, 120, "the webserver answering")

    def __exit__(self, *exc_info: object) -> None:
        for process in reversed(self._processes):
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self._postgres.__exit__(None, None, None)
        for name, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _spawn(self, name: str, command: list[Any]) -> None:
        log = self.workdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as output:
            self._processes.append(subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=output,
                                                    stderr=subprocess.STDOUT))

    def _webserver_up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.web_port}/server_info", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *arguments: str) -> None:
        """Run ``dagster <arguments>`` against this instance; raise with its output if it fails."""
        completed = subprocess.run([BIN / "dagster", *arguments], env=self.env, cwd=self.workdir,
                                   capture_output=True, text=True, timeout=300)
        if completed.returncode:
            raise RuntimeError(f"dagster {' '.join(arguments)} failed:\n{completed.stdout}\n{completed.stderr}")

    def instance(self) -> dg.DagsterInstance:
        """The deployment's instance (PostgreSQL), to be closed by the caller."""
        return dg.DagsterInstance.from_config(str(self.home))

    def alive(self) -> bool:
        """Every process still running."""
        return all(process.poll() is None for process in self._processes)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The webserver's answer to a GraphQL query (its ``data``)."""
        response = httpx.post(f"http://127.0.0.1:{self.web_port}/graphql", timeout=60,
                              json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def launch_backfill(self, asset: str, partitions: list[str]) -> str:
        """Launch a backfill of ``partitions`` of ``asset`` (e.g. ``corpus/text_embeddings``) as the UI
        does; return its id."""
        path = dg.AssetKey.from_user_string(asset).path
        answer = self.graphql(LAUNCH_BACKFILL, {"params": {"partitionNames": partitions,
                                                           "assetSelection": [{"path": path}]}})
        result = answer["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"the backfill was not launched: {result}")
        return result["backfillId"]

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` every half second; on timeout raise with the tail of every process's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.5)
        tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                          for log in self.logs if log.exists())
        raise AssertionError(f"{what} did not happen within {timeout:g} s\n{tails}")
