"""The async I/O of :class:`~infinity_assets.client.embeddings.InfinityEmbeddings`: one ``httpx.AsyncClient``
per event loop, an ``asyncio.Semaphore`` of ``max_concurrency`` requests, tenacity's async retries, and CPU work
(image preparation, decoding of large answers) in worker threads so the loop keeps reading other answers.

Everything it decides comes from :mod:`.policy` and :class:`~.base.BaseClient`; :mod:`.sync_io` is its twin.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
import tenacity
from tqdm.auto import tqdm

from infinity_assets.client import policy, wire
from infinity_assets.client.base import BaseClient
from infinity_assets.client.errors import InfinityBadRequestError, InfinityError
from infinity_assets.client.transports.default import async_transport
from infinity_assets.client.wire import Encoding, Modality

#: Async answers from this size on are decoded in a thread, off the event loop (a ColPali batch is ~7 MB):
#: base64 decoding releases the GIL, so the loop keeps reading the other answers meanwhile.
DECODE_ON_LOOP_BYTES = 1 << 20
_T = TypeVar("_T")


@dataclass
class _AsyncState:
    """What belongs to one event loop: its connection pool, request slots and the probe's lock."""

    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    probe_lock: asyncio.Lock


class AsyncIO(BaseClient):
    """Sending, retrying and batching on an event loop (see the module docstring)."""

    _async: _AsyncState | None = None

    def _astate(self) -> _AsyncState:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async.loop is not loop:
            # httpx.AsyncClient and asyncio primitives belong to one event loop; make new ones per loop.
            options = self._http_options()
            http = httpx.AsyncClient(**options, transport=self._transport or async_transport(
                options["limits"], self.transport_kind or "httpcore"))
            self._async = _AsyncState(loop, http, asyncio.Semaphore(self.max_concurrency), asyncio.Lock())
        return self._async

    async def _aclose_async(self) -> None:
        """Close this loop's connection pool (made again on next use)."""
        state, self._async = self._async, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.http.aclose()

    def _close_async_from_sync(self) -> None:
        """Close the async connection pool from sync code, if its loop is idle (else the loop owns it)."""
        state, self._async = self._async, None
        if state is not None and not state.loop.is_closed() and not state.loop.is_running():
            state.loop.run_until_complete(state.http.aclose())

    async def _aretrying_call(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        return await tenacity.AsyncRetrying(sleep=self._asleep, **self._retry_options())(attempt)

    async def _aon_replica(self, call: Callable[[str], Awaitable[_T]]) -> _T:
        """The async twin of :meth:`~.sync_io.SyncIO._on_replica`."""
        for attempt in self._router.attempts():
            with attempt:
                if attempt.unverified:
                    self._router.check_served(attempt.replica, await self._aget_from(attempt.replica.url, "/models"))
                return await call(attempt.replica.url)
        raise AssertionError("unreachable: Router.attempts() ends only by raising")

    async def _aget(self, path: str) -> Any:
        return await self._aon_replica(lambda url: self._aget_from(url, path))

    async def _aget_from(self, url: str, path: str) -> Any:
        try:
            response = await self._astate().http.get(f"{url}{path}")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        return self._parse_json(self._raise_for_status(response, f"GET {path}", url=url))

    async def _apost_embeddings(self, inputs: list[str], modality: Modality, encoding: Encoding,
                                parse: Callable[[bytes], _T]) -> _T:
        """The async twin of :meth:`~.sync_io.SyncIO._post_embeddings`; large answers are decoded in a thread."""
        body = wire.request_body(self.model_name, inputs, modality, encoding)

        async def send(url: str) -> _T:
            state = self._astate()
            async with state.semaphore:
                try:
                    async with state.http.stream("POST", f"{url}/embeddings", content=body) as response:
                        content = (policy.whole([c async for c in response.aiter_bytes()])
                                   if response.status_code == 200 else await response.aread())
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, url) from None
            checked = self._raise_for_status(response, "POST /embeddings", content, url)
            if len(checked) < DECODE_ON_LOOP_BYTES:
                return parse(checked)
            return await asyncio.get_running_loop().run_in_executor(self._pool(), parse, checked)

        async def attempt() -> _T:  # a coroutine function: tenacity awaits only those
            return await self._aon_replica(send)

        return await self._aretrying_call(attempt)

    async def _aensure_dim(self) -> None:
        if self._needs_probe():
            async with self._astate().probe_lock:
                if self._needs_probe():
                    self._check_dim(await self._apost_embeddings([policy.PROBE_TEXT], "text", "float",
                                                                 self._parse_json))

    async def _aembed_sent(self, inputs: list[str], modality: Modality) -> list[Any]:
        try:
            return await self._apost_embeddings(inputs, modality, self.encoding, self._decoder(len(inputs)))
        except InfinityBadRequestError as exc:
            if len(inputs) == 1:
                return [exc]
            left, right = await asyncio.gather(*(self._aembed_sent(half, modality) for half in policy.halves(inputs)))
            return left + right

    async def _aembed_chunk(self, items: list[Any], modality: Modality) -> list[Any]:
        if modality == "image":  # decoding images is CPU work (Pillow releases the GIL): keep the loop free
            prepared = await asyncio.get_running_loop().run_in_executor(self._pool(), policy.prepare, items,
                                                                        modality)
        else:
            prepared = policy.prepare(items, modality)
        sendable = policy.sendable(prepared)
        return self._count(policy.merge(prepared, await self._aembed_sent(sendable, modality) if sendable else []))

    async def _aone(self, prepared: str, modality: Modality) -> np.ndarray:
        await self._aensure_dim()
        result = self._count(await self._aembed_sent([prepared], modality))[0]
        if isinstance(result, InfinityError):
            raise result
        return result

    async def _aiter_results(self, items: Iterable[Any], modality: Modality, size: int,
                             progress: bool, max_bytes: int | None = None) -> AsyncIterator[Any]:
        window = policy.Window(self.max_concurrency, max_bytes, self.encoding)
        probe = asyncio.ensure_future(self._aensure_dim()) if self._probe_beside_batches() else None
        if probe is None:
            await self._aensure_dim()
        pending: deque[asyncio.Future[Any]] = deque()
        chunks = policy.batches(items, size)
        try:
            with tqdm(total=policy.length(items), disable=not progress, unit=modality) as bar:
                while True:
                    window.fill(pending, chunks, lambda chunk: asyncio.ensure_future(
                        self._aembed_chunk(chunk, modality)))
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

    async def _amany(self, items: Iterable[Any], modality: Modality, size: int, errors: policy.Errors,
                     progress: bool) -> list[Any]:
        return policy.finish([r async for r in self._aiter_results(items, modality, size, progress)], errors)
