"""The real Infinity server (``infinity_emb v2`` from its own virtualenv) on 127.0.0.1, serving offline models.

The server venv and the models are made by ``make models`` (tools/install_infinity_server.sh and
tools/build_models.py); the Makefile exports where they are as ``INFINITY_ASSETS_SERVER_PYTHON`` and
``INFINITY_ASSETS_MODELS_DIR``.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from infinity_assets_dev.ports import free_port
from infinity_assets_dev.processes import stop_group

REPO = Path(__file__).resolve().parents[1]

#: The models tools/build_models.py builds, by served name, with their embedding size.
MODELS = {"minilm-colbert": 384, "minilm-colbert-128": 128, "colpali-tiny": 128, "colqwen2-tiny": 128}
TEXT_MODELS = ("minilm-colbert", "minilm-colbert-128")
IMAGE_MODELS = ("colpali-tiny", "colqwen2-tiny")


def server_python() -> Path:
    """The server venv's Python."""
    return Path(os.environ.get("INFINITY_ASSETS_SERVER_PYTHON", REPO / ".venv-infinity" / "bin" / "python"))


def models_dir() -> Path:
    """Where the offline models are."""
    return Path(os.environ.get("INFINITY_ASSETS_MODELS_DIR", REPO / ".cache" / "models"))


class InfinityServer:
    """An ``infinity_emb v2`` process on a free port of 127.0.0.1; a context manager; restartable on its port.

    Example::

        with InfinityServer(["minilm-colbert"]) as server:
            InfinityEmbeddings(url=server.url, model_name="minilm-colbert", hidden_dim=384).embed_text("hi")
    """

    def __init__(self, models: list[str] | tuple[str, ...] = tuple(MODELS), *, api_key: str | None = None,
                 port: int | None = None, log_dir: str | os.PathLike | None = None) -> None:
        self.models = list(models)
        self.api_key = api_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="infinity-")) / f"infinity-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        python, models = server_python(), models_dir()
        executable = python.parent / "infinity_emb"
        missing = [m for m in self.models if not (models / m / ".complete").exists()]
        if not executable.exists() or missing:
            raise RuntimeError(
                f"the Infinity server or its models are missing ({executable}, models {missing} in {models}); "
                "run `make models`")
        command = [str(executable), "v2"]
        for name in self.models:
            command += ["--model-id", str(models / name), "--served-model-name", name]
        command += ["--engine", "torch", "--device", "cpu", "--no-model-warmup", "--host", "127.0.0.1",
                    "--port", str(self.port)]
        if self.api_key:
            command += ["--api-key", self.api_key]
        return command

    def start(self, timeout: float = 180.0) -> InfinityServer:
        """Start the server and poll ``/health`` until it answers; raises with the log tail if it does not."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.log_path.parent, start_new_session=True)
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Infinity server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", headers=headers, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Infinity server did not answer /health within {timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server's process group and wait for it."""
        if self.process is None:
            return
        stop_group(self.process, timeout=20)
        self.process = None

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> InfinityServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
