"""httpx transports for :class:`~infinity_assets.client.InfinityEmbeddings`: large socket reads, one TLS context.

httpcore reads a response 64 KiB at a time, and every read costs ~40 µs of Python in httpcore and h11. A
ColPali answer is ~0.7 MB of base64 per page (7 MB for a batch of 10), so reads dominate the client's CPU.
These transports read up to 1 MiB at a time. Measured on pinned cores against the bandwidth-bound fake server
(benchmarks/cpu_cost.py), the client's CPU per page: 2.3 -> 1.4 ms sync, 3.8 -> 2.6 ms async.

Built only on public interfaces: httpx's ``BaseTransport`` / ``AsyncBaseTransport`` over httpcore's
``ConnectionPool`` / ``AsyncConnectionPool`` with a ``network_backend`` whose streams read more per call.
Everything else (timeouts, keep-alive, TLS, errors) is httpcore's and httpx's: httpcore's exceptions are
raised as httpx's exceptions of the same name, as httpx's own transport does.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
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


def sync_transport(limits: httpx.Limits) -> httpx.BaseTransport:
    """An HTTP/1.1 transport with ``limits`` that reads responses :data:`READ_SIZE` bytes at a time."""
    return LargeReadTransport(limits)


def async_transport(limits: httpx.Limits, *, tls: bool = True) -> httpx.AsyncBaseTransport:
    """The async twin of :func:`sync_transport`. Without ``tls`` (every URL plain ``http://``), on asyncio with
    ``asyncio.timeout`` (Python 3.11+), connections are asyncio's own sockets rather than anyio streams."""
    plain_sockets = not tls and hasattr(asyncio, "timeout")
    return AsyncLargeReadTransport(limits, _AsyncSockets() if plain_sockets else _AsyncLargeReads(httpcore.AnyIOBackend()))


def _pool_options(limits: httpx.Limits) -> dict[str, Any]:
    return dict(ssl_context=tls_context(), max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry)


def _core_request(request: httpx.Request) -> httpcore.Request:
    url = request.url
    return httpcore.Request(method=request.method, headers=request.headers.raw, content=request.stream,
                            extensions=request.extensions,
                            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                                             target=url.raw_path))


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise httpcore's exceptions as httpx's of the same name (``ReadTimeout``, ``ConnectError``, ...)."""
    try:
        yield
    except Exception as exc:
        mapped = getattr(httpx, type(exc).__name__, None) if type(exc).__module__.startswith("httpcore") else None
        if isinstance(mapped, type) and issubclass(mapped, httpx.TransportError):
            raise mapped(str(exc)) from exc
        raise


class LargeReadTransport(httpx.BaseTransport):
    """httpx transport over httpcore's connection pool, reading :data:`READ_SIZE` bytes per socket read."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._pool = httpcore.ConnectionPool(**_pool_options(limits),
                                             network_backend=_LargeReads(httpcore.SyncBackend()))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _httpx_errors():
            response = self._pool.handle_request(_core_request(request))
        return httpx.Response(response.status, headers=response.headers, extensions=response.extensions,
                              stream=_Body(response.stream))

    def close(self) -> None:
        self._pool.close()


class AsyncLargeReadTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`LargeReadTransport`, over ``backend`` (:func:`async_transport` chooses it)."""

    def __init__(self, limits: httpx.Limits, backend: httpcore.AsyncNetworkBackend) -> None:
        self._pool = httpcore.AsyncConnectionPool(**_pool_options(limits), network_backend=backend)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _httpx_errors():
            response = await self._pool.handle_async_request(_core_request(request))
        return httpx.Response(response.status, headers=response.headers, extensions=response.extensions,
                              stream=_AsyncBody(response.stream))

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        self._stream.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        await self._stream.aclose()


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


class _AsyncSockets(httpcore.AsyncNetworkBackend):
    """Plain TCP on asyncio's socket API (``sock_recv``): one read takes up to :data:`READ_SIZE` bytes straight
    from the socket. anyio's streams hand over at most 256 KiB per read (asyncio's protocol buffer), through
    more layers: measured on pinned cores, 2.7 -> 1.8 ms of CPU per ColPali page (benchmarks/cpu_cost.py)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        with _core_errors(httpcore.ConnectTimeout, httpcore.ConnectError):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, protocol, _, address = infos[0]
            connection = socket.socket(family, kind, protocol)
            try:
                connection.setblocking(False)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    connection.setsockopt(*option)
                if local_address:
                    connection.bind((local_address, 0))
                async with asyncio.timeout(timeout):  # type: ignore[attr-defined]  # 3.11+, see async_transport
                    await loop.sock_connect(connection, address)
            except BaseException:
                connection.close()
                raise
        return _AsyncSocketStream(connection)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets go through httpx's own transport")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _AsyncSocketStream(httpcore.AsyncNetworkStream):
    def __init__(self, connection: socket.socket) -> None:
        self._socket = connection
        self._loop = asyncio.get_running_loop()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _core_errors(httpcore.ReadTimeout, httpcore.ReadError):
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined]
                return await self._loop.sock_recv(self._socket, max(max_bytes, READ_SIZE))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _core_errors(httpcore.WriteTimeout, httpcore.WriteError):
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined]
                await self._loop.sock_sendall(self._socket, buffer)

    async def aclose(self) -> None:
        self._socket.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("TLS goes through the anyio backend (async_transport with tls=True)")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._socket
        if info == "is_readable":  # an idle keep-alive connection that is readable was closed by the server
            return bool(select.select([self._socket], [], [], 0)[0])
        return None


@contextlib.contextmanager
def _core_errors(timeout_error: type[Exception], os_error: type[Exception]) -> Iterator[None]:
    """Raise a timeout and an OS error as the httpcore exceptions its own backends raise."""
    try:
        yield
    except TimeoutError:
        raise timeout_error("timed out") from None
    except OSError as exc:
        raise os_error(str(exc) or type(exc).__name__) from exc
