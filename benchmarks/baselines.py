"""The baselines our client is measured against: the seed's algorithm and the official ``infinity_client``.

* :class:`SeedAlgorithm` re-implements what the seed's ``InfinityEmbeddings`` did for a batch call: one request
  per ``embed_batch_size`` inputs, strictly one after the other (its async batch method was sequential too),
  each embedding decoded as ``np.frombuffer(base64.b64decode(s), dtype=np.float32).reshape(-1, hidden_dim)
  .tolist()`` and images sent as base64 JPEG. Two deliberate differences, both in the seed's favour: it sends
  ``encoding_format`` (the seed sent ``encoding``, which the real server ignores and answers with floats), and
  images as ``data:`` URIs (bare base64 gets HTTP 422).
* :func:`official_client` is ``infinity_client.vision_client.InfinityVisionAPI`` (``infinity-client==0.0.78``),
  installed into this venv for the benchmark only, with ``--no-deps`` because it pins an older httpx.
"""
from __future__ import annotations

import base64
import importlib
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from PIL import Image

OFFICIAL_CLIENT = "infinity-client==0.0.78"
#: What ``infinity_client.vision_client`` imports besides numpy and Pillow (requests, and urllib3 through it).
OFFICIAL_CLIENT_IMPORT_DEPS = ("requests",)


class SeedAlgorithm:
    """The seed's batch algorithm: sequential requests, base64 decoded into nested Python lists."""

    def __init__(self, url: str, model: str, *, hidden_dim: int = 128, embed_batch_size: int = 10,
                 timeout: float = 60.0) -> None:
        self.url, self.model, self.hidden_dim = url.rstrip("/"), model, hidden_dim
        self.embed_batch_size = embed_batch_size
        self.http = httpx.Client(timeout=timeout)

    def _embed(self, inputs: list[str], modality: str) -> list[list[list[float]]]:
        response = self.http.post(f"{self.url}/embeddings", json={
            "input": inputs, "model": self.model, "modality": modality, "encoding_format": "base64"})
        response.raise_for_status()
        return [np.frombuffer(base64.b64decode(item["embedding"]), dtype=np.float32)
                .reshape(-1, self.hidden_dim).tolist() for item in response.json()["data"]]

    @staticmethod
    def _image_to_base64(image: bytes) -> str:
        with Image.open(io.BytesIO(image)) as opened:
            buffer = io.BytesIO()
            opened.convert("RGB").save(buffer, format="JPEG")
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("utf-8")

    def embed_documents_batch(self, texts: list[str]) -> list[list[list[float]]]:
        """One request per ``embed_batch_size`` texts, in sequence."""
        results: list[list[list[float]]] = []
        for start in range(0, len(texts), self.embed_batch_size):
            results.extend(self._embed(texts[start:start + self.embed_batch_size], "text"))
        return results

    def embed_images_batch(self, images: list[bytes]) -> list[list[list[float]]]:
        """One request per ``embed_batch_size`` images (converted to JPEG), in sequence."""
        results: list[list[list[float]]] = []
        for start in range(0, len(images), self.embed_batch_size):
            batch = [self._image_to_base64(image) for image in images[start:start + self.embed_batch_size]]
            results.extend(self._embed(batch, "image"))
        return results

    def close(self) -> None:
        """Close the HTTP connection."""
        self.http.close()


def ensure_official_client() -> None:
    """Install ``infinity-client==0.0.78`` into this venv if it is missing (idempotent, ``--no-deps``)."""
    try:
        importlib.import_module("infinity_client.vision_client")
        return
    except ImportError:
        pass
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", OFFICIAL_CLIENT], check=True)
    subprocess.run([*pip, *OFFICIAL_CLIENT_IMPORT_DEPS], check=True)
    importlib.invalidate_caches()
    importlib.import_module("infinity_client.vision_client")


class OfficialClient:
    """``InfinityVisionAPI`` with its thread pool sized to ``concurrency`` (its default is ``min(32, cpus + 4)``)."""

    def __init__(self, url: str, model: str, *, embed_batch_size: int = 10, concurrency: int = 8) -> None:
        ensure_official_client()
        from infinity_client.vision_client import InfinityVisionAPI

        self.api = InfinityVisionAPI(url=url, format="base64", model=model)
        # Same concurrency as the other clients: replace its default-sized pool (nothing else is configurable).
        self.api.tp.shutdown()
        self.api.tp = ThreadPoolExecutor(max_workers=concurrency)
        self.model, self.embed_batch_size = model, embed_batch_size

    def embed_documents_batch(self, texts: list[str]) -> list[Any]:
        """All batches submitted as ``embed`` futures, then gathered in order."""
        step = self.embed_batch_size
        futures = [self.api.embed(self.model, texts[i:i + step]) for i in range(0, len(texts), step)]
        return [vectors for future in futures for vectors in future.result()[0]]

    def embed_images_batch(self, images: list[bytes]) -> list[Any]:
        """All batches submitted as ``image_embed`` futures (PIL images, as it requires), then gathered."""
        step = self.embed_batch_size
        futures = [self.api.image_embed(self.model, [Image.open(io.BytesIO(b)) for b in images[i:i + step]])
                   for i in range(0, len(images), step)]
        return [vectors for future in futures for vectors in future.result()[0]]

    def close(self) -> None:
        """Stop its thread pool and HTTP session."""
        self.api.tp.shutdown()
        self.api.session.close()
