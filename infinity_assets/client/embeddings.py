"""`InfinityEmbeddings`: a sync + async client for multi-vector embeddings from an Infinity server.

It speaks Infinity's real ``/embeddings`` protocol (see :mod:`infinity_assets.client.wire`), splits large inputs
into requests within the server's limits, keeps up to ``max_concurrency`` requests in flight, retries transient
failures with backoff, fails over between replicas, and returns float32 numpy arrays of shape
``(n_vectors, hidden_dim)``.

This module is the public face only, the way httpx's ``Client`` and ``AsyncClient`` sit on a shared base: the
decisions are in :mod:`.policy` (retries, errors, batching), the settings and state in :mod:`.base`, failover in
:mod:`.replicas`, and the two I/O paths in :mod:`.sync_io` and :mod:`.async_io`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from infinity_assets.client import wire
from infinity_assets.client.async_io import AsyncIO
from infinity_assets.client.base import DEFAULT_MODEL, DEFAULT_URL, ClientStats
from infinity_assets.client.errors import InfinityError
from infinity_assets.client.policy import Errors
from infinity_assets.client.sync_io import SyncIO
from infinity_assets.client.wire import ImageInput, Modality

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "ClientStats", "Errors", "InfinityEmbeddings"]


class InfinityEmbeddings(SyncIO, AsyncIO):
    """Multi-vector embeddings (ColPali, ColQwen2, ColBERT) from a self-hosted Infinity server.

    A single input returns one read-only float32 ``np.ndarray`` of shape ``(n_vectors, hidden_dim)``; a list
    returns a list in input order. Batch methods split by ``embed_batch_size`` and keep up to
    ``max_concurrency`` requests in flight, in the sync methods too (one shared connection pool).

    Example::

        with InfinityEmbeddings(url="http://localhost:7997", model_name="vidore/colpali-v1.3") as emb:
            query = emb.embed_query("What is RAG?")            # (n_tokens, 128)
            pages = emb.embed_images_batch(["p1.png", "p2.png"], show_progress=True)

    ``url`` defaults to ``$INFINITY_API_URL``, else ``http://localhost:7997``; several comma-separated URLs (or
    a list) make a fleet: requests go to the replica with the fewest in flight, a replica failing with
    connection errors, timeouts or 5xx is out of rotation for a cool-down (:mod:`infinity_assets.client.replicas`)
    and the request is sent again at once to another one; each replica must serve ``model_name`` (checked with
    ``GET /models`` on first use). ``hidden_dim=None`` detects the size once from a float-encoded request; with
    base64 and a set ``hidden_dim`` that request is made once too (``verify_hidden_dim``), because a 384-d
    payload also splits evenly into 128-d rows. ``api_key`` is sent as ``Authorization: Bearer`` and never
    shown.

    ``transport`` picks the HTTP transport: ``"httpcore"`` (the default: httpcore with large reads, HTTP and
    HTTPS) or ``"http11"`` (plain-HTTP receiver straight into one buffer per answer), default
    ``$INFINITY_HTTP_TRANSPORT``; or an httpx transport object replaces the network (tests, proxies), see
    :mod:`infinity_assets.client.transports.default`. ``tune_allocator=True`` tunes glibc's allocator for the
    whole process (:mod:`infinity_assets.client.allocator`); default ``$INFINITY_ASSETS_MALLOC_TUNING``, else off.
    """

    # ---------------------------------------------------------------- sync API
    def embed_text(self, text: str) -> np.ndarray:
        """Embed one text (a document or a query) into ``(n_tokens, hidden_dim)`` vectors."""
        return self._one(wire.check_text(text), "text")

    def embed_query(self, query: str) -> np.ndarray:
        """Embed a search query; the same as :meth:`embed_text`."""
        return self.embed_text(query)

    def embed_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Embed texts in as few requests as the server allows (normally one); raises on any failure."""
        return self._many(texts, "text", wire.MAX_TEXTS_PER_REQUEST, "raise", False)

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """Embed one image (path, bytes, BytesIO or PIL image) into ``(n_patches, hidden_dim)`` vectors."""
        return self._one(wire.image_data_uri(image), "image")

    def embed_images(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Embed images in as few requests as the server allows (32 per request); raises on any failure."""
        return self._many(images, "image", wire.MAX_IMAGES_PER_REQUEST, "raise", False)

    def embed_documents_batch(
        self, texts: Iterable[str], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Embed many texts, ``embed_batch_size`` per request, ``max_concurrency`` requests in flight.

        ``errors="raise"`` raises :class:`BatchEmbeddingError` listing every failed index after trying all
        inputs; ``errors="collect"`` puts the :class:`InfinityError` of a failed input at its position.
        """
        return self._many(texts, "text", self._batch_size("text"), errors, show_progress)

    def embed_images_batch(
        self, images: Iterable[ImageInput], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Embed many images, ``embed_batch_size`` per request (at most 32); see :meth:`embed_documents_batch`."""
        return self._many(images, "image", self._batch_size("image"), errors, show_progress)

    def iter_embeddings(
        self, items: Iterable[Any], *, modality: Modality = "text", show_progress: bool = False,
        max_buffered_bytes: int | None = None,
    ) -> Iterator[np.ndarray | InfinityError]:
        """Yield one result per input, in input order, while later batches are still in flight.

        At most ``2 * max_concurrency`` batches are held (in flight or waiting to be consumed), so this suits
        inputs that do not fit in memory at once. ``max_buffered_bytes`` bounds them by size too: no new batch
        is sent while the held ones would exceed it, each counted at the largest footprint seen so far (its
        response body and decoded vectors); fewer requests are then in flight, never fewer than one.
        A failed input yields its :class:`InfinityError` (like ``errors="collect"``); server failures
        (unreachable, 5xx after retries, wrong hidden_dim) raise.
        """
        yield from self._iter_results(items, modality, self._batch_size(modality), show_progress,
                                      max_buffered_bytes)

    def detect_hidden_dim(self) -> int:
        """The model's embedding size, asked once from the server (one float request) and cached."""
        self._ensure_dim()
        assert self.hidden_dim is not None
        return self.hidden_dim

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer, e.g. ``{"unix": 1732435200.0}``; raises if it is unreachable."""
        return self._retrying_call(lambda: self._get("/health"))

    def models(self) -> list[str]:
        """The names of the models the server serves (``GET /models``)."""
        payload = self._retrying_call(lambda: self._get("/models"))
        return [str(item.get("id")) for item in payload.get("data", [])]

    def close(self) -> None:
        """Close the connection pools and worker threads. The client can still be used afterwards."""
        self._close_sync()
        self._close_async_from_sync()

    def __enter__(self) -> InfinityEmbeddings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- async API
    async def aembed_text(self, text: str) -> np.ndarray:
        """Async :meth:`embed_text`."""
        return await self._aone(wire.check_text(text), "text")

    async def aembed_query(self, query: str) -> np.ndarray:
        """Async :meth:`embed_query`."""
        return await self.aembed_text(query)

    async def aembed_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Async :meth:`embed_documents`."""
        return await self._amany(texts, "text", wire.MAX_TEXTS_PER_REQUEST, "raise", False)

    async def aembed_image(self, image: ImageInput) -> np.ndarray:
        """Async :meth:`embed_image`."""
        return await self._aone(wire.image_data_uri(image), "image")

    async def aembed_images(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Async :meth:`embed_images`."""
        return await self._amany(images, "image", wire.MAX_IMAGES_PER_REQUEST, "raise", False)

    async def aembed_documents_batch(
        self, texts: Iterable[str], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Async :meth:`embed_documents_batch` (concurrent, not sequential)."""
        return await self._amany(texts, "text", self._batch_size("text"), errors, show_progress)

    async def aembed_images_batch(
        self, images: Iterable[ImageInput], *, errors: Errors = "raise", show_progress: bool = False
    ) -> list[Any]:
        """Async :meth:`embed_images_batch` (concurrent, not sequential)."""
        return await self._amany(images, "image", self._batch_size("image"), errors, show_progress)

    async def aiter_embeddings(
        self, items: Iterable[Any], *, modality: Modality = "text", show_progress: bool = False,
        max_buffered_bytes: int | None = None,
    ) -> AsyncIterator[np.ndarray | InfinityError]:
        """Async :meth:`iter_embeddings`."""
        async for result in self._aiter_results(items, modality, self._batch_size(modality), show_progress,
                                                max_buffered_bytes):
            yield result

    async def ahealth(self) -> dict[str, Any]:
        """Async :meth:`health`."""
        async def attempt() -> dict[str, Any]:
            return await self._aget("/health")

        return await self._aretrying_call(attempt)

    async def aclose(self) -> None:
        """Close the async connection pool (and the sync one)."""
        await self._aclose_async()
        self.close()

    async def __aenter__(self) -> InfinityEmbeddings:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
