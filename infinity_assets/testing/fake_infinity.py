"""The one fake Infinity server: protocol-faithful, for fault injection and benchmarks (never a replacement for
the real one in conformance tests).

It answers ``/embeddings``, ``/health`` and ``/models`` the way infinity-emb 0.0.78 does (limits, error body
shapes, base64/float encodings) and is served two ways, on one shared request check (:func:`request_problem`):

* :class:`FakeInfinity` in-process, through ``fake.transport()`` (``httpx.MockTransport`` for sync and async
  clients): deterministic vectors per input, optional zero padding rows, an API key, delays, and a queue of
  ``faults`` (ready-made below) that answer a request instead: what the tests use.
* :class:`FakeServerProcess` over real HTTP in a child process (``python -m infinity_assets.testing.fake_infinity
  --rows 32 --delay 0.05`` prints ``READY <port>``): every input answered with the same ``rows x hidden_dim``
  block after a fixed ``delay`` (as if a GPU were working), from bodies built once per (input count, encoding)
  (:class:`PrecomputedAnswers`), so the server does almost no work per request and is not what limits a client
  on a 2-core machine: what the benchmarks use.

One module for both, a little over 400 lines: the two servers share the protocol's checks and error shapes, and
users find every fake in one place.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

Fault = Callable[[httpx.Request], httpx.Response | None]


def vectors_for(item: str, modality: str, hidden_dim: int, image_rows: int = 16) -> np.ndarray:
    """The deterministic multi-vector the fake returns for one input (before padding)."""
    digest = hashlib.sha256(f"{modality}:{item}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    rows = len(item.split()) + 2 if modality == "text" else image_rows
    return (rng.standard_normal((rows, hidden_dim)) + 0.01).astype(np.float32)


@dataclass
class FakeInfinity:
    """An in-process Infinity server; ``faults`` is a queue of callables that may answer a request instead.

    ``padding`` is ``"trailing"`` (ColPali) or ``"leading"`` (ColQwen2): every embedding gets 0-3 all-zero rows
    on that side. ``delay`` (seconds, or a callable of the request) slows answers down.
    """

    model: str = "fake-model"
    hidden_dim: int = 128
    padding: str | None = None
    image_rows: int = 16
    api_key: str | None = None
    delay: float | Callable[[dict[str, Any]], float] = 0.0
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- transport entry points
    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request synchronously (for ``httpx.MockTransport`` with a sync client)."""
        response, delay = self._answer(request)
        if delay:
            time.sleep(delay)
        return response

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request asynchronously (for ``httpx.MockTransport`` with an async client)."""
        response, delay = self._answer(request)
        if delay:
            await asyncio.sleep(delay)
        return response

    def transport(self) -> httpx.MockTransport:
        """A transport that serves both sync and async clients from this fake."""
        return _DualMockTransport(self)

    @property
    def embedding_requests(self) -> list[dict[str, Any]]:
        """The ``/embeddings`` bodies received, probes included."""
        return [r for r in self.requests if "input" in r]

    # ---------------------------------------------------------------- protocol
    def _answer(self, request: httpx.Request) -> tuple[httpx.Response, float]:
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            injected = fault(request)
            if injected is not None:
                return injected, 0.0
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"detail": "Invalid API key"}), 0.0
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"unix": time.time()}), 0.0
        if path == "/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": self.model}]}), 0.0
        if path != "/embeddings" or request.method != "POST":
            return httpx.Response(404, json={"detail": "Not Found"}), 0.0
        body = json.loads(request.content)
        with self._lock:
            self.requests.append(body)
        delay = self.delay(body) if callable(self.delay) else self.delay
        return self._embeddings(body), delay

    def _embeddings(self, body: dict[str, Any]) -> httpx.Response:
        problem = request_problem(body, self.model, decode_images=True)
        if problem is not None:
            return httpx.Response(problem[0], json=problem[1])
        modality, encoding = body.get("modality", "text"), body.get("encoding_format", "float")
        data = []
        for index, item in enumerate(body["input"]):
            vectors = self._pad(vectors_for(item, modality, self.hidden_dim, self.image_rows), index)
            if encoding == "base64":
                embedding: Any = base64.b64encode(vectors.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vectors.tolist()
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        return httpx.Response(200, json={"object": "list", "data": data, "model": self.model,
                                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    def _pad(self, vectors: np.ndarray, index: int) -> np.ndarray:
        if self.padding is None:
            return vectors
        zeros = np.zeros(((index % 3) + 1, vectors.shape[1]), dtype=np.float32)
        parts = [vectors, zeros] if self.padding == "trailing" else [zeros, vectors]
        return np.concatenate(parts)


class _DualMockTransport(httpx.MockTransport):
    def __init__(self, fake: FakeInfinity) -> None:
        super().__init__(fake.handle)
        self._fake = fake

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await self._fake.ahandle(request)


# ---------------------------------------------------------------- the protocol's checks (both servers)
#: Images this wide are refused by the fake with HTTP 400, as the real server refuses images it cannot use.
REFUSED_IMAGE_WIDTH = 13
#: Inputs per request the real server accepts, by modality.
INPUT_LIMITS = {"text": 2048, "image": 32}
MAX_TEXT_CHARACTERS = 122_880


def error_body(status: int, message: str) -> dict[str, Any]:
    """Infinity's body of a 4xx answer other than 422."""
    return {"error": {"message": message, "type": "BadRequestError", "code": status}}


