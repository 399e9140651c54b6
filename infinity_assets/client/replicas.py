"""Several Infinity servers behind one client: which replica takes the next request, which are out, and where
a failed request goes next.

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

:class:`Router` is the failover on top, shared by the client's sync and async paths: each attempt of a request
takes a replica; one that fails in a way another replica may not (connection, timeout, 5xx) is sent again at
once to the next healthy one, and in a fleet the first use of each replica checks that it serves the model::

    for attempt in router.attempts():
        with attempt:              # a failure another replica may not have: the loop goes on, else it raises
            if attempt.unverified:
                router.check_served(attempt.replica, get_models(attempt.replica.url))
            return send(attempt.replica.url)
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from infinity_assets.client.errors import InfinityError, InfinityResponseError

logger = logging.getLogger(__name__)


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


class Router:
    """Failover of one client's requests over its :class:`ReplicaSet` (see the module docstring).

    ``on_failover`` is called each time a request is sent again to another replica (the client counts them).
    """

    def __init__(self, replicas: ReplicaSet, model_name: str, on_failover: Callable[[], None] = lambda: None) -> None:
        self.replicas, self.model_name, self.on_failover = replicas, model_name, on_failover
        self.verified: set[str] = set()  # replicas whose model was checked (fleets only)

    def attempts(self) -> Iterator[Attempt]:
        """One :class:`Attempt` per replica tried for a request, until one succeeds or the error is raised."""
        tried: set[str] = set()
        while True:
            replica = self.replicas.acquire(tried)
            assert replica is not None  # a replica that failed leaves healthy ones untried, else it raises
            yield Attempt(self, replica, tried)

    def check_served(self, replica: Replica, payload: Any) -> None:
        """Raise unless ``payload`` (the replica's ``GET /models``) lists the client's model."""
        served = [str(item.get("id")) for item in payload.get("data", [])]
        if self.model_name not in served:
            raise InfinityResponseError(
                f"the Infinity replica {redact(replica.url)} serves {served}, not {self.model_name!r}: every URL "
                "in url / INFINITY_API_URL must serve the same model (and hidden_dim); fix or remove that replica")
        self.verified.add(replica.url)

    def fails_over(self, exc: InfinityError, replica: Replica, tried: set[str]) -> bool:
        """Whether a request that failed on ``replica`` is sent again at once to another one (and count it)."""
        if not exc.retryable or not self.replicas.healthy_count(tried):
            return False
        self.on_failover()
        logger.warning("Infinity replica %s failed (%s); sending the request to another replica",
                       redact(replica.url), exc)
        return True


@dataclass
class Attempt:
    """One replica's try at a request, as a context manager: it releases the replica, and swallows a failure
    that another replica may not have (so the caller's loop tries the next one)."""

    router: Router
    replica: Replica
    tried: set[str] = field(repr=False)

    @property
    def unverified(self) -> bool:
        """Whether this replica of a fleet must first show that it serves the model (its first use)."""
        return len(self.router.replicas) > 1 and self.replica.url not in self.router.verified

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if not isinstance(exc, InfinityError):
            self.router.replicas.release(self.replica)
            return False
        self.router.replicas.release(self.replica, failed=exc.retryable)
        self.tried.add(self.replica.url)
        return self.router.fails_over(exc, self.replica, self.tried)
