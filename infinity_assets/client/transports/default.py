"""httpx transports of :class:`~infinity_assets.client.embeddings.InfinityEmbeddings`, and the choice between them.

Two kinds, chosen by the client's ``transport`` setting (or ``$INFINITY_HTTP_TRANSPORT``):

- ``"httpcore"``: httpcore's connection pool with a ``network_backend`` whose streams read up to
  :data:`READ_SIZE` bytes per call instead of httpcore's 64 KiB (every read costs Python in httpcore and h11,
  and an Infinity answer is megabytes), with one TLS context per process. Plain HTTP and HTTPS.
- ``"http11"``: :mod:`.http11`, h11 framing with each answer of known length received straight into one
  buffer. Plain ``http://`` only.

Both are built on public interfaces only (httpx's ``BaseTransport`` / ``AsyncBaseTransport``, httpcore's
``ConnectionPool(network_backend=...)``), and both raise httpx's exceptions, as httpx's own transport does.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import httpcore
import httpx

from infinity_assets.client.transports.http11 import AsyncHttp11Transport, Http11Transport

#: Bytes asked of the socket per read (httpcore asks 64 KiB).
READ_SIZE = 1 << 20
TransportKind = Literal["httpcore", "http11"]
#: The transport kinds a client may be given by name.
KINDS: tuple[TransportKind, ...] = ("httpcore", "http11")
#: The kind used when neither the client's ``transport`` nor :data:`KIND_VARIABLE` names one.
DEFAULT_KIND: TransportKind = "httpcore"
#: The environment variable naming the transport kind when the client's ``transport`` is unset.
KIND_VARIABLE = "INFINITY_HTTP_TRANSPORT"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs, ``SSL_CERT_FILE``), built once per process at first use:
    building one loads the CA bundle, ~20 ms of CPU for every client otherwise."""
    return httpx.create_ssl_context()


def sync_transport(limits: httpx.Limits, kind: TransportKind = DEFAULT_KIND) -> httpx.BaseTransport:
    """A transport of ``kind`` (:data:`KINDS`) with ``limits``."""
    return Http11Transport(limits) if kind == "http11" else LargeReadTransport(limits)


def async_transport(limits: httpx.Limits, kind: TransportKind = DEFAULT_KIND) -> httpx.AsyncBaseTransport:
    """The async twin of :func:`sync_transport`; :mod:`.http11`'s needs ``asyncio.timeout`` (Python 3.11+),
    httpcore's is used before that."""
    if kind == "http11" and hasattr(asyncio, "timeout"):
        return AsyncHttp11Transport(limits)
    return AsyncLargeReadTransport(limits, _AsyncLargeReads(httpcore.AnyIOBackend()))


def transport_kind(setting: str | None, urls: Sequence[str]) -> TransportKind:
    """The transport for ``urls``: ``setting``, else ``$INFINITY_HTTP_TRANSPORT``, else :data:`DEFAULT_KIND`.

    Raises ``ValueError`` naming the setting for an unknown kind, or for ``"http11"`` with an ``https://`` URL.
    """
    source = "transport"
    if setting is None:
        setting, source = os.environ.get(KIND_VARIABLE, "").strip() or DEFAULT_KIND, KIND_VARIABLE
    kind = setting.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, KINDS))}, got {setting!r}")
    if kind == "http11" and any(url.lower().startswith("https:") for url in urls):
        raise ValueError(f"{source}='http11' speaks plain HTTP only, but a server URL is https://; "
                         "use transport='httpcore' (the default) for TLS")
    return kind  # type: ignore[return-value]


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
