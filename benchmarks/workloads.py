"""Benchmark inputs (texts and PNG images) and the clients under test, behind one call: ``run_client``."""
from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from infinity_assets.client import wire
from infinity_assets.client.embeddings import InfinityEmbeddings

from .baselines import OfficialClient, SeedAlgorithm
from .loadgen import load_generator

#: The clients, in table order. "limit" is the load generator.
CLIENTS = ("limit", "ours_sync", "ours_async", "official", "seed")
LABELS = {"limit": "load generator (limit)", "ours_sync": "ours, sync", "ours_async": "ours, async",
          "official": "official infinity_client 0.0.78", "seed": "seed algorithm"}


def make_texts(count: int) -> list[str]:
    """``count`` distinct English-like texts of about 40 words."""
    words = ("retrieval augmented generation late interaction multi vector embedding page patch token query "
             "document index maxsim colpali colbert server batch latency bandwidth").split()
    rng = np.random.default_rng(1)
    return [f"document {i}: " + " ".join(rng.choice(words, 40)) for i in range(count)]


def make_images(count: int, side: int = 128, distinct: int = 16) -> list[bytes]:
    """``count`` PNG images (``distinct`` different ones, cycled) of ``side`` x ``side`` pixels, ~10-20 KB each."""
    rng = np.random.default_rng(2)
    made = []
    for i in range(distinct):
        gradient = np.linspace(0, 255, side, dtype=np.float32)
        pixels = np.stack([np.add.outer(gradient, gradient) / 2, np.tile(gradient, (side, 1)),
                           np.full((side, side), 20.0 * i)], axis=-1)
        pixels += rng.normal(0, 12, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
        made.append(buffer.getvalue())
    return [made[i % distinct] for i in range(count)]


def request_bodies(inputs: list[Any], modality: str, model: str, batch_size: int) -> list[bytes]:
    """The exact request bodies of each batch, prepared before timing (the load generator does no work)."""
    prepared = [wire.check_text(i) if modality == "text" else wire.image_data_uri(i) for i in inputs]
    return [wire.request_body(model, prepared[i:i + batch_size], modality, "base64")  # type: ignore[arg-type]
            for i in range(0, len(prepared), batch_size)]


def _check(results: list[Any], count: int, rows: int | None) -> None:
    """Guard against a fast-but-wrong client: every input must come back with the right number of vectors."""
    if len(results) != count:
        raise RuntimeError(f"a client returned {len(results)} embeddings for {count} inputs")
    if rows is not None and len(results[0]) != rows:
        raise RuntimeError(f"a client returned {len(results[0])} vectors per input, the server sends {rows}")


def run_client(name: str, url: str, model: str, modality: str, inputs: list[Any], *, batch_size: int = 10,
               concurrency: int = 8, hidden_dim: int = 128, rows: int | None = None,
               repetitions: int = 1, cpu_seconds: list[float] | None = None) -> list[float]:
    """Seconds taken by client ``name`` for all ``inputs``, once per repetition, after one warm-up.

    The warm-up (one round of ``concurrency`` batches) opens connections and, for ours and the official
    client, makes their one-off hidden_dim probe, so timings are steady-state batch throughput. The CPU
    seconds this process spent in each repetition (every thread) are appended to ``cpu_seconds`` if given.
    """
    warm = inputs[: batch_size * concurrency]
    cpu_seconds = cpu_seconds if cpu_seconds is not None else []
    if name == "limit":
        bodies = request_bodies(inputs, modality, model, batch_size)
        load_generator(url, bodies[:concurrency], concurrency)
        times = []
        for _ in range(repetitions):
            cpu_started = time.process_time()
            times.append(load_generator(url, bodies, concurrency))
            cpu_seconds.append(time.process_time() - cpu_started)
        return times
    if name == "ours_async":
        return asyncio.run(_run_ours_async(url, model, modality, inputs, warm, batch_size, concurrency,
                                           hidden_dim, rows, repetitions, cpu_seconds))
    client: Any
    if name == "ours_sync":
        client = InfinityEmbeddings(url=url, model_name=model, hidden_dim=hidden_dim, embed_batch_size=batch_size,
                                    max_concurrency=concurrency)
    elif name == "official":
        client = OfficialClient(url, model, embed_batch_size=batch_size, concurrency=concurrency)
    elif name == "seed":
        client = SeedAlgorithm(url, model, hidden_dim=hidden_dim, embed_batch_size=batch_size)
    else:
        raise ValueError(f"unknown client {name!r}; choose from {CLIENTS}")
    call: Callable[[list[Any]], list[Any]] = (
        client.embed_documents_batch if modality == "text" else client.embed_images_batch)
    try:
        call(warm)
        times = []
        for _ in range(repetitions):
            started, cpu_started = time.perf_counter(), time.process_time()
            results = call(inputs)
            times.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
            _check(results, len(inputs), rows)
            del results
        return times
    finally:
        client.close()


async def _run_ours_async(url: str, model: str, modality: str, inputs: list[Any], warm: list[Any],
                          batch_size: int, concurrency: int, hidden_dim: int, rows: int | None,
                          repetitions: int, cpu_seconds: list[float]) -> list[float]:
    async with InfinityEmbeddings(url=url, model_name=model, hidden_dim=hidden_dim, embed_batch_size=batch_size,
                                  max_concurrency=concurrency) as client:
        call = client.aembed_documents_batch if modality == "text" else client.aembed_images_batch
        await call(warm)
        times = []
        for _ in range(repetitions):
            started, cpu_started = time.perf_counter(), time.process_time()
            results = await call(inputs)
            times.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
            _check(results, len(inputs), rows)
            del results
        return times


def spread(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median, min and max of repeated measurements, each times ``scale``."""
    return {"median": statistics.median(values) * scale, "min": min(values) * scale, "max": max(values) * scale}


def figure(summary: dict[str, float], digits: int = 2) -> str:
    """A :func:`spread` as "median (min-max)"."""
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"
