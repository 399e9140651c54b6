"""A throwaway PostgreSQL server on 127.0.0.1 for the Dagster instance storage of the load test.

Dagster's SQLite storage claims pool slots with ``SELECT ... FOR UPDATE SKIP LOCKED``, which SQLite ignores:
processes claiming at the same instant can take the same slot, so pool limits across processes are exact only
on PostgreSQL (the storage the README recommends for deployments).

Uses Debian's server binaries (``make postgres`` installs them). PostgreSQL
refuses to run as root, so under root the server runs as the ``postgres`` user the package creates.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from infinity_assets_dev.ports import free_port

#: The opt-in pool-slot guard for Dagster 1.13.x (deploy/postgres/concurrency_slot_guard.sql says why).
SLOT_GUARD = Path(__file__).resolve().parents[1] / "deploy" / "postgres" / "concurrency_slot_guard.sql"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed; run `make postgres`")
    return found[-1]


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` -- a new cluster and database, stopped and removed at exit.

    The cluster lives in a new folder under the system temp dir (the ``postgres`` user must be able to reach
    it, which pytest's per-user temp dirs do not allow).
    """

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="infinity-assets-postgres-"))
        self.data_dir = self.workdir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/dagster"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as_postgres, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def __enter__(self) -> PostgresServer:
        if self._as_postgres:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -c max_connections=200 -c fsync=off"
        self._run(_bin("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.workdir / "server.log"),
                  "-w", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start; see {self.workdir / 'server.log'}") from None
                time.sleep(0.2)
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE dagster")
        finally:
            connection.close()
        return self

    def connect(self) -> psycopg2.extensions.connection:
        """An autocommit connection to the ``dagster`` database (as Dagster's own connections are)."""
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="dagster")
        connection.autocommit = True
        return connection

    def execute_file(self, path: Path) -> None:
        """Run the SQL script at ``path`` on the ``dagster`` database."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(path.read_text())
        finally:
            connection.close()

    def apply_slot_guard(self, dagster_version: str | None = None) -> None:
        """Apply the opt-in ops workaround ``deploy/postgres/concurrency_slot_guard.sql`` (exact pool limits on
        Dagster 1.13.x, see that file) as its header says: with the installed Dagster's version, which the
        script checks (``dagster_version`` overrides it, to test the refusal)."""
        import dagster

        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('infinity_assets.dagster_version', %s, false)",
                               (dagster.__version__ if dagster_version is None else dagster_version,))
                cursor.execute(SLOT_GUARD.read_text())
        finally:
            connection.close()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
