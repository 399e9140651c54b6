"""The client's httpx transports: identical answers, read in large pieces, one TLS context per process."""
from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from infinity_assets.client.transports import default as transport

BODY = bytes(range(256)) * (12 * 1024)  # 3 MiB


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("tls", [True, False], ids=["httpcore", "http11"])
def test_sync_transport_returns_the_same_bytes_as_httpx(server_url, tls):
    limits = httpx.Limits(max_connections=2)
    with httpx.Client(transport=transport.sync_transport(limits, tls=tls)) as ours, httpx.Client() as plain:
        assert [ours.get(server_url).content for _ in range(3)] == [plain.get(server_url).content] * 3 == [BODY] * 3


@pytest.mark.parametrize("tls", [True, False], ids=["httpcore-anyio", "http11-asyncio"])
def test_async_transport_returns_the_same_bytes(server_url, tls):
    async def fetch() -> list[bytes]:
        async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), tls=tls)) as client:
            return [(await client.get(server_url)).content for _ in range(3)]  # kept alive between requests

    assert asyncio.run(fetch()) == [BODY] * 3


def test_reads_are_larger_than_httpcores_64_kib(server_url):
    sizes = []
    with httpx.Client(transport=transport.sync_transport(httpx.Limits())) as client:
        with client.stream("GET", server_url) as response:
            sizes = [len(chunk) for chunk in response.iter_raw()]
    assert sum(sizes) == len(BODY) and max(sizes) > 64 * 1024


def test_one_tls_context_per_process():
    assert transport.tls_context() is transport.tls_context()


def test_errors_are_httpx_errors_of_the_same_name():
    """httpcore's exceptions come out as httpx's (the client classifies those): a closed port, a read timeout."""
    from infinity_assets_dev.ports import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    for tls in (True, False):
        with httpx.Client(transport=transport.sync_transport(httpx.Limits(), tls=tls)) as client:
            with pytest.raises(httpx.ConnectError):
                client.get(closed)

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits())) as client:
            await client.get(closed)

    with pytest.raises(httpx.ConnectError):
        asyncio.run(fetch())
    plain = transport.async_transport(httpx.Limits(), tls=False)

    async def fetch_plain() -> None:
        async with httpx.AsyncClient(transport=plain) as client:
            await client.get(closed)

    with pytest.raises(httpx.ConnectError):
        asyncio.run(fetch_plain())


def test_a_silent_server_is_a_read_timeout():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        for tls in (True, False):
            with httpx.Client(transport=transport.sync_transport(httpx.Limits(), tls=tls), timeout=0.3) as client:
                with pytest.raises(httpx.ReadTimeout):
                    client.get(url)

        async def fetch(tls: bool) -> None:
            async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), tls=tls),
                                         timeout=0.3) as client:
                await client.get(url)

        for tls in (True, False):
            with pytest.raises(httpx.ReadTimeout):
                asyncio.run(fetch(tls))


class _RecordingFinder:
    """A meta path finder that records every module searched for (none is found here)."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(self, name, path=None, target=None):
        self.searched.append(name)
        return None


@pytest.mark.parametrize("tls", [True, False], ids=["httpcore-anyio", "http11-asyncio"])
def test_async_requests_search_for_no_module(server_url, tls):
    """An import of a missing module is a sys.path search each time (httpcore imports sniffio at every lock)."""
    import sys

    finder = _RecordingFinder()

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), tls=tls)) as client:
            await client.get(server_url)  # first request: imports that happen once are fine
            sys.meta_path.insert(0, finder)
            try:
                for _ in range(3):
                    await client.get(server_url)
            finally:
                sys.meta_path.remove(finder)

    asyncio.run(fetch())
    assert finder.searched == [], f"modules searched for at every request: {sorted(set(finder.searched))}"
