"""Several Infinity servers behind one client: which replica takes the next request, and which are out.

Plain Python, no HTTP. :class:`ReplicaSet` hands out the healthy replica with the fewest requests in flight
(ties go round-robin), takes a replica that failed (connection error, timeout, 5xx) out of rotation for a
cool-down that doubles with each consecutive failure (``cooldown`` .. ``max_cooldown`` seconds), and lets it
back in when the cool-down is over: its next request is the probe, and one success puts it back in full
rotation. When every replica is cooling down, the one whose cool-down ends first is tried (nothing is refused
while a replica might answer). Thread-safe; the clock is injectable for tests.

Example::

    replicas = ReplicaSet(parse_urls("http://gpu-a:7997,http://gpu-b:7997"))
    replica = replicas.acquire()
    try:
        ...  # send to replica.url
    except ConnectionError:
        replicas.release(replica, failed=True)
    else:
        replicas.release(replica)
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """The replica URLs of ``"http://a:7997,http://b:7997"`` (or a list), without trailing slashes or repeats."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    found = list(dict.fromkeys(part.strip().rstrip("/") for part in parts if part.strip()))
    for url in found:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"{redact(url)!r} is not an http(s) URL of an Infinity server (url / INFINITY_API_URL "
                             "takes one URL or several, comma-separated)")
    if not found:
        raise ValueError("no Infinity server URL given (url / INFINITY_API_URL)")
    return found


def redact(url: str) -> str:
    """The URL without a password (``http://user:***@host``), for messages and metadata."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass
class Replica:
    """One server: its URL and what the client saw of it."""

    url: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0
    seconds_out: float = 0.0

    def stats(self) -> dict[str, float]:
        """Requests sent, failures, and seconds spent out of rotation."""
        return {"requests": self.requests, "failures": self.failures, "seconds_out": round(self.seconds_out, 2)}


class ReplicaSet:
    """The replicas of one client (see the module docstring for the rules)."""

    def __init__(self, urls: Sequence[str], *, cooldown: float = 2.0, max_cooldown: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.replicas = [Replica(url) for url in urls]
        self.cooldown, self.max_cooldown, self.clock = cooldown, max_cooldown, clock
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.replicas)

    def acquire(self, exclude: set[str] | frozenset[str] = frozenset()) -> Replica | None:
        """The replica for the next request (counted as in flight), or ``None`` if all are in ``exclude``."""
        with self._lock:
            now = self.clock()
            candidates = [r for r in self.replicas if r.url not in exclude]
            if not candidates:
                return None
            healthy = [r for r in candidates if r.down_until <= now]
            if healthy:
                start = self._next
                self._next = (self._next + 1) % len(self.replicas)
                order = {r.url: (i - start) % len(self.replicas) for i, r in enumerate(self.replicas)}
                chosen = min(healthy, key=lambda r: (r.in_flight, order[r.url]))
            else:
                chosen = min(candidates, key=lambda r: r.down_until)
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def healthy_count(self, exclude: set[str] | frozenset[str] = frozenset()) -> int:
        """How many replicas outside ``exclude`` are in rotation now."""
        with self._lock:
            now = self.clock()
            return sum(1 for r in self.replicas if r.url not in exclude and r.down_until <= now)

    def release(self, replica: Replica, *, failed: bool = False) -> None:
        """The request to ``replica`` ended; ``failed`` (connection error, timeout, 5xx) takes it out for a while."""
        with self._lock:
            replica.in_flight -= 1
            now = self.clock()
            if not failed:
                replica.consecutive_failures = 0
                return
            replica.failures += 1
            replica.consecutive_failures += 1
            pause = min(self.max_cooldown, self.cooldown * 2 ** (replica.consecutive_failures - 1))
            if replica.down_until <= now:
                replica.seconds_out += pause
            replica.down_until = now + pause

    def stats(self) -> dict[str, dict[str, float]]:
        """Per replica (URL without password): requests, failures, seconds out of rotation."""
        with self._lock:
            return {redact(r.url): r.stats() for r in self.replicas}
