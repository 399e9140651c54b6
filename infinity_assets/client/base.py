"""The settings and state :class:`~infinity_assets.client.embeddings.InfinityEmbeddings` shares between its sync
and async I/O: validation of the constructor's arguments, the replicas and their router, statistics, the
hidden_dim probe's state, and the steps both I/O paths take around a request (checking its status, decoding
its body), each a thin wrapper over :mod:`.policy`'s decisions with this client's settings.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import tenacity

from infinity_assets.client import allocator, policy, wire
from infinity_assets.client.errors import InfinityError
from infinity_assets.client.replicas import ReplicaSet, Router, parse_urls, redact
from infinity_assets.client.transports.default import TransportKind, tls_context, transport_kind
from infinity_assets.client.wire import Encoding

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:7997"
DEFAULT_MODEL = "michaelfeil/colqwen2-v0.1"


@dataclass
class ClientStats:
    """What a client did: HTTP responses received, retries, inputs embedded and inputs failed, and requests
    sent again at once to another replica after one failed (``failovers``)."""

    requests: int = 0
    retries: int = 0
    embedded: int = 0
    failed: int = 0
    failovers: int = 0


class BaseClient:
    """Settings, state and per-request steps shared by the sync and async I/O (see the module docstring).

    The arguments are :class:`~infinity_assets.client.embeddings.InfinityEmbeddings`'s, documented there.
    """

    def __init__(
        self,
        *,
        url: str | Sequence[str] | None = None,
        model_name: str = DEFAULT_MODEL,
        encoding: Encoding = "base64",
        hidden_dim: int | None = 128,
        timeout: float = 60.0,
        max_retries: int = 3,
        embed_batch_size: int = 10,
        max_concurrency: int = 4,
        api_key: str | None = None,
        verify_hidden_dim: bool = True,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | TransportKind | None = None,
        tune_allocator: bool | None = None,
    ) -> None:
        if encoding not in ("base64", "float"):
            raise ValueError(f"encoding must be 'base64' or 'float', got {encoding!r}")
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer or None, got {hidden_dim!r}")
        if embed_batch_size < 1 or max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("embed_batch_size and max_concurrency must be >= 1, max_retries >= 0, timeout > 0")
        self.urls = parse_urls(url or os.environ.get("INFINITY_API_URL") or DEFAULT_URL)
        self.url = ",".join(self.urls)
        self.replicas = ReplicaSet(self.urls)
        self.model_name = model_name
        self.encoding: Encoding = encoding
        self.hidden_dim = hidden_dim
        self.timeout = timeout
        self.max_retries = max_retries
        self.embed_batch_size = embed_batch_size
        self.max_concurrency = max_concurrency
        self.verify_hidden_dim = verify_hidden_dim
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()
        self._router = Router(self.replicas, model_name, on_failover=self._count_failover)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # A transport object replaces the network (tests, proxies); else one of the named kinds is built.
        self._transport = None if transport is None or isinstance(transport, str) else transport
        self.transport_kind: TransportKind | None = (
            None if self._transport is not None else transport_kind(transport, self.urls))  # type: ignore[arg-type]
        self.tune_allocator = allocator.enabled(default=False) if tune_allocator is None else tune_allocator
        if self.tune_allocator:
            allocator.tune()
        self._dim_checked = False
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._slots = threading.Semaphore(max_concurrency)  # requests in flight, sync API
        self._http: httpx.Client | None = None  # the sync API's connection pool, made at first use
        # Seams for tests: retry backoff without real sleeping.
        self._sleep: Callable[[float], None] = tenacity.nap.sleep
        self._asleep: Callable[[float], Any] = asyncio.sleep

    def __repr__(self) -> str:
        auth = ", api_key=***" if "Authorization" in self._headers else ""
        return (f"{type(self).__name__}(url={','.join(map(redact, self.urls))!r}, model_name={self.model_name!r}, "
                f"encoding={self.encoding!r}, hidden_dim={self.hidden_dim!r}{auth})")

    @property
    def _verified(self) -> set[str]:
        """The replicas whose model was checked (fleets only)."""
        return self._router.verified

    # ---------------------------------------------------------------- settings of the I/O
    def _http_options(self) -> dict[str, Any]:
        """The options of the sync and async httpx clients (``transport`` aside)."""
        return dict(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                    limits=httpx.Limits(max_connections=self.max_concurrency,
                                        max_keepalive_connections=self.max_concurrency),
                    headers=self._headers, verify=tls_context())

    def _pool(self) -> ThreadPoolExecutor:
        """The worker threads: the sync API's batches, and the async API's image preparation and decoding."""
        with self._lock:
            if self._executor is None:
                # One thread per batch a batch iterator may hold, so that batches waiting for a request slot
                # prepare their inputs (decode images) meanwhile.
                self._executor = ThreadPoolExecutor(2 * self.max_concurrency, thread_name_prefix="infinity")
            return self._executor

    def _batch_size(self, modality: wire.Modality) -> int:
        return policy.batch_size(self.embed_batch_size, modality)

    def _retry_options(self) -> dict[str, Any]:
        return policy.retry_options(self.max_retries, self._log_retry)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        with self._stats_lock:
            self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning("Infinity request failed (%s); retry %d of %d in %.2fs",
                       exc, state.attempt_number, self.max_retries, wait)

    # ---------------------------------------------------------------- around each request
    def _raise_for_status(self, response: httpx.Response, what: str, content: bytes | None = None,
                          url: str | None = None) -> bytes:
        """The body of a 200 response (``content`` if it was read apart); other statuses raise."""
        with self._stats_lock:
            self.stats.requests += 1
        if response.status_code == 200:
            return response.content if content is None else content
        raise policy.status_error(response, f"{what} at {redact(url or self.url)} (model {self.model_name!r})")

    def _transport_error(self, exc: httpx.HTTPError, url: str | None = None) -> InfinityError:
        return policy.transport_error(exc, redact(url or self.url), self.timeout)

    def _decoder(self, count: int) -> Callable[[bytes], list[np.ndarray]]:
        def decode(body: bytes) -> list[np.ndarray]:
            assert self.hidden_dim is not None
            return wire.decode_response(body, expected=count, encoding=self.encoding, hidden_dim=self.hidden_dim,
                                        model=self.model_name, url=self.url)
        return decode

    def _parse_json(self, body: bytes) -> Any:
        return wire.parse_json(body, self.url)

    # ---------------------------------------------------------------- the hidden_dim probe
    def _check_dim(self, payload: Any) -> None:
        self.hidden_dim = policy.checked_dim(self.hidden_dim, payload, self.model_name, self.url)
        self._dim_checked = True

    def _needs_probe(self) -> bool:
        return not self._dim_checked and (self.hidden_dim is None or
                                          (self.verify_hidden_dim and self.encoding == "base64"))

    def _probe_beside_batches(self) -> bool:
        """Whether a batch iterator sends the hidden_dim probe beside its first batches (one round trip less):
        only to verify a known hidden_dim; to detect it, the probe comes first."""
        return self._needs_probe() and self.hidden_dim is not None

    # ---------------------------------------------------------------- statistics
    def _count(self, results: list[Any]) -> list[Any]:
        failed = sum(isinstance(r, InfinityError) for r in results)
        with self._stats_lock:
            self.stats.failed += failed
            self.stats.embedded += len(results) - failed
        return results

    def _count_failover(self) -> None:
        with self._stats_lock:
            self.stats.failovers += 1
