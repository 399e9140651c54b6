"""Helpers for the service tests: an indexed corpus on SeaweedFS and the app served by a real uvicorn.

* :func:`build_corpus`: a bucket with a PDF, a PNG and text files, embedded through the real Infinity server
  (by default ``colpali-tiny`` for pages, ``minilm-colbert-128`` for text) and indexed.
* :class:`ServedApp`: :func:`infinity_assets.service.create_app` served by uvicorn on a free port of
  127.0.0.1 in a thread (the same server ``infinity-assets serve`` runs), stopped on exit.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from infinity_assets import InfinityEmbeddings
from infinity_assets.corpus import ClientSettings
from infinity_assets.index import sync_index
from infinity_assets.pipeline import embed_partition
from infinity_assets.service.corpora import ServedCorpus
from infinity_assets.settings import QuerySettings
from infinity_assets.storage.documents import DocumentStore, PdfSettings
from infinity_assets_dev.ports import free_port

TEXTS = {"cats.txt": "the cat sat on the warm mat in the afternoon sun",
         "rockets.md": "# rockets\nrocket engines burn liquid oxygen and kerosene to reach orbit"}
TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colpali-tiny"


@dataclass
class Corpus:
    """An indexed bucket: its store, the files put there, and the models it was embedded with."""

    bucket: str
    store: DocumentStore
    pdf: bytes
    photo: bytes
    infinity_url: str
    models: dict[str, str]

    def clients(self, url: str | None = None, **options: Any) -> dict[str, InfinityEmbeddings]:
        """New clients for both modalities (the corpus's models), at ``url`` (default: the real server)."""
        url = url or self.infinity_url
        return {modality: InfinityEmbeddings(url=url, model_name=model, hidden_dim=None, **options)
                for modality, model in self.models.items()}

    def queries(self, url: str | None = None, *, pinned: bool = True, **options: Any) -> dict[str, QuerySettings]:
        """Query settings for both modalities at ``url`` (default: the real server): the corpus's models pinned,
        or (``pinned=False``) each index's."""
        url = url or self.infinity_url
        return {modality: QuerySettings(ClientSettings(url=url, model_name=model, hidden_dim=None, **options),
                                        pinned=pinned)
                for modality, model in self.models.items()}

    def served(self, name: str = "default", **options: Any) -> ServedCorpus:
        """This corpus as the service serves it, under ``name`` (``options``: :meth:`queries`'s)."""
        return ServedCorpus(name, self.store, self.queries(**options))


def photo_png() -> bytes:
    """A 300 x 200 PNG with two colours (a page image stored as is)."""
    image = Image.new("RGB", (300, 200), (200, 40, 40))
    image.paste((30, 90, 200), (150, 0, 300, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_corpus(seaweedfs: Any, infinity_url: str, pdf: bytes, *, pdf_name: str = "report.pdf",
                 texts: dict[str, str] | None = None, text_model: str = TEXT_MODEL,
                 image_model: str = IMAGE_MODEL, pdf_settings: PdfSettings | None = None) -> Corpus:
    """Put the files in a new bucket (the PDF as ``pdf_name``, a PNG, ``texts``: default :data:`TEXTS`), embed
    both batches with the models given (PDF pages drawn with ``pdf_settings``: default the defaults) and sync
    both indexes."""
    bucket = seaweedfs.create_bucket()
    photo = photo_png()
    files = {f"{bucket}/raw/images/b1/{pdf_name}": pdf, f"{bucket}/raw/images/b1/photo.png": photo}
    files |= {f"{bucket}/raw/text/t1/{name}": text.encode() for name, text in (texts or TEXTS).items()}
    seaweedfs.filesystem().pipe(files)
    store = DocumentStore(f"s3://{bucket}", pdf=pdf_settings, **seaweedfs.storage_options())
    corpus = Corpus(bucket, store, pdf, photo, infinity_url, {"text": text_model, "images": image_model})
    clients = corpus.clients()
    try:
        for modality, partition in (("images", "b1"), ("text", "t1")):
            report = embed_partition(store, clients[modality], modality, partition)
            assert report.failed == 0, report.failures
            sync_index(store, modality)
    finally:
        for client in clients.values():
            client.close()
    return corpus


class ServedApp:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread; ``url`` is its address."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def get(self, path: str, **options: Any) -> httpx.Response:
        """``GET`` a path of the app."""
        return httpx.get(self.url + path, timeout=120, **options)
