"""HTTP/1.1 over plain TCP for httpx, receiving each answer of known length straight into one buffer.

The client's opt-in transport (``transport="http11"`` or ``INFINITY_HTTP_TRANSPORT=http11``; the default is
httpcore, :mod:`.default`). An Infinity answer is large (a ColPali page is ~0.7 MB of base64, a batch of ten
7 MB) and comes with a ``Content-Length``. httpcore hands a body over read by read, through h11's receive
buffer, then httpx's, and the client joins the pieces: several copies, each in Python-sized steps. Here h11
writes the request and parses the answer's head; a body of known length is then received with ``recv_into``
into a ``bytearray`` of exactly its size, which the kernel fills directly; bodies of unknown length (chunked,
or ended by the server closing) go through h11 as usual. What that saves per page, receive only and on a whole
partition, is in ``benchmarks/README.md``.

:class:`Http11Transport` (threads) and :class:`AsyncHttp11Transport` (asyncio's socket API, Python 3.11+)
keep connections alive per origin: at most ``max_connections`` in use at once (waiting up to the ``pool``
timeout), up to ``max_keepalive_connections`` idle ones for ``keepalive_expiry`` seconds, and never one the
server has closed meanwhile. The body is read when the response is first iterated; a response closed before
that closes its connection. Failures are httpx's exceptions: ``ConnectError`` / ``ConnectTimeout``,
``WriteError`` / ``WriteTimeout``, ``ReadError`` / ``ReadTimeout``, ``RemoteProtocolError`` (a malformed or
cut-short answer) and ``PoolTimeout``, so callers classify them as they would httpx's own.
"""
from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import httpx

#: The first read of an answer: its head, and the start of its body.
HEAD_READ = 1 << 16

Origin = tuple[str, int]


class _Pooled:
    """What both transports share: idle connections, and the slots of connections in use (``_slots``)."""

    _idle: _IdleConnections
    _slots: Any  # threading.BoundedSemaphore or asyncio.Semaphore; None without max_connections

    def _give_back(self, connection: socket.socket | None, exchange: _Exchange, reusable: bool) -> None:
        if connection is not None:
            if reusable:
                self._idle.put(exchange.origin, connection)
            else:
                connection.close()
        if self._slots is not None:
            self._slots.release()


