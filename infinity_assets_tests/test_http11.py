"""The plain-HTTP/1.1 transport against a scripted server: keep-alive, framing, cut-short and malformed answers,
connections the server closed, the pool limit. Every case runs on the thread transport and the asyncio one."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from infinity_assets.client.transports.http11 import AsyncHttp11Transport, Http11Transport

BODY = bytes(range(256)) * 4096  # 1 MiB


def _answer(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


#: What the server sends for each path; None: close the connection without answering.
SCRIPT: dict[str, Callable[[], bytes | None]] = {
    "/plain": lambda: _answer(f"HTTP/1.1 200 OK\ncontent-length: {len(BODY)}", BODY),
    "/chunked": lambda: _answer("HTTP/1.1 200 OK\ntransfer-encoding: chunked",
                                b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                                         for part in (BODY[:1000], BODY[1000:70000], BODY[70000:]))
                                + b"0\r\n\r\n"),
    "/close": lambda: _answer("HTTP/1.1 200 OK\ncontent-length: 2\nconnection: close", b"ok"),
    "/until-close": lambda: _answer("HTTP/1.0 200 OK", BODY),
    "/short": lambda: _answer("HTTP/1.1 200 OK\ncontent-length: 1000", b"x" * 10),
    "/garbage": lambda: b"HELLO THERE\r\n\r\n",
    "/silent-close": lambda: None,
    "/interim": lambda: b"HTTP/1.1 100 Continue\r\n\r\n" + _answer("HTTP/1.1 200 OK\ncontent-length: 2", b"ok"),
    "/empty": lambda: _answer("HTTP/1.1 204 No Content"),
}
#: Paths after whose answer the server closes the connection ("/close" leaves it open: the client must not
#: count on the server closing it to honour the header).
CLOSES = {"/until-close", "/short", "/garbage", "/silent-close"}


class ScriptedServer:
    """A TCP server answering each request by its path (:data:`SCRIPT`); counts the connections it accepted."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.open.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        try:
            while (line := reader.readline()):
                path = line.split()[1].decode()
                length = 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                reader.read(length)
                answer = SCRIPT[path]()
                if answer is not None:
                    connection.sendall(answer)
                if path in CLOSES:
                    break
        except OSError:
            pass
        finally:
            connection.close()

    def close_idle(self) -> None:
        """Close every connection from the server's side, as a server's keep-alive timeout does."""
        for connection in self.open:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(0.1)

    def stop(self) -> None:
        self.listener.close()
        self.close_idle()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.stop()


class SyncRunner:
    """Requests through :class:`Http11Transport`."""

    def __init__(self, limits: httpx.Limits = httpx.Limits(), timeout: float = 5.0) -> None:
        self.client = httpx.Client(transport=Http11Transport(limits), timeout=timeout)

    def get(self, url: str) -> httpx.Response:
        return self.client.get(url)

    def post(self, url: str, body: bytes) -> httpx.Response:
        return self.client.post(url, content=body)

    def close(self) -> None:
        self.client.close()


class AsyncRunner:
    """The same calls through :class:`AsyncHttp11Transport`, on one event loop kept across calls."""

    def __init__(self, limits: httpx.Limits = httpx.Limits(), timeout: float = 5.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(self._make(limits, timeout))

    @staticmethod
    async def _make(limits: httpx.Limits, timeout: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=AsyncHttp11Transport(limits), timeout=timeout)

    def get(self, url: str) -> httpx.Response:
        return self.loop.run_until_complete(self.client.get(url))

    def post(self, url: str, body: bytes) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(url, content=body))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture(params=[SyncRunner, AsyncRunner], ids=["threads", "asyncio"])
def runner(request):
    made = []

    def make(**options):
        made.append(request.param(**options))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_connection_is_kept_alive_across_requests(server, runner):
    client = runner()
    assert [client.get(server.url + "/plain").content for _ in range(3)] == [BODY] * 3
    assert client.post(server.url + "/plain", b"x" * 300_000).content == BODY  # a request body, sent whole
    assert server.accepted == 1


