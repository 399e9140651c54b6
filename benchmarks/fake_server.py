"""A fast fake Infinity server over real HTTP for benchmarks, run in its own process.

It speaks Infinity's ``/embeddings`` protocol (``encoding_format`` base64|float, ``modality`` text|image,
images as data URIs, ``usage`` in the answer, 400/422 error shapes) plus ``/health`` and ``/models``, waits a
fixed ``delay`` per request (as if a GPU were working) and answers every input with ``rows x hidden_dim``
vectors. Response bodies are built once per (input count, encoding) and then only written, so the server
does almost no work per request and is not what limits a client on a 2-core machine.

Run it as ``python benchmarks/fake_server.py --rows 32 --delay 0.05`` (it prints ``READY <port>``), or
through :class:`FakeServerProcess` from Python.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The two shapes of issue 7: a latency-bound server (ColBERT-like, few vectors) and a bandwidth-bound one
#: (ColPali-like: 1,031 vectors of 128 floats per image, ~704 KB of base64 per item).
SHAPES = {"latency": {"rows": 32, "delay": 0.05}, "bandwidth": {"rows": 1031, "delay": 0.05}}
MODEL = "fake-colpali"
HIDDEN_DIM = 128


class _Answers:
    """Precomputed HTTP responses, cached by (number of inputs, encoding)."""

    def __init__(self, rows: int, hidden_dim: int, model: str) -> None:
        rng = np.random.default_rng(7)
        # Strictly non-zero values, so no row looks like padding to a client that strips zero rows.
        vectors = (rng.random((rows, hidden_dim), dtype=np.float32) + 0.5).astype("<f4")
        self.model = model
        self.base64_item = base64.b64encode(vectors.tobytes()).decode("ascii")
        self.float_item = json.dumps(vectors.tolist())
        self.cache: dict[tuple[int, str], bytes] = {}

    def embeddings(self, count: int, encoding: str) -> bytes:
        key = (count, encoding)
        answer = self.cache.get(key)
        if answer is None:
            item = json.dumps(self.base64_item) if encoding == "base64" else self.float_item
            data = ",".join(f'{{"object":"embedding","embedding":{item},"index":{i}}}' for i in range(count))
            body = (f'{{"object":"list","data":[{data}],"model":{json.dumps(self.model)},'
                    f'"usage":{{"prompt_tokens":{count},"total_tokens":{count}}},"id":"infinity-fake",'
                    f'"created":{int(time.time())}}}').encode()
            answer = self.cache[key] = _response(200, body)
        return answer


def _response(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
              422: "Unprocessable Entity"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def _error(status: int, message: str) -> bytes:
    if status == 422:
        return _response(422, json.dumps({"detail": [{"loc": ["body"], "msg": message}]}).encode())
    return _response(status, json.dumps({"error": {"message": message, "type": "BadRequest", "code": status}}).encode())


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; answers in order after ``delay`` (no pipelining reorder)."""

    def __init__(self, answers: _Answers, delay: float) -> None:
        self.answers, self.delay = answers, delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            length = None
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            method, path = head[0].split(" ")[:2]
            if method == "POST" and length is None:
                self._send(_error(411, "send a Content-Length"), 0.0)
                del self.buffer[: end + 4]
                continue
            length = length or 0
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4: end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._handle(method, path, body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path == "/health":
            self._send(_response(200, json.dumps({"unix": time.time()}).encode()), 0.0)
        elif method == "GET" and path == "/models":
            self._send(_response(200, json.dumps({"data": [{"id": self.answers.model}], "object": "list"}).encode()),
                       0.0)
        elif method == "POST" and path == "/embeddings":
            self._send(self._embeddings(body), self.delay)
        else:
            self._send(_error(404, f"no route {method} {path}"), 0.0)

    def _embeddings(self, body: bytes) -> bytes:
        try:
            request = json.loads(body)
        except ValueError:
            return _error(422, "body is not JSON")
        inputs = request.get("input")
        if not isinstance(inputs, list) or not inputs:
            return _error(422, "input must be a non-empty list")
        if request.get("model", self.answers.model) != self.answers.model:
            return _error(400, f"model {request.get('model')!r} not loaded; served: {self.answers.model}")
        modality = request.get("modality", "text")
        if modality == "image" and not all(isinstance(i, str) and i.startswith("data:") for i in inputs):
            return _error(422, "images must be data URIs")
        # Like the real server: a body without encoding_format (e.g. "encoding") is answered with floats.
        encoding = request.get("encoding_format", "float")
        if encoding not in ("base64", "float"):
            return _error(422, f"encoding_format {encoding!r} is not base64 or float")
        return self.answers.embeddings(len(inputs), encoding)

    def _send(self, data: bytes, delay: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if delay:
            # A constant delay keeps answers in request order; the loop sleeps, not a thread.
            self.loop.call_later(delay, lambda: transport.is_closing() or transport.write(data))
        else:
            transport.write(data)


async def serve(port: int, rows: int, delay: float, hidden_dim: int = HIDDEN_DIM, model: str = MODEL) -> None:
    """Serve forever on 127.0.0.1:``port``; prints ``READY <port>`` once listening."""
    answers = _Answers(rows, hidden_dim, model)
    for count in range(1, 33):  # warm the cache for every batch size a benchmark uses
        answers.embeddings(count, "base64")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(answers, delay), "127.0.0.1", port, backlog=256)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    async with server:
        await server.serve_forever()


@dataclass
class FakeServerProcess:
    """The fake server in a child process (its own GIL and core); a context manager that stops it by pid."""

    rows: int
    delay: float
    hidden_dim: int = HIDDEN_DIM
    model: str = MODEL
    cpu: int | None = None  # pin the server to this core (the client under test gets the other)
    process: subprocess.Popen[str] | None = None
    port: int = 0

    @classmethod
    def shape(cls, name: str, cpu: int | None = None) -> FakeServerProcess:
        """A server with one of the :data:`SHAPES` (``"latency"`` or ``"bandwidth"``), pinned to ``cpu`` if given."""
        return cls(**SHAPES[name], cpu=cpu)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server process id."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> FakeServerProcess:
        """Start the process and wait for its READY line (no polling sleep: the line is the signal)."""
        command = [sys.executable, str(Path(__file__).resolve()), "--port", "0", "--rows", str(self.rows),
                   "--delay", str(self.delay), "--hidden-dim", str(self.hidden_dim), "--model", self.model]
        env = {**os.environ, "FAKE_SERVER_CPU": str(self.cpu)} if self.cpu is not None else None
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the fake Infinity server did not start (said {line!r}); run {' '.join(command)}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        """Terminate the process (by its pid) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> FakeServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--hidden-dim", type=int, default=HIDDEN_DIM)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    try:
        import uvloop  # the server's own speed is not under test; the faster loop keeps it out of the way

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if hasattr(os, "sched_setaffinity") and os.environ.get("FAKE_SERVER_CPU"):
        os.sched_setaffinity(0, {int(os.environ["FAKE_SERVER_CPU"])})
    try:
        runner(serve(args.port, args.rows, args.delay, args.hidden_dim, args.model))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