class Http11Transport(_Pooled, httpx.BaseTransport):
    """A plain-HTTP/1.1 httpx transport with keep-alive connections (see the module docstring)."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._idle = _IdleConnections(limits)
        self._slots = threading.BoundedSemaphore(limits.max_connections) if limits.max_connections else None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(request)
        if self._slots is not None and not self._slots.acquire(timeout=exchange.timeouts.get("pool")):
            raise httpx.PoolTimeout("no connection became free within the pool timeout")
        connection = None
        try:
            connection = self._idle.take(exchange.origin) or _connect(exchange.origin,
                                                                      exchange.timeouts.get("connect"))
            with _errors(httpx.WriteTimeout, httpx.WriteError):
                connection.settimeout(exchange.timeouts.get("write"))
                for part in exchange.request_data(request.read()):
                    connection.sendall(part)
            connection.settimeout(exchange.read_timeout)
            with _errors(httpx.ReadTimeout, httpx.ReadError):
                while not exchange.has_head():
                    exchange.received(connection.recv(HEAD_READ))
        except BaseException:
            self._give_back(connection, exchange, reusable=False)
            raise
        return exchange.response(_Body(self, exchange, connection))

    def close(self) -> None:
        self._idle.close()


class AsyncHttp11Transport(_Pooled, httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`Http11Transport` (``asyncio.timeout``: Python 3.11+)."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._idle = _IdleConnections(limits)
        self._slots = asyncio.Semaphore(limits.max_connections) if limits.max_connections else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(request)
        if self._slots is not None:
            try:
                async with asyncio.timeout(exchange.timeouts.get("pool")):  # type: ignore[attr-defined]
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection became free within the pool timeout") from None
        loop, connection = asyncio.get_running_loop(), None
        try:
            connection = self._idle.take(exchange.origin) or await _aconnect(exchange.origin,
                                                                             exchange.timeouts.get("connect"))
            with _errors(httpx.WriteTimeout, httpx.WriteError):
                async with asyncio.timeout(exchange.timeouts.get("write")):  # type: ignore[attr-defined]
                    for part in exchange.request_data(await request.aread()):
                        await loop.sock_sendall(connection, part)
            with _errors(httpx.ReadTimeout, httpx.ReadError):
                while not exchange.has_head():
                    async with asyncio.timeout(exchange.read_timeout):  # type: ignore[attr-defined]
                        exchange.received(await loop.sock_recv(connection, HEAD_READ))
        except BaseException:
            self._give_back(connection, exchange, reusable=False)
            raise
        return exchange.response(_AsyncBody(self, exchange, connection))

    async def aclose(self) -> None:
        self._idle.close()


class _Exchange:
    """One request and its answer, as h11 frames them (no I/O here)."""

    def __init__(self, request: httpx.Request) -> None:
        url = request.url
        self.origin: Origin = (url.host, url.port or (443 if url.scheme == "https" else 80))
        self.timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        self.read_timeout = self.timeouts.get("read")
        self.method = request.method.encode()
        self.closes = _says_close(request.headers.raw)
        self.h11 = h11.Connection(h11.CLIENT)
        self.request = h11.Request(method=self.method, target=url.raw_path, headers=request.headers.raw)
        self.head: h11.Response | None = None
        self.received_any = False

    def request_data(self, body: bytes) -> list[bytes]:
        """The bytes to send: the head, the body (not copied) and its framing."""
        parts = [self.h11.send(self.request)]
        if body:
            parts += self.h11.send_with_data_passthrough(h11.Data(data=body)) or []
        parts.append(self.h11.send(h11.EndOfMessage()))
        return [part for part in parts if part]

    def received(self, data: bytes) -> None:
        """Hand bytes read from the socket to h11 (``b""``: the server closed it)."""
        if not data and not self.received_any:
            raise httpx.RemoteProtocolError("the server closed the connection without answering")
        self.received_any = True
        self.h11.receive_data(data)

    def has_head(self) -> bool:
        """Whether the answer's head has arrived (interim 1xx answers skipped); False: read more."""
        with _protocol_errors():
            while self.head is None:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    return False
                if isinstance(event, h11.Response):
                    self.head = event
                elif not isinstance(event, h11.InformationalResponse):
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before the answer's head")
        return True

    def response(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
        assert self.head is not None
        return httpx.Response(self.head.status_code, headers=self.head.headers.raw_items(), stream=stream,
                              extensions={"http_version": b"HTTP/" + self.head.http_version,
                                          "reason_phrase": self.head.reason})

    def body_length(self) -> int | None:
        """The body's length when the head gives it (``Content-Length``, or no body), else None (h11 frames it)."""
        assert self.head is not None
        if self.method == b"HEAD" or self.head.status_code in (204, 304):
            return 0
        headers = self.head.headers.raw_items()
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        if len(lengths) != 1 or any(name.lower() == b"transfer-encoding" for name, _ in headers):
            return None
        return int(lengths[0])  # h11 has checked it is a number

    def start(self, body: bytearray) -> int:
        """Copy into ``body`` what h11 read past the head; return how many bytes that was."""
        data, _ = self.h11.trailing_data
        if len(data) > len(body):  # more than the answer: the connection's state is unknown, do not reuse it
            self.closes = True
        taken = data[:len(body)]
        body[:len(taken)] = taken
        return len(taken)

    def reusable_after(self, length: int | None) -> bool:
        """Whether the connection may carry another request once the body is read."""
        assert self.head is not None
        if self.closes:
            return False
        if length is None:
            return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
        return self.head.http_version == b"1.1" and not _says_close(self.head.headers.raw_items())

    def framed_parts(self) -> Iterator[bytes | None]:
        """Body parts as h11 frames them; None: read more. Ends with the message."""
        with _protocol_errors():
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    yield None
                elif isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return
                else:
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in the answer's body")


class _BodyReading:
    """What both body streams share: the exchange, its connection, and giving the connection back once."""

    def __init__(self, transport: _Pooled, exchange: _Exchange, connection: socket.socket) -> None:
        self._transport, self._exchange, self._connection = transport, exchange, connection
        self._reusable, self._released = False, False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._transport._give_back(self._connection, self._exchange, self._reusable)


class _Body(_BodyReading, httpx.SyncByteStream):
    """The answer's body: one ``bytearray`` when its length is known, else h11's parts; read on iteration."""

    def __iter__(self) -> Iterator[bytes]:
        exchange, connection = self._exchange, self._connection
        length = exchange.body_length()
        with _errors(httpx.ReadTimeout, httpx.ReadError):
            if length is None:
                for part in exchange.framed_parts():
                    if part is None:
                        exchange.h11.receive_data(connection.recv(HEAD_READ))
                    else:
                        yield part
            else:
                body = bytearray(length)
                filled, view = exchange.start(body), memoryview(body)
                while filled < length:
                    got = connection.recv_into(view[filled:])
                    if not got:
                        raise _cut_short(filled, length)
                    filled += got
                if body:
                    yield body  # type: ignore[misc]  # bytes-like; the client reads it as it would bytes
        self._reusable = exchange.reusable_after(length)

    def close(self) -> None:
        self._release()


class _AsyncBody(_BodyReading, httpx.AsyncByteStream):
    """The asyncio twin of :class:`_Body`."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange, connection, loop = self._exchange, self._connection, asyncio.get_running_loop()
        length, timeout = exchange.body_length(), exchange.read_timeout
        with _errors(httpx.ReadTimeout, httpx.ReadError):
            if length is None:
                for part in exchange.framed_parts():
                    if part is None:
                        async with asyncio.timeout(timeout):  # type: ignore[attr-defined]
                            exchange.h11.receive_data(await loop.sock_recv(connection, HEAD_READ))
                    else:
                        yield part
            else:
                body = bytearray(length)
                filled, view = exchange.start(body), memoryview(body)
                while filled < length:
                    async with asyncio.timeout(timeout):  # type: ignore[attr-defined]
                        got = await loop.sock_recv_into(connection, view[filled:])
                    if not got:
                        raise _cut_short(filled, length)
                    filled += got
                if body:
                    yield body  # type: ignore[misc]
        self._reusable = exchange.reusable_after(length)

    async def aclose(self) -> None:
        self._release()


class _IdleConnections:
    """Kept-alive sockets per origin: at most ``max_keepalive_connections``, each for ``keepalive_expiry``."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._most = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, list[tuple[socket.socket, float]]] = {}
        self._lock = threading.Lock()

    def take(self, origin: Origin) -> socket.socket | None:
        """The most recently used live connection to ``origin``; expired or server-closed ones are closed."""
        while True:
            with self._lock:
                kept = self._idle.get(origin)
                if not kept:
                    return None
                connection, since = kept.pop()
            if (self._expiry is None or time.monotonic() - since < self._expiry) and not _closed_by_peer(connection):
                return connection
            connection.close()

    def put(self, origin: Origin, connection: socket.socket) -> None:
        with self._lock:
            kept = self._idle.setdefault(origin, [])
            if self._most is None or sum(map(len, self._idle.values())) < self._most:
                kept.append((connection, time.monotonic()))
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for kept in idle.values():
            for connection, _ in kept:
                connection.close()


def _closed_by_peer(connection: socket.socket) -> bool:
    """An idle connection that is readable has been closed by the server (or holds stray bytes): not reusable."""
    poller = select.poll()  # not select(): that refuses descriptors over 1,024
    poller.register(connection, select.POLLIN)
    return bool(poller.poll(0))


def _connect(origin: Origin, timeout: float | None) -> socket.socket:
    with _errors(httpx.ConnectTimeout, httpx.ConnectError):
        connection = socket.create_connection(origin, timeout=timeout)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


async def _aconnect(origin: Origin, timeout: float | None) -> socket.socket:
    loop = asyncio.get_running_loop()
    with _errors(httpx.ConnectTimeout, httpx.ConnectError):
        async with asyncio.timeout(timeout):  # type: ignore[attr-defined]
            family, kind, protocol, _, address = (await loop.getaddrinfo(*origin, type=socket.SOCK_STREAM))[0]
            connection = socket.socket(family, kind, protocol)
            try:
                connection.setblocking(False)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(connection, address)
            except BaseException:
                connection.close()
                raise
    return connection


def _says_close(headers: Any) -> bool:
    return any(name.lower() == b"connection" and b"close" in value.lower() for name, value in headers)


def _cut_short(received: int, length: int) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"the server closed the connection after {received:,} of the answer's "
                                     f"{length:,} bytes")


@contextlib.contextmanager
def _errors(timeout_error: type[httpx.TransportError], os_error: type[httpx.TransportError]) -> Iterator[None]:
    """A timeout and an OS error as the httpx exceptions httpx's own transport raises for them."""
    try:
        yield
    except TimeoutError:
        raise timeout_error("timed out") from None
    except OSError as exc:
        raise os_error(str(exc) or type(exc).__name__) from exc


@contextlib.contextmanager
def _protocol_errors() -> Iterator[None]:
    try:
        yield
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(f"malformed answer from the server: {exc}") from None