def test_chunked_and_close_delimited_answers_are_read_whole(server, runner):
    client = runner()
    assert client.get(server.url + "/chunked").content == BODY
    assert client.get(server.url + "/chunked").content == BODY
    assert server.accepted == 1  # a chunked answer leaves the connection reusable
    assert client.get(server.url + "/until-close").content == BODY
    assert client.get(server.url + "/plain").content == BODY
    assert server.accepted == 2


def test_interim_and_bodiless_answers(server, runner):
    client = runner()
    answer = client.get(server.url + "/interim")
    assert (answer.status_code, answer.content) == (200, b"ok")
    empty = client.get(server.url + "/empty")
    assert (empty.status_code, empty.content) == (204, b"")
    assert client.get(server.url + "/plain").content == BODY
    assert server.accepted == 1


def test_connection_close_is_honoured(server, runner):
    client = runner()
    assert client.get(server.url + "/close").content == b"ok"
    assert client.get(server.url + "/close").content == b"ok"
    assert server.accepted == 2


def test_a_cut_short_answer_is_a_protocol_error_and_the_next_request_works(server, runner):
    client = runner()
    with pytest.raises(httpx.RemoteProtocolError, match="after 10 of the answer's 1,000 bytes"):
        client.get(server.url + "/short")
    assert client.get(server.url + "/plain").content == BODY


@pytest.mark.parametrize("path,message", [("/garbage", "malformed answer"),
                                          ("/silent-close", "closed the connection without answering")])
def test_a_malformed_or_missing_answer_is_a_protocol_error(server, runner, path, message):
    client = runner()
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        client.get(server.url + path)
    assert client.get(server.url + "/plain").content == BODY


def test_a_connection_the_server_closed_while_idle_is_not_reused(server, runner):
    client = runner()
    assert client.get(server.url + "/plain").content == BODY
    server.close_idle()  # the server's keep-alive timeout
    assert client.get(server.url + "/plain").content == BODY
    assert server.accepted == 2


def test_keepalive_expiry_drops_idle_connections(server, runner):
    client = runner(limits=httpx.Limits(keepalive_expiry=0.05))
    client.get(server.url + "/plain")
    time.sleep(0.1)
    client.get(server.url + "/plain")
    assert server.accepted == 2


def test_the_pool_limit_waits_then_times_out():
    """max_connections in use at once: a request beyond them waits for the pool timeout, then PoolTimeout."""
    scripted = ScriptedServer()
    try:
        with httpx.Client(transport=Http11Transport(httpx.Limits(max_connections=1)),
                          timeout=httpx.Timeout(5.0, pool=0.2)) as client:
            with client.stream("GET", scripted.url + "/plain") as held:
                with pytest.raises(httpx.PoolTimeout):
                    client.get(scripted.url + "/plain")
                assert held.read() == BODY
            assert client.get(scripted.url + "/plain").content == BODY  # the slot came back

            with client.stream("GET", scripted.url + "/plain"):
                pass  # closed unread: the connection is closed, the slot freed
            assert client.get(scripted.url + "/plain").content == BODY
        assert scripted.accepted == 2
    finally:
        scripted.stop()


def test_the_async_pool_limit_waits_then_times_out():
    scripted = ScriptedServer()

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=AsyncHttp11Transport(httpx.Limits(max_connections=1)),
                                     timeout=httpx.Timeout(5.0, pool=0.2)) as client:
            async with client.stream("GET", scripted.url + "/plain") as held:
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(scripted.url + "/plain")
                assert await held.aread() == BODY
            assert (await client.get(scripted.url + "/plain")).content == BODY

    try:
        asyncio.run(scenario())
        assert scripted.accepted == 1
    finally:
        scripted.stop()


def test_a_cancelled_request_frees_its_slot():
    """asyncio cancellation (a timeout around the call) in the middle of an answer: the slot comes back."""
    scripted = ScriptedServer()
    SCRIPT["/slow"] = lambda: time.sleep(1) or _answer("HTTP/1.1 200 OK\ncontent-length: 2", b"ok")

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=AsyncHttp11Transport(httpx.Limits(max_connections=1)),
                                     timeout=httpx.Timeout(5.0, pool=0.5)) as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.get(scripted.url + "/slow")
            assert (await client.get(scripted.url + "/plain")).content == BODY

    try:
        asyncio.run(scenario())
    finally:
        del SCRIPT["/slow"]
        scripted.stop()
