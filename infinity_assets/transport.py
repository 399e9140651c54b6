"""httpx transports for :class:`~infinity_assets.client.InfinityEmbeddings`: large socket reads, one TLS context.

httpcore reads a response 64 KiB at a time, and every read costs ~40 µs of Python in httpcore and h11. A
ColPali answer is ~0.7 MB of base64 per page (7 MB for a batch of 10), so reads dominate the client's CPU.
These transports read up to 1 MiB at a time (measured against the bandwidth-bound fake server: 15.1 -> 12.7 ms
of CPU per 7 MB answer, 0.69 x -> 0.78 x the load generator's throughput). httpx has no option for it: the
connection pool's network backend is wrapped (httpcore 1.x); without that attribute the transport is httpx's
own, unchanged. Everything else (timeouts, errors, TLS, keep-alive) is httpx's.
"""
from __future__ import annotations

import functools
import ssl
from typing import Any

import httpcore
import httpx

#: Bytes asked of the socket per read (httpcore asks 64 KiB).
READ_SIZE = 1 << 20


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, ``SSL_CERT_FILE``), built once per process at first use:
    building one loads the CA bundle, ~20 ms of CPU for every client otherwise."""
    return httpx.create_ssl_context()


def sync_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` with ``limits`` that reads responses :data:`READ_SIZE` bytes at a time."""
    transport = httpx.HTTPTransport(limits=limits, verify=tls_context())
    _wrap_backend(transport, _LargeReads)
    return transport


def async_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """The async twin of :func:`sync_transport`."""
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=tls_context())
    _wrap_backend(transport, _AsyncLargeReads)
    return transport


def _wrap_backend(transport: Any, wrapper: type) -> None:
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is not None:
        pool._network_backend = wrapper(backend)


class _LargeReads(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReadStream(self._backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReadStream(self._backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _LargeReadStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max(max_bytes, READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReadStream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncLargeReads(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncLargeReadStream(await self._backend.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncLargeReadStream(await self._backend.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _AsyncLargeReadStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max(max_bytes, READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncLargeReadStream(await self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
