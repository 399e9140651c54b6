"""The client's httpx transports: identical answers, read in large pieces, one TLS context per process; which one
a client uses (its ``transport`` setting, ``$INFINITY_HTTP_TRANSPORT``, httpcore by default)."""
from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from infinity_assets import InfinityEmbeddings
from infinity_assets.client.transports import default as transport
from infinity_assets.client.transports.http11 import AsyncHttp11Transport, Http11Transport

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


@pytest.mark.parametrize("kind", transport.KINDS)
def test_sync_transport_returns_the_same_bytes_as_httpx(server_url, kind):
    limits = httpx.Limits(max_connections=2)
    with httpx.Client(transport=transport.sync_transport(limits, kind)) as ours, httpx.Client() as plain:
        assert [ours.get(server_url).content for _ in range(3)] == [plain.get(server_url).content] * 3 == [BODY] * 3


@pytest.mark.parametrize("kind", transport.KINDS)
def test_async_transport_returns_the_same_bytes(server_url, kind):
    async def fetch() -> list[bytes]:
        async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), kind)) as client:
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
    for kind in transport.KINDS:
        with httpx.Client(transport=transport.sync_transport(httpx.Limits(), kind)) as client:
            with pytest.raises(httpx.ConnectError):
                client.get(closed)

    async def fetch(kind: str) -> None:
        async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), kind)) as client:
            await client.get(closed)

    for kind in transport.KINDS:
        with pytest.raises(httpx.ConnectError):
            asyncio.run(fetch(kind))


def test_a_silent_server_is_a_read_timeout():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        for kind in transport.KINDS:
            with httpx.Client(transport=transport.sync_transport(httpx.Limits(), kind), timeout=0.3) as client:
                with pytest.raises(httpx.ReadTimeout):
                    client.get(url)

        async def fetch(kind: str) -> None:
            async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), kind),
                                         timeout=0.3) as client:
                await client.get(url)

        for kind in transport.KINDS:
            with pytest.raises(httpx.ReadTimeout):
                asyncio.run(fetch(kind))


class _RecordingFinder:
    """A meta path finder that records every module searched for (none is found here)."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(self, name, path=None, target=None):
        self.searched.append(name)
        return None


@pytest.mark.parametrize("kind", transport.KINDS)
def test_async_requests_search_for_no_module(server_url, kind):
    """An import of a missing module is a sys.path search each time (httpcore imports sniffio at every lock)."""
    import sys

    finder = _RecordingFinder()

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=transport.async_transport(httpx.Limits(), kind)) as client:
            await client.get(server_url)  # first request: imports that happen once are fine
            sys.meta_path.insert(0, finder)
            try:
                for _ in range(3):
                    await client.get(server_url)
            finally:
                sys.meta_path.remove(finder)

    asyncio.run(fetch())
    assert finder.searched == [], f"modules searched for at every request: {sorted(set(finder.searched))}"


# ---------------------------------------------------------------- which transport a client uses
def _kind_of(client: InfinityEmbeddings) -> type:
    return type(client._client()._transport)


def test_clients_use_httpcore_with_large_reads_by_default(monkeypatch):
    monkeypatch.delenv(transport.KIND_VARIABLE, raising=False)
    with InfinityEmbeddings(url="http://infinity.test:7997") as client:
        assert client.transport_kind == "httpcore" and _kind_of(client) is transport.LargeReadTransport


def test_http11_is_an_opt_in_by_setting_or_environment(monkeypatch):
    with InfinityEmbeddings(url="http://infinity.test:7997", transport="http11") as client:
        assert _kind_of(client) is Http11Transport
    monkeypatch.setenv(transport.KIND_VARIABLE, "http11")
    with InfinityEmbeddings(url="http://infinity.test:7997") as client:
        assert _kind_of(client) is Http11Transport
    with InfinityEmbeddings(url="http://infinity.test:7997", transport="httpcore") as client:  # the setting wins
        assert _kind_of(client) is transport.LargeReadTransport


def test_async_clients_follow_the_same_setting(server_url):
    async def kinds() -> list[type]:
        found = []
        for kind in transport.KINDS:
            async with InfinityEmbeddings(url=server_url, transport=kind) as client:
                found.append(type(client._astate().http._transport))
        return found

    assert asyncio.run(kinds()) == [transport.AsyncLargeReadTransport, AsyncHttp11Transport]


def test_an_unknown_transport_or_http11_over_https_is_refused_naming_the_setting(monkeypatch):
    with pytest.raises(ValueError, match=r"transport must be one of 'httpcore', 'http11', got 'h2'"):
        InfinityEmbeddings(url="http://infinity.test:7997", transport="h2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"transport='http11' speaks plain HTTP only"):
        InfinityEmbeddings(url="https://infinity.test", transport="http11")
    monkeypatch.setenv(transport.KIND_VARIABLE, "fast")
    with pytest.raises(ValueError, match=r"INFINITY_HTTP_TRANSPORT must be one of .* got 'fast'"):
        InfinityEmbeddings(url="http://infinity.test:7997")


def test_a_transport_object_replaces_the_setting(monkeypatch):
    monkeypatch.setenv(transport.KIND_VARIABLE, "not-a-kind")  # not even read
    mock = httpx.MockTransport(lambda request: httpx.Response(200, json={"unix": 1.0}))
    with InfinityEmbeddings(url="http://infinity.test:7997", transport=mock) as client:
        assert client.health() == {"unix": 1.0} and client.transport_kind is None


def test_the_dagster_resource_passes_the_transport_setting_through(monkeypatch):
    from infinity_assets import InfinityResource

    monkeypatch.delenv(transport.KIND_VARIABLE, raising=False)
    with InfinityResource(url="http://infinity.test:7997", http_transport="http11").build_client() as client:
        assert _kind_of(client) is Http11Transport
    with InfinityResource(url="http://infinity.test:7997").build_client() as client:
        assert _kind_of(client) is transport.LargeReadTransport
