"""`InfinityEmbeddings`: a sync + async client for multi-vector embeddings from an Infinity server.

It speaks Infinity's real ``/embeddings`` protocol (see :mod:`infinity_assets.client.wire`), splits large inputs into
requests within the server's limits, keeps up to ``max_concurrency`` requests in flight, retries transient
failures with backoff, and returns float32 numpy arrays of shape ``(n_vectors, hidden_dim)``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Literal, TypeVar

import httpx
import numpy as np
import tenacity
from tqdm.auto import tqdm

from infinity_assets.client import allocator

from infinity_assets.client import wire
from infinity_assets.client.errors import (
    BatchEmbeddingError,
    InfinityAuthenticationError,
    InfinityBadRequestError,
    InfinityConnectionError,
    InfinityError,
    InfinityRateLimitError,
    InfinityResponseError,
    InfinityServerError,
    InfinityStatusError,
    InfinityTimeoutError,
    InvalidInputError,
)
from infinity_assets.client.replicas import Replica, ReplicaSet, parse_urls, redact
from infinity_assets.client.transports.default import async_transport, sync_transport, tls_context
from infinity_assets.client.wire import Encoding, ImageInput, Modality

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:7997"
DEFAULT_MODEL = "michaelfeil/colqwen2-v0.1"
Errors = Literal["raise", "collect"]
_PROBE_TEXT = "hidden_dim probe"
#: Async answers from this size on are decoded in a thread, off the event loop (a ColPali batch is ~7 MB).
_DECODE_ON_LOOP_BYTES = 1 << 20
_T = TypeVar("_T")


@dataclass
class ClientStats:
    """What a client did: HTTP responses received, retries, inputs embedded and inputs failed, and requests
    sent again at once to another replica after one failed (``failovers``)."""

    requests: int = 0
    retries: int = 0
    embedded: int = 0
    failed: int = 0
    failovers: int = 0


class InfinityEmbeddings:
    """Multi-vector embeddings (ColPali, ColQwen2, ColBERT) from a self-hosted Infinity server.

    A single input returns one read-only float32 ``np.ndarray`` of shape ``(n_vectors, hidden_dim)``; a list
    returns a list in input order. Batch methods split by ``embed_batch_size`` and keep up to
    ``max_concurrency`` requests in flight, in the sync methods too (one shared connection pool).

    Example::

        with InfinityEmbeddings(url="http://localhost:7997", model_name="vidore/colpali-v1.3") as emb:
            query = emb.embed_query("What is RAG?")            # (n_tokens, 128)
            pages = emb.embed_images_batch(["p1.png", "p2.png"], show_progress=True)

    ``url`` defaults to ``$INFINITY_API_URL``, else ``http://localhost:7997``; several comma-separated URLs (or
    a list) make a fleet: requests go to the replica with the fewest in flight, a replica failing with
    connection errors, timeouts or 5xx is out of rotation for a cool-down (:mod:`infinity_assets.client.replicas`) and
    the request is sent again at once to another one; each replica must serve ``model_name`` (checked with
    ``GET /models`` on first use). ``hidden_dim=None`` detects the
    size once from a float-encoded request; with base64 and a set ``hidden_dim`` that request is made once too
    (``verify_hidden_dim``), because a 384-d payload also splits evenly into 128-d rows. ``api_key`` is sent
    as ``Authorization: Bearer`` and never shown. ``transport`` replaces the network (tests, proxies).
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
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
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
        self._verified: set[str] = set()  # replicas whose model was checked (fleets only)
        self.model_name = model_name
        self.encoding: Encoding = encoding
        self.hidden_dim = hidden_dim
        self.timeout = timeout
        self.max_retries = max_retries
        self.embed_batch_size = embed_batch_size
        self.max_concurrency = max_concurrency
        self.verify_hidden_dim = verify_hidden_dim
        self.stats = ClientStats()
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        allocator.tune()  # large response buffers reused, not mapped afresh (allocator.py: -20 % CPU per page)
        self._dim_checked = False
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._slots = threading.Semaphore(max_concurrency)  # requests in flight, sync API
        self._http: httpx.Client | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._async: _AsyncState | None = None
        # Seams for tests: retry backoff without real sleeping.
        self._sleep: Callable[[float], None] = tenacity.nap.sleep
        self._asleep: Callable[[float], Any] = asyncio.sleep

    def __repr__(self) -> str:
        auth = ", api_key=***" if "Authorization" in self._headers else ""
        return (f"InfinityEmbeddings(url={','.join(map(redact, self.urls))!r}, model_name={self.model_name!r}, encoding={self.encoding!r}, "
                f"hidden_dim={self.hidden_dim!r}{auth})")

    # ---------------------------------------------------------------- sync API
    def embed_text(self, text: str) -> np.ndarray:
        """Embed one text (a document or a query) into ``(n_tokens, hidden_dim)`` vectors."""
        return self._one(wire.check_text(text), "text")

    def embed_query(self, query: str) -> np.ndarray:
        """Embed a search query; the same as :meth:`embed_text`."""
        return self.embed_text(query)

    def embed_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Embed texts in as few requests as the server allows (normally one); raises on any failure."""
        return self._many(texts, "text", wire.MAX_TEXTS_PER_REQUEST, "raise", False)

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """Embed one image (path, bytes, BytesIO or PIL image) into ``(n_patches, hidden_dim)`` vectors."""
        return self._one(wire.image_data_uri(image), "image")

    def embed_images(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Embed images in as few requests as the server allows (32 per request); raises on any failure."""
        return self._many(images, "image", wire.MAX_IMAGES_PER_REQUEST, "raise", False)

    def embed_documents_batch(
        self, texts: Iterable[str], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Embed many texts, ``embed_batch_size`` per request, ``max_concurrency`` requests in flight.

        ``errors="raise"`` raises :class:`BatchEmbeddingError` listing every failed index after trying all
        inputs; ``errors="collect"`` puts the :class:`InfinityError` of a failed input at its position.
        """
        return self._many(texts, "text", self._batch_size("text"), errors, show_progress)

    def embed_images_batch(
        self, images: Iterable[ImageInput], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Embed many images, ``embed_batch_size`` per request (at most 32); see :meth:`embed_documents_batch`."""
        return self._many(images, "image", self._batch_size("image"), errors, show_progress)

    def iter_embeddings(
        self, items: Iterable[Any], *, modality: Modality = "text", show_progress: bool = False,
        max_buffered_bytes: int | None = None,
    ) -> Iterator[np.ndarray | InfinityError]:
        """Yield one result per input, in input order, while later batches are still in flight.

        At most ``2 * max_concurrency`` batches are held (in flight or waiting to be consumed), so this suits
        inputs that do not fit in memory at once. ``max_buffered_bytes`` bounds them by size too: no new batch
        is sent while the held ones would exceed it, each counted at the largest footprint seen so far (its
        response body and decoded vectors); fewer requests are then in flight, never fewer than one.
        A failed input yields its :class:`InfinityError` (like ``errors="collect"``); server failures
        (unreachable, 5xx after retries, wrong hidden_dim) raise.
        """
        yield from self._iter_results(items, modality, self._batch_size(modality), show_progress,
                                      max_buffered_bytes)

    def detect_hidden_dim(self) -> int:
        """The model's embedding size, asked once from the server (one float request) and cached."""
        self._ensure_dim()
        assert self.hidden_dim is not None
        return self.hidden_dim

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer, e.g. ``{"unix": 1732435200.0}``; raises if it is unreachable."""
        return self._retrying_call(lambda: self._get("/health"))

    def models(self) -> list[str]:
        """The names of the models the server serves (``GET /models``)."""
        payload = self._retrying_call(lambda: self._get("/models"))
        return [str(item.get("id")) for item in payload.get("data", [])]

    def close(self) -> None:
        """Close the connection pools and worker threads. The client can still be used afterwards."""
        with self._lock:
            http, self._http = self._http, None
            executor, self._executor = self._executor, None
            state, self._async = self._async, None
        if executor is not None:
            executor.shutdown(wait=True)
        if http is not None:
            http.close()
        if state is not None and not state.loop.is_closed() and not state.loop.is_running():
            state.loop.run_until_complete(state.http.aclose())

    def __enter__(self) -> InfinityEmbeddings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- async API
    async def aembed_text(self, text: str) -> np.ndarray:
        """Async :meth:`embed_text`."""
        return await self._aone(wire.check_text(text), "text")

    async def aembed_query(self, query: str) -> np.ndarray:
        """Async :meth:`embed_query`."""
        return await self.aembed_text(query)

    async def aembed_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Async :meth:`embed_documents`."""
        return await self._amany(texts, "text", wire.MAX_TEXTS_PER_REQUEST, "raise", False)

    async def aembed_image(self, image: ImageInput) -> np.ndarray:
        """Async :meth:`embed_image`."""
        return await self._aone(wire.image_data_uri(image), "image")

    async def aembed_images(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Async :meth:`embed_images`."""
        return await self._amany(images, "image", wire.MAX_IMAGES_PER_REQUEST, "raise", False)

    async def aembed_documents_batch(
        self, texts: Iterable[str], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Async :meth:`embed_documents_batch` (concurrent, not sequential)."""
        return await self._amany(texts, "text", self._batch_size("text"), errors, show_progress)

    async def aembed_images_batch(
        self, images: Iterable[ImageInput], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Async :meth:`embed_images_batch` (concurrent, not sequential)."""
        return await self._amany(images, "image", self._batch_size("image"), errors, show_progress)

    async def aiter_embeddings(
        self, items: Iterable[Any], *, modality: Modality = "text", show_progress: bool = False,
        max_buffered_bytes: int | None = None,
    ) -> AsyncIterator[np.ndarray | InfinityError]:
        """Async :meth:`iter_embeddings`."""
        async for result in self._aiter_results(items, modality, self._batch_size(modality), show_progress,
                                                max_buffered_bytes):
            yield result

    async def ahealth(self) -> dict[str, Any]:
        """Async :meth:`health`."""
        async def attempt() -> dict[str, Any]:
            return await self._aget("/health")

        return await self._aretrying_call(attempt)

    async def aclose(self) -> None:
        """Close the async connection pool (and the sync one)."""
        state, self._async = self._async, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.http.aclose()
        self.close()

    async def __aenter__(self) -> InfinityEmbeddings:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- shared logic
    def _batch_size(self, modality: Modality) -> int:
        limit = wire.MAX_TEXTS_PER_REQUEST if modality == "text" else wire.MAX_IMAGES_PER_REQUEST
        return min(self.embed_batch_size, limit)

    @staticmethod
    def _prepare(items: list[Any], modality: Modality) -> list[str | InvalidInputError]:
        convert = wire.check_text if modality == "text" else wire.image_data_uri
        prepared: list[str | InvalidInputError] = []
        for item in items:
            try:
                prepared.append(convert(item))
            except InvalidInputError as exc:
                prepared.append(exc)
        return prepared

    def _retry_options(self) -> dict[str, Any]:
        return dict(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=self._backoff,
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, InfinityError) and exc.retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )

    _exponential = tenacity.wait_random_exponential(multiplier=0.5, max=10.0)  # "full jitter"

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), 60.0)
        return self._exponential(state)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        with self._stats_lock:
            self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning("Infinity request failed (%s); retry %d of %d in %.2fs",
                       exc, state.attempt_number, self.max_retries, wait)

    def _raise_for_status(self, response: httpx.Response, what: str, content: bytes | None = None,
                          url: str | None = None) -> bytes:
        """The body of a 200 response (``content`` if it was read apart); other statuses raise."""
        with self._stats_lock:
            self.stats.requests += 1
        if response.status_code == 200:
            return response.content if content is None else content
        try:
            payload = response.json()
        except ValueError:
            payload = None
        text = response.text[:300] if payload is None else ""
        message = wire.server_message(payload, text or response.reason_phrase)
        status = response.status_code
        where = f"{what} at {redact(url or self.url)} (model {self.model_name!r})"
        if status in (401, 403):
            raise InfinityAuthenticationError(
                f"the Infinity server rejected the API key (HTTP {status}) for {where}: {message}; "
                "set api_key / INFINITY_API_KEY to the server's --api-key",
                status_code=status, server_message=message)
        if status in (400, 422):
            raise InfinityBadRequestError(f"HTTP {status} from {where}: {message}",
                                          status_code=status, server_message=message)
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if status == 429:
            raise InfinityRateLimitError(f"the Infinity server is overloaded (HTTP 429) for {where}: {message}",
                                         status_code=status, server_message=message, retry_after=retry_after)
        if status >= 500 or status == 408:
            raise InfinityServerError(f"HTTP {status} from {where}: {message}",
                                      status_code=status, server_message=message, retry_after=retry_after)
        raise InfinityStatusError(f"unexpected HTTP {status} from {where}: {message}",
                                  status_code=status, server_message=message)

    def _transport_error(self, exc: httpx.HTTPError, url: str | None = None) -> InfinityError:
        url = redact(url or self.url)
        if isinstance(exc, httpx.TimeoutException):
            return InfinityTimeoutError(
                f"no answer from the Infinity server at {url} within {self.timeout:g}s "
                f"({type(exc).__name__}); raise timeout or lower embed_batch_size")
        if isinstance(exc, httpx.ConnectError):
            return InfinityConnectionError(
                f"cannot reach the Infinity server at {url} ({exc}); check that it is running and that "
                "url / INFINITY_API_URL points at it")
        return InfinityConnectionError(
            f"the connection to the Infinity server at {url} broke mid-request ({type(exc).__name__}: {exc}); "
            "check the server's health and any proxy in between")

    def _decoder(self, count: int) -> Callable[[bytes], list[np.ndarray]]:
        def decode(body: bytes) -> list[np.ndarray]:
            assert self.hidden_dim is not None
            return wire.decode_response(body, expected=count, encoding=self.encoding, hidden_dim=self.hidden_dim,
                                        model=self.model_name, url=self.url)
        return decode

    def _parse_json(self, body: bytes) -> Any:
        return wire.parse_json(body, self.url)

    def _check_dim(self, payload: Any) -> None:
        detected = wire.detect_dim(payload)
        if self.hidden_dim is None:
            self.hidden_dim = detected
        elif detected != self.hidden_dim:
            raise InfinityResponseError(
                f"model {self.model_name!r} at {self.url} returns {detected}-dimensional vectors but hidden_dim is "
                f"{self.hidden_dim}; set hidden_dim={detected} (INFINITY_HIDDEN_DIM) or None to detect it")
        self._dim_checked = True

    def _probe_beside_batches(self) -> bool:
        """Whether a batch iterator sends the hidden_dim probe beside its first batches (one round trip less):
        only to verify a known hidden_dim; to detect it, the probe comes first."""
        return self._needs_probe() and self.hidden_dim is not None

    def _needs_probe(self) -> bool:
        return not self._dim_checked and (self.hidden_dim is None or
                                          (self.verify_hidden_dim and self.encoding == "base64"))

    @staticmethod
    def _merge(prepared: list[Any], sent_results: list[Any]) -> list[Any]:
        results = iter(sent_results)
        return [item if isinstance(item, InvalidInputError) else next(results) for item in prepared]

    def _finish(self, results: list[Any], errors: Errors) -> list[Any]:
        failures = {i: r for i, r in enumerate(results) if isinstance(r, InfinityError)}
        if failures and errors == "raise":
            raise BatchEmbeddingError(failures, len(results))
        return results

    def _count(self, results: list[Any]) -> None:
        failed = sum(isinstance(r, InfinityError) for r in results)
        with self._stats_lock:
            self.stats.failed += failed
            self.stats.embedded += len(results) - failed

    def _http_options(self) -> dict[str, Any]:
        """The options of the sync and async httpx clients (``transport`` aside)."""
        return dict(timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                    limits=httpx.Limits(max_connections=self.max_concurrency,
                                        max_keepalive_connections=self.max_concurrency),
                    headers=self._headers, verify=tls_context())

    def _uses_tls(self) -> bool:
        return any(url.lower().startswith("https:") for url in self.urls)

    # ---------------------------------------------------------------- sync machinery
    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                options = self._http_options()
                self._http = httpx.Client(**options, transport=self._transport or sync_transport(
                    options["limits"], tls=self._uses_tls()))
            return self._http

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                # One thread per batch a batch iterator may hold, so that batches waiting for a request slot
                # prepare their inputs (decode images) meanwhile.
                self._executor = ThreadPoolExecutor(2 * self.max_concurrency, thread_name_prefix="infinity")
            return self._executor

    def _retrying_call(self, attempt: Callable[[], Any]) -> Any:
        return tenacity.Retrying(sleep=self._sleep, **self._retry_options())(attempt)

    def _get(self, path: str, replica: Replica | None = None) -> Any:
        """GET ``path`` from ``replica`` (default: the next one in rotation), not retried."""
        return self._on_replica(lambda r: self._get_from(r.url, path), replica)

    def _get_from(self, url: str, path: str) -> Any:
        try:
            response = self._client().get(f"{url}{path}")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        return self._parse_json(self._raise_for_status(response, f"GET {path}", url=url))

    def _on_replica(self, call: Callable[[Replica], _T], replica: Replica | None = None) -> _T:
        """``call(replica)`` on the next replica in rotation; if it fails in a way another replica may not
        (connection, timeout, 5xx), again at once on the next healthy one. Raises the last error when none is
        left (the caller's retries then wait and try again, cooled-down replicas included)."""
        tried: set[str] = set()
        while True:
            current = replica or self.replicas.acquire(tried)
            assert current is not None
            try:
                if replica is None:
                    self._verify_replica(current)
                result = call(current)
            except InfinityError as exc:
                self.replicas.release(current, failed=exc.retryable)
                tried.add(current.url)
                if replica is None and self._fail_over(exc, current, tried):
                    continue
                raise
            self.replicas.release(current)
            return result

    def _fail_over(self, exc: InfinityError, replica: Replica, tried: set[str]) -> bool:
        """Whether to send a failed request again at once to another replica (and count it)."""
        if not exc.retryable or not self.replicas.healthy_count(tried):
            return False
        with self._stats_lock:
            self.stats.failovers += 1
        logger.warning("Infinity replica %s failed (%s); sending the request to another replica",
                       redact(replica.url), exc)
        return True

    def _verify_replica(self, replica: Replica) -> None:
        """In a fleet, the first use of each replica checks that it serves ``model_name``."""
        if len(self.replicas) == 1 or replica.url in self._verified:
            return
        self._check_served(replica, self._get_from(replica.url, "/models"))

    def _check_served(self, replica: Replica, payload: Any) -> None:
        served = [str(item.get("id")) for item in payload.get("data", [])]
        if self.model_name not in served:
            raise InfinityResponseError(
                f"the Infinity replica {redact(replica.url)} serves {served}, not {self.model_name!r}: every URL "
                "in url / INFINITY_API_URL must serve the same model (and hidden_dim); fix or remove that replica")
        self._verified.add(replica.url)

    def _post_embeddings(self, inputs: list[str], modality: Modality, encoding: Encoding,
                         parse: Callable[[bytes], _T]) -> _T:
        """POST one request, retried; ``parse`` turns the 200 body into the result inside the retried attempt
        (a body damaged in transit is retried).

        A 200 body is read apart from the response: httpx responses sit in a reference cycle until the garbage
        collector runs, and a multi-megabyte body kept in one would live that long too."""
        body = wire.request_body(self.model_name, inputs, modality, encoding)

        def send(replica: Replica) -> _T:
            try:
                with self._slots, self._client().stream("POST", f"{replica.url}/embeddings",
                                                        content=body) as response:
                    content = (_whole(list(response.iter_bytes())) if response.status_code == 200
                               else response.read())
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, replica.url) from None
            return parse(self._raise_for_status(response, "POST /embeddings", content, replica.url))

        return self._retrying_call(lambda: self._on_replica(send))

    def _ensure_dim(self) -> None:
        if self._needs_probe():
            self._check_dim(self._post_embeddings([_PROBE_TEXT], "text", "float", self._parse_json))

    def _embed_sent(self, inputs: list[str], modality: Modality) -> list[Any]:
        """Embed prepared inputs; a rejected request is bisected to find the inputs the server refuses."""
        try:
            return self._post_embeddings(inputs, modality, self.encoding, self._decoder(len(inputs)))
        except InfinityBadRequestError as exc:
            if len(inputs) == 1:
                return [exc]
            middle = len(inputs) // 2
            return self._embed_sent(inputs[:middle], modality) + self._embed_sent(inputs[middle:], modality)

    def _embed_chunk(self, items: list[Any], modality: Modality) -> list[Any]:
        prepared = self._prepare(items, modality)
        sendable = [p for p in prepared if not isinstance(p, InvalidInputError)]
        results = self._merge(prepared, self._embed_sent(sendable, modality) if sendable else [])
        self._count(results)
        return results

    def _one(self, prepared: str, modality: Modality) -> np.ndarray:
        self._ensure_dim()
        result = self._embed_sent([prepared], modality)[0]
        self._count([result])
        if isinstance(result, InfinityError):
            raise result
        return result

    def _iter_chunk_results(self, items: Iterable[Any], modality: Modality, size: int,
                            max_bytes: int | None) -> Iterator[list[Any]]:
        pool, window = self._pool(), _Window(self.max_concurrency, max_bytes, self.encoding)
        probe = pool.submit(self._ensure_dim) if self._probe_beside_batches() else None
        if probe is None:
            self._ensure_dim()
        pending: deque[Future[list[Any]]] = deque()
        iterator = iter(items)
        try:
            while True:
                while window.has_room(len(pending)) and (chunk := list(islice(iterator, size))):
                    pending.append(pool.submit(self._embed_chunk, chunk, modality))
                if probe is not None:
                    probe, verdict = None, probe
                    verdict.result()  # a hidden_dim mismatch raises before any result is used
                if not pending:
                    return
                chunk_results = pending.popleft().result()
                window.observe(chunk_results)
                yield chunk_results
        finally:
            for future in pending:
                future.cancel()

    def _iter_results(self, items: Iterable[Any], modality: Modality, size: int, progress: bool,
                      max_bytes: int | None = None) -> Iterator[Any]:
        with tqdm(total=_length(items), disable=not progress, unit=modality) as bar:
            for chunk_results in self._iter_chunk_results(items, modality, size, max_bytes):
                bar.update(len(chunk_results))
                yield from chunk_results

    def _many(self, items: Iterable[Any], modality: Modality, size: int, errors: Errors, progress: bool) -> list[Any]:
        return self._finish(list(self._iter_results(items, modality, size, progress)), errors)

    # ---------------------------------------------------------------- async machinery
    def _astate(self) -> _AsyncState:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async.loop is not loop:
            # httpx.AsyncClient and asyncio primitives belong to one event loop; make new ones per loop.
            options = self._http_options()
            http = httpx.AsyncClient(**options, transport=self._transport or async_transport(
                options["limits"], tls=self._uses_tls()))
            self._async = _AsyncState(loop, http, asyncio.Semaphore(self.max_concurrency), asyncio.Lock())
        return self._async

    async def _aretrying_call(self, attempt: Callable[[], Any]) -> Any:
        return await tenacity.AsyncRetrying(sleep=self._asleep, **self._retry_options())(attempt)

    async def _aget(self, path: str) -> Any:
        return await self._aon_replica(lambda replica: self._aget_from(replica.url, path))

    async def _aget_from(self, url: str, path: str) -> Any:
        try:
            response = await self._astate().http.get(f"{url}{path}")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        return self._parse_json(self._raise_for_status(response, f"GET {path}", url=url))

    async def _aon_replica(self, call: Callable[[Replica], Any]) -> Any:
        """The async twin of :meth:`_on_replica`."""
        tried: set[str] = set()
        while True:
            replica = self.replicas.acquire(tried)
            assert replica is not None
            try:
                await self._averify_replica(replica)
                result = await call(replica)
            except InfinityError as exc:
                self.replicas.release(replica, failed=exc.retryable)
                tried.add(replica.url)
                if self._fail_over(exc, replica, tried):
                    continue
                raise
            self.replicas.release(replica)
            return result

    async def _averify_replica(self, replica: Replica) -> None:
        if len(self.replicas) > 1 and replica.url not in self._verified:
            served = await self._aget_from(replica.url, "/models")
            self._check_served(replica, served)

    async def _apost_embeddings(self, inputs: list[str], modality: Modality, encoding: Encoding,
                                parse: Callable[[bytes], _T]) -> _T:
        body = wire.request_body(self.model_name, inputs, modality, encoding)

        async def send(replica: Replica) -> _T:
            state = self._astate()
            async with state.semaphore:
                try:
                    async with state.http.stream("POST", f"{replica.url}/embeddings", content=body) as response:
                        content = (_whole([c async for c in response.aiter_bytes()])
                                   if response.status_code == 200 else await response.aread())
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, replica.url) from None
            checked = self._raise_for_status(response, "POST /embeddings", content, replica.url)
            if len(checked) < _DECODE_ON_LOOP_BYTES:
                return parse(checked)
            # A large answer is decoded in a thread (base64 decoding releases the GIL), so the loop keeps
            # reading the other answers meanwhile: 177 -> 375 ColPali pages/s on pinned cores.
            return await asyncio.get_running_loop().run_in_executor(self._pool(), parse, checked)

        async def attempt() -> _T:  # a coroutine function: tenacity awaits only those
            return await self._aon_replica(send)

        return await self._aretrying_call(attempt)

    async def _aensure_dim(self) -> None:
        if self._needs_probe():
            async with self._astate().probe_lock:
                if self._needs_probe():
                    self._check_dim(await self._apost_embeddings([_PROBE_TEXT], "text", "float", self._parse_json))

    async def _aembed_sent(self, inputs: list[str], modality: Modality) -> list[Any]:
        try:
            return await self._apost_embeddings(inputs, modality, self.encoding, self._decoder(len(inputs)))
        except InfinityBadRequestError as exc:
            if len(inputs) == 1:
                return [exc]
            middle = len(inputs) // 2
            halves = await asyncio.gather(self._aembed_sent(inputs[:middle], modality),
                                          self._aembed_sent(inputs[middle:], modality))
            return halves[0] + halves[1]

    async def _aembed_chunk(self, items: list[Any], modality: Modality) -> list[Any]:
        if modality == "image":  # decoding images is CPU work (Pillow releases the GIL): keep the loop free
            prepared = await asyncio.get_running_loop().run_in_executor(self._pool(), self._prepare, items, modality)
        else:
            prepared = self._prepare(items, modality)
        sendable = [p for p in prepared if not isinstance(p, InvalidInputError)]
        results = self._merge(prepared, await self._aembed_sent(sendable, modality) if sendable else [])
        self._count(results)
        return results

    async def _aone(self, prepared: str, modality: Modality) -> np.ndarray:
        await self._aensure_dim()
        result = (await self._aembed_sent([prepared], modality))[0]
        self._count([result])
        if isinstance(result, InfinityError):
            raise result
        return result

    async def _aiter_results(self, items: Iterable[Any], modality: Modality, size: int,
                             progress: bool, max_bytes: int | None = None) -> AsyncIterator[Any]:
        window = _Window(self.max_concurrency, max_bytes, self.encoding)
        probe = asyncio.ensure_future(self._aensure_dim()) if self._probe_beside_batches() else None
        if probe is None:
            await self._aensure_dim()
        pending: deque[asyncio.Future[Any]] = deque()
        iterator = iter(items)
        try:
            with tqdm(total=_length(items), disable=not progress, unit=modality) as bar:
                while True:
                    while window.has_room(len(pending)) and (chunk := list(islice(iterator, size))):
                        pending.append(asyncio.ensure_future(self._aembed_chunk(chunk, modality)))
                    if probe is not None:
                        probe, verdict = None, probe
                        await verdict  # a hidden_dim mismatch raises before any result is used
                    if not pending:
                        return
                    chunk_results = await pending.popleft()
                    window.observe(chunk_results)
                    bar.update(len(chunk_results))
                    for result in chunk_results:
                        yield result
        finally:
            if probe is not None:
                pending.append(probe)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _amany(self, items: Iterable[Any], modality: Modality, size: int, errors: Errors,
                     progress: bool) -> list[Any]:
        results = [r async for r in self._aiter_results(items, modality, size, progress)]
        return self._finish(results, errors)


class _Window:
    """How many batches an iterator may hold (in flight or waiting to be consumed).

    At most ``2 * max_concurrency``; with ``max_bytes``, also no more than fit in it at the largest footprint
    seen so far (until a batch has returned, ``max_concurrency``), and always at least one.
    """

    # Peak bytes of a batch per byte of its float32 vectors: the response body (base64 is 4/3 of the
    # vectors; JSON floats ~5 x, parsed into Python floats ~8 x more) plus the decoded vectors.
    FOOTPRINT = {"base64": 1 + 4 / 3, "float": 14.0}

    def __init__(self, max_concurrency: int, max_bytes: int | None, encoding: Encoding) -> None:
        self.max_concurrency, self.max_bytes = max_concurrency, max_bytes
        self.footprint_ratio = self.FOOTPRINT[encoding]
        self.batch_bytes = 0.0

    def has_room(self, held: int) -> bool:
        """Whether one more batch may be sent while ``held`` batches are held."""
        if held == 0:
            return True
        if held >= 2 * self.max_concurrency:
            return False
        if self.max_bytes is None:
            return True
        if not self.batch_bytes:
            return held < self.max_concurrency
        return (held + 1) * self.batch_bytes <= self.max_bytes

    def observe(self, results: list[Any]) -> None:
        """Take the size of a returned batch into account."""
        vectors = sum(r.nbytes for r in results if isinstance(r, np.ndarray))
        self.batch_bytes = max(self.batch_bytes, vectors * self.footprint_ratio)


def _whole(chunks: list[bytes]) -> bytes:
    """A body from its chunks without copying a lone one (the plain-HTTP transport hands a body over whole)."""
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass
class _AsyncState:
    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    probe_lock: asyncio.Lock


def _length(items: Iterable[Any]) -> int | None:
    return len(items) if isinstance(items, Sequence) else None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