def detail_body(location: str, message: str) -> dict[str, Any]:
    """Infinity's (FastAPI's) body of a 422 answer for the field at ``location`` (dotted)."""
    return {"detail": [{"type": "value_error", "loc": ["body", *location.split(".")], "msg": message}]}


def request_problem(body: Any, model: str, *, decode_images: bool) -> tuple[int, dict[str, Any]] | None:
    """Why Infinity would refuse this ``/embeddings`` body: ``(status, JSON body)``; None if it is answered.

    ``decode_images`` also opens every image (too small, unreadable, :data:`REFUSED_IMAGE_WIDTH` wide);
    without it only the data-URI form is checked (the benchmark server's per-request cost stays flat).
    """
    if not isinstance(body, dict):
        return 422, detail_body("body", "Input should be a valid dictionary")
    inputs, modality = body.get("input"), body.get("modality", "text")
    if body.get("model", model) != model:  # a lone served model answers a body without one, as the real server
        return 400, error_body(400, f"Invalid model: {body.get('model')!r}; serving {model!r}")
    if modality not in INPUT_LIMITS:
        return 422, detail_body("modality", "Input should be 'text', 'image' or 'audio'")
    if body.get("encoding_format", "float") not in ("base64", "float"):
        return 422, detail_body("encoding_format", "Input should be 'float' or 'base64'")
    limit = INPUT_LIMITS[modality]
    if not isinstance(inputs, list) or not inputs or len(inputs) > limit:
        return 422, detail_body("input", f"List should have at least 1 item and at most {limit} items")
    for index, item in enumerate(inputs):
        if not isinstance(item, str):
            return 422, detail_body(f"input.{index}", "Input should be a valid string")
        if modality == "text" and len(item) > MAX_TEXT_CHARACTERS:
            return 422, detail_body(f"input.{index}", f"String should have at most {MAX_TEXT_CHARACTERS} characters")
        if modality == "image":
            if not item.startswith("data:"):
                return 422, detail_body("input", "Input should be a valid URL / data URI")
            problem = _image_problem(item) if decode_images else None
            if problem is not None:
                return 400, error_body(400, problem)
    return None


def _image_problem(item: str) -> str | None:
    try:
        raw = base64.b64decode(item.split(",", 1)[1])
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            if min(image.size) < 3:
                return f"image too small: {image.size}"
            if image.size[0] == REFUSED_IMAGE_WIDTH:
                return f"error decoding data URI: unsupported image {image.size}"
    except Exception as exc:
        return f"failed to open image: {exc}"
    return None


# ---------------------------------------------------------------- ready-made faults
def status(code: int, *, headers: dict[str, str] | None = None, body: Any = None) -> Fault:
    """A fault answering one request with an HTTP status."""
    return lambda request: httpx.Response(code, headers=headers, json=body or {"error": {"message": f"injected {code}"}})


