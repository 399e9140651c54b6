"""A fault-injecting HTTP proxy for the real Infinity server: fails a share of requests on purpose.

Faults: ``503``, ``429`` (no Retry-After, like Infinity), ``reset`` (connection closed without an answer),
``timeout`` (no answer for longer than the client waits), ``truncated`` (half of the upstream body, then the
connection is closed). Everything else is forwarded unchanged. Seeded, so a failing run can be replayed.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

FAULTS = ("503", "429", "reset", "timeout", "truncated")


class FaultProxy:
    """Forwards to ``upstream``; each request fails with probability ``failure_rate``, cycling through ``faults``.

    ``on_request(n)`` is called before the n-th forwarded request (1-based); tests use it to stop a server at a
    chosen moment. ``injected`` counts the faults injected, ``forwarded`` the requests passed on.
    """

    def __init__(self, upstream: str, *, failure_rate: float = 0.2, faults: tuple[str, ...] = FAULTS,
                 seed: int = 7, hang_seconds: float = 3.0,
                 on_request: Callable[[int], None] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.failure_rate, self.faults, self.hang_seconds = failure_rate, faults, hang_seconds
        self.on_request = on_request
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=120)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def stop_listening(self) -> None:
        """Refuse new connections from now on, like a server that went away (requests in flight are dropped)."""
        self._server.shutdown()
        self._server.server_close()

    def _choose(self) -> str | None:
        with self._lock:
            if self.random.random() < self.failure_rate:
                fault = self.faults[sum(self.injected.values()) % len(self.faults)]  # every kind, in turn
                self.injected[fault] += 1
                return fault
            self.forwarded += 1
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._choose() if self.path == "/embeddings" else None
                if fault in ("503", "429"):
                    self._send(int(fault), b'{"error": {"message": "injected fault"}}')
                    return
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "timeout":
                    time.sleep(proxy.hang_seconds)
                    self.close_connection = True
                    return
                if proxy.on_request is not None and fault is None:
                    proxy.on_request(proxy.forwarded)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                try:
                    upstream = proxy._client.request(self.command, self.path, content=body, headers=headers)
                except httpx.HTTPError:
                    self.close_connection = True
                    self.connection.close()
                    return
                content = upstream.content
                if fault == "truncated":
                    self.send_response(upstream.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content[: len(content) // 2])
                    self.close_connection = True
                    return
                self._send(upstream.status_code, content)

            def _send(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _proxy

        return Handler
