"""Decoding micro-benchmark: our ``wire.decode_response`` against raw ``base64.b64decode`` and the seed's lists.

Bandwidth is measured in MB of base64 text decoded per second, on one ColPali-sized response (10 items of
1,031 x 128 float32); memory per vector with ``tracemalloc`` over the decoded result alone. Ours starts from
the response body (its JSON work included); raw ``b64decode``, the seed's path and our JSON path (the fallback
for unusual bodies) start from the already parsed payload.
"""
from __future__ import annotations

import base64
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from infinity_assets.client import wire

from infinity_assets.testing.fake_infinity import PrecomputedAnswers

HIDDEN_DIM = 128


def response_body(items: int = 10, rows: int = 1031) -> bytes:
    """A base64 ``/embeddings`` response body, exactly as the fake server sends it."""
    raw = PrecomputedAnswers(rows, HIDDEN_DIM, "m").embeddings(items, "base64")
    return raw[raw.index(b"\r\n\r\n") + 4:]


def response_payload(items: int = 10, rows: int = 1031) -> dict[str, Any]:
    """The parsed response (what ``decode_embeddings`` receives from the client)."""
    return json.loads(response_body(items, rows))


def decode_ours(body: bytes) -> list[np.ndarray]:
    """Our decode path, from the response body."""
    return wire.decode_response(body, expected=10, encoding="base64", hidden_dim=HIDDEN_DIM, model="m", url="u")


def decode_json_path(payload: dict[str, Any]) -> list[np.ndarray]:
    """Our fallback for bodies in another layout, from the parsed payload."""
    return wire.decode_embeddings(payload, expected=len(payload["data"]), encoding="base64",
                                  hidden_dim=HIDDEN_DIM, model="m")


def decode_raw(payload: dict[str, Any]) -> list[bytes]:
    """The floor: ``base64.b64decode`` of each string, nothing else."""
    return [base64.b64decode(item["embedding"]) for item in payload["data"]]


def decode_seed(payload: dict[str, Any]) -> list[list[list[float]]]:
    """The seed's path: numpy view, then ``.tolist()`` into nested Python lists."""
    return [np.frombuffer(base64.b64decode(item["embedding"]), dtype=np.float32).reshape(-1, HIDDEN_DIM).tolist()
            for item in payload["data"]]


def _seconds(function: Callable[[Any], Any], payload: Any, repetitions: int) -> float:
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        function(payload)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _bytes_per_vector(function: Callable[[Any], Any], payload: Any, vectors: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = function(payload)
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del result
    return size / vectors


def run(repetitions: int = 15) -> dict[str, Any]:
    """Median bandwidths (MB/s of base64) and bytes per decoded vector for ours, raw b64decode and the seed."""
    payload = response_payload()
    base64_bytes = sum(len(item["embedding"]) for item in payload["data"])
    vectors = len(payload["data"]) * 1031
    body = response_body()
    paths: dict[str, tuple[Callable[[Any], Any], Any]] = {
        "ours": (decode_ours, body), "raw_b64decode": (decode_raw, payload), "seed_tolist": (decode_seed, payload),
        "json_path": (decode_json_path, payload)}
    # Interleaved repetitions so that drift (other processes, CPU frequency) hits every path alike.
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repetitions):
        for name, (function, argument) in paths.items():
            times[name].append(_seconds(function, argument, 1))
    result: dict[str, Any] = {"base64_mb": base64_bytes / 1e6, "vectors": vectors}
    for name in times:
        result[f"{name}_mb_s"] = base64_bytes / 1e6 / statistics.median(times[name])
    for name in ("ours", "seed_tolist"):
        function, argument = paths[name]
        result[f"{name}_bytes_per_vector"] = _bytes_per_vector(function, argument, vectors)
    result["float32_bytes_per_vector"] = 4 * HIDDEN_DIM
    return result