def connection_reset() -> Fault:
    """A fault dropping one connection."""
    def fault(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
    return fault


def read_timeout() -> Fault:
    """A fault timing out one request."""
    def fault(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("injected read timeout", request=request)
    return fault


def raw_body(content: bytes, code: int = 200) -> Fault:
    """A fault answering one request with arbitrary bytes."""
    return lambda request: httpx.Response(code, content=content, headers={"content-type": "application/json"})


def passthrough() -> Fault:
    """A fault that lets one request through unchanged (to target the n-th request)."""
    return lambda request: None


# ---------------------------------------------------------------- over real HTTP, in a child process
#: The benchmarks' two server shapes: latency-bound (ColBERT-like, few vectors per input) and bandwidth-bound
#: (ColPali-like: 1,031 vectors of 128 floats per image, ~704 KB of base64 per item).
SHAPES = {"latency": {"rows": 32, "delay": 0.05}, "bandwidth": {"rows": 1031, "delay": 0.05}}
MODEL = "fake-colpali"
HIDDEN_DIM = 128
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required", 422: "Unprocessable Entity"}


def _http(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class PrecomputedAnswers:
    """Whole HTTP answers to ``/embeddings``, built once per (number of inputs, encoding) and then only written."""

    def __init__(self, rows: int, hidden_dim: int, model: str) -> None:
        rng = np.random.default_rng(7)
        # Strictly non-zero values, so no row looks like padding to a client that strips zero rows.
        vectors = (rng.random((rows, hidden_dim), dtype=np.float32) + 0.5).astype("<f4")
        self.model = model
        self.base64_item = base64.b64encode(vectors.tobytes()).decode("ascii")
        self.float_item = json.dumps(vectors.tolist())
        self.cache: dict[tuple[int, str], bytes] = {}

    def embeddings(self, count: int, encoding: str) -> bytes:
        """The HTTP response (status line, headers, body) answering ``count`` inputs in ``encoding``."""
        key = (count, encoding)
        answer = self.cache.get(key)
        if answer is None:
            item = json.dumps(self.base64_item) if encoding == "base64" else self.float_item
            data = ",".join(f'{{"object":"embedding","embedding":{item},"index":{i}}}' for i in range(count))
            body = (f'{{"object":"list","data":[{data}],"model":{json.dumps(self.model)},'
                    f'"usage":{{"prompt_tokens":{count},"total_tokens":{count}}},"id":"infinity-fake",'
                    f'"created":{int(time.time())}}}').encode()
            answer = self.cache[key] = _http(200, body)
        return answer


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; answers in order after ``delay`` (no pipelining reorder)."""

    def __init__(self, answers: PrecomputedAnswers, delay: float) -> None:
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
                self._send(_http(411, json.dumps(error_body(411, "send a Content-Length")).encode()), 0.0)
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
            self._send(_http(200, json.dumps({"unix": time.time()}).encode()), 0.0)
        elif method == "GET" and path == "/models":
            self._send(_http(200, json.dumps({"data": [{"id": self.answers.model}], "object": "list"}).encode()),
                       0.0)
        elif method == "POST" and path == "/embeddings":
            self._send(self._embeddings(body), self.delay)
        else:
            self._send(_http(404, json.dumps({"detail": "Not Found"}).encode()), 0.0)

    def _embeddings(self, body: bytes) -> bytes:
        try:
            request = json.loads(body)
        except ValueError:
            return _http(422, json.dumps(detail_body("body", "JSON decode error")).encode())
        problem = request_problem(request, self.answers.model, decode_images=False)
        if problem is not None:
            return _http(problem[0], json.dumps(problem[1]).encode())
        # Like the real server: a body without encoding_format (e.g. "encoding") is answered with floats.
        return self.answers.embeddings(len(request["input"]), request.get("encoding_format", "float"))

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
    answers = PrecomputedAnswers(rows, hidden_dim, model)
    for count in range(1, 33):  # warm the cache for every batch size a benchmark uses
        answers.embeddings(count, "base64")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(answers, delay), "127.0.0.1", port, backlog=256)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


@dataclass
class FakeServerProcess:
    """The HTTP fake in a child process (its own GIL and core); a context manager that stops it by pid.

    Example::

        with FakeServerProcess.shape("latency") as server:
            InfinityEmbeddings(url=server.url, model_name=MODEL).embed_text("hi")
    """

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
        command = [sys.executable, "-m", __name__, "--port", "0", "--rows", str(self.rows),
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
    """Command line entry point of the HTTP fake."""
    parser = argparse.ArgumentParser(description="a fast fake Infinity server over HTTP on 127.0.0.1")
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
