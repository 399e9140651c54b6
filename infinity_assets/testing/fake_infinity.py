"""A protocol-faithful fake Infinity server for fault injection (not a replacement for the real one).

It answers ``/embeddings``, ``/health`` and ``/models`` the way infinity-emb 0.0.78 does (limits, error body
shapes, base64/float encodings, zero padding rows) and can be told to misbehave. Use it in-process through
``httpx.MockTransport(fake.handle)`` / ``fake.ahandle`` (sync and async clients).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
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
        inputs, modality = body.get("input"), body.get("modality", "text")
        encoding = body.get("encoding_format", "float")
        if body.get("model") != self.model:
            return _error(400, f"Invalid model: {body.get('model')!r}; serving {self.model!r}")
        limit = 2048 if modality == "text" else 32
        if not isinstance(inputs, list) or len(inputs) > limit:
            return _detail("input", f"List should have at most {limit} items")
        data = []
        for index, item in enumerate(inputs):
            if modality == "text" and len(item) > 122_880:
                return _detail(f"input.{index}", "String should have at most 122880 characters")
            if modality == "image":
                problem = _image_problem(item)
                if problem is not None:
                    return problem
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


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "BadRequestError", "code": status}})


def _detail(location: str, message: str) -> httpx.Response:
    return httpx.Response(422, json={"detail": [{"type": "value_error", "loc": ["body", *location.split(".")],
                                                 "msg": message}]})


#: Images this wide are refused by the fake with HTTP 400, as the real server refuses images it cannot use.
REFUSED_IMAGE_WIDTH = 13


def _image_problem(item: str) -> httpx.Response | None:
    if not item.startswith("data:"):
        return _detail("input", "Input should be a valid URL / data URI")
    try:
        raw = base64.b64decode(item.split(",", 1)[1])
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            if min(image.size) < 3:
                return _error(400, f"image too small: {image.size}")
            if image.size[0] == REFUSED_IMAGE_WIDTH:
                return _error(400, f"error decoding data URI: unsupported image {image.size}")
    except Exception as exc:
        return _error(400, f"failed to open image: {exc}")
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
