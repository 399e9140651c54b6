"""Child processes that the tools start and must stop completely: each in its own process group, so stopping
it also stops what it started (the Dagster daemon's code server and run workers, ``dagster dev``'s webserver)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx


def stop_group(process: subprocess.Popen, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Stop the process group led by ``process`` (started with ``start_new_session=True``): ``sig`` to the
    group, wait up to ``timeout`` for the leader, then SIGKILL whatever of the group is left."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:  # children that outlive their leader (a run worker mid-step) go too
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@dataclass(frozen=True)
class Service:
    """A process a tool starts beside Dagster: its ``command``, the URL that answers 200 once it is ready
    (``ready_url``, optional) and the address to show a person (``address``)."""

    name: str
    command: Sequence[str]
    ready_url: str | None = None
    address: str | None = None


class ProcessGroup:
    """One child process in a new session (its own process group); a context manager that stops the group.

    ``output`` is a file (the child's stdout and stderr go there) or None (inherited).
    """

    def __init__(self, name: str, command: Sequence[str | os.PathLike], *, env: Mapping[str, str],
                 cwd: str | os.PathLike, output: IO[bytes] | None = None) -> None:
        self.name = name
        self._cpu: dict[tuple[int, float], float] = {}
        self.process = subprocess.Popen([str(part) for part in command], env=dict(env), cwd=cwd, stdout=output,
                                        stderr=subprocess.STDOUT if output is not None else None,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        """The group's leader (and the group's id)."""
        return self.process.pid

    def alive(self) -> bool:
        """The leader is still running."""
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the whole group, wait for the leader, then SIGKILL whatever of the group is left."""
        stop_group(self.process, timeout, sig)

    def sample_cpu(self) -> float:
        """CPU seconds (user + system) spent so far by every process seen in the group at any call: sampled,
        so what a process spends after the last call before it exits is missed (an undercount)."""
        import psutil

        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == self.pid:
                    times = process.cpu_times()
                    self._cpu[(process.pid, process.create_time())] = times.user + times.system
            except (psutil.Error, ProcessLookupError):
                continue
        return sum(self._cpu.values())

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until_ready(url: str, timeout: float, group: ProcessGroup | None = None) -> None:
    """Poll ``url`` until it answers 200; raise if ``group`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group is not None and not group.alive():
            raise RuntimeError(f"{group.name} exited with code {group.process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


def log_tail(path: Path, characters: int = 4000) -> str:
    """The end of a log file (for error messages)."""
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return "(no log)"
