"""The sync I/O of :class:`~infinity_assets.client.embeddings.InfinityEmbeddings`: one ``httpx.Client``, worker
threads that keep up to ``max_concurrency`` requests in flight, and tenacity's blocking retries.

Everything it decides comes from :mod:`.policy` and :class:`~.base.BaseClient`; :mod:`.async_io` is its twin.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx
import numpy as np
import tenacity
from tqdm.auto import tqdm

from infinity_assets.client import policy, wire
from infinity_assets.client.base import BaseClient
from infinity_assets.client.errors import InfinityBadRequestError, InfinityError
from infinity_assets.client.transports.default import sync_transport
from infinity_assets.client.wire import Encoding, Modality

_T = TypeVar("_T")


class SyncIO(BaseClient):
    """Sending, retrying and batching with threads (see the module docstring)."""

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                options = self._http_options()
                self._http = httpx.Client(**options, transport=self._transport or sync_transport(
                    options["limits"], self.transport_kind or "httpcore"))
            return self._http

    def _close_sync(self) -> None:
        """Close the connection pool and the worker threads (both are made again on next use)."""
        with self._lock:
            http, self._http = self._http, None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if http is not None:
            http.close()

    def _retrying_call(self, attempt: Callable[[], _T]) -> _T:
        return tenacity.Retrying(sleep=self._sleep, **self._retry_options())(attempt)

    def _on_replica(self, call: Callable[[str], _T]) -> _T:
        """``call(url)`` on the next replica, failing over to another one (see :class:`~.replicas.Router`)."""
        for attempt in self._router.attempts():
            with attempt:
                if attempt.unverified:
                    self._router.check_served(attempt.replica, self._get_from(attempt.replica.url, "/models"))
                return call(attempt.replica.url)
        raise AssertionError("unreachable: Router.attempts() ends only by raising")

    def _get(self, path: str) -> Any:
        """GET ``path`` from the next replica in rotation, not retried."""
        return self._on_replica(lambda url: self._get_from(url, path))

    def _get_from(self, url: str, path: str) -> Any:
        try:
            response = self._client().get(f"{url}{path}")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        return self._parse_json(self._raise_for_status(response, f"GET {path}", url=url))

    def _post_embeddings(self, inputs: list[str], modality: Modality, encoding: Encoding,
                         parse: Callable[[bytes], _T]) -> _T:
        """POST one request, retried; ``parse`` turns the 200 body into the result inside the retried attempt
        (a body damaged in transit is retried).

        A 200 body is read apart from the response: httpx responses sit in a reference cycle until the garbage
        collector runs, and a multi-megabyte body kept in one would live that long too."""
        body = wire.request_body(self.model_name, inputs, modality, encoding)

        def send(url: str) -> _T:
            try:
                with self._slots, self._client().stream("POST", f"{url}/embeddings", content=body) as response:
                    content = (policy.whole(list(response.iter_bytes())) if response.status_code == 200
                               else response.read())
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, url) from None
            return parse(self._raise_for_status(response, "POST /embeddings", content, url))

        return self._retrying_call(lambda: self._on_replica(send))

    def _ensure_dim(self) -> None:
        if self._needs_probe():
            self._check_dim(self._post_embeddings([policy.PROBE_TEXT], "text", "float", self._parse_json))

    def _embed_sent(self, inputs: list[str], modality: Modality) -> list[Any]:
        """Embed prepared inputs; a rejected request is bisected to find the inputs the server refuses."""
        try:
            return self._post_embeddings(inputs, modality, self.encoding, self._decoder(len(inputs)))
        except InfinityBadRequestError as exc:
            if len(inputs) == 1:
                return [exc]
            left, right = policy.halves(inputs)
            return self._embed_sent(left, modality) + self._embed_sent(right, modality)

    def _embed_chunk(self, items: list[Any], modality: Modality) -> list[Any]:
        prepared = policy.prepare(items, modality)
        sendable = policy.sendable(prepared)
        return self._count(policy.merge(prepared, self._embed_sent(sendable, modality) if sendable else []))

    def _one(self, prepared: str, modality: Modality) -> np.ndarray:
        self._ensure_dim()
        result = self._count(self._embed_sent([prepared], modality))[0]
        if isinstance(result, InfinityError):
            raise result
        return result

    def _iter_chunk_results(self, items: Iterable[Any], modality: Modality, size: int,
                            max_bytes: int | None) -> Iterator[list[Any]]:
        pool, window = self._pool(), policy.Window(self.max_concurrency, max_bytes, self.encoding)
        probe = pool.submit(self._ensure_dim) if self._probe_beside_batches() else None
        if probe is None:
            self._ensure_dim()
        pending: deque[Future[list[Any]]] = deque()
        chunks = policy.batches(items, size)
        try:
            while True:
                window.fill(pending, chunks, lambda chunk: pool.submit(self._embed_chunk, chunk, modality))
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
        with tqdm(total=policy.length(items), disable=not progress, unit=modality) as bar:
            for chunk_results in self._iter_chunk_results(items, modality, size, max_bytes):
                bar.update(len(chunk_results))
                yield from chunk_results

    def _many(self, items: Iterable[Any], modality: Modality, size: int, errors: policy.Errors,
              progress: bool) -> list[Any]:
        return policy.finish(list(self._iter_results(items, modality, size, progress)), errors)
