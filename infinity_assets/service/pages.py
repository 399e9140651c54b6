"""The pictures and sources of indexed documents: looked up in the index, read from the store, rendered, cached.

A ``doc_id`` from a URL is never turned into a path. It is looked up in the index table of its modality
(:func:`lookup`); only a row found there names a file, and only through the ``source_uri`` and ``fingerprint``
the pipeline recorded, which must lie under ``raw/<modality>/`` of the store root (:func:`source_of`). The
read is pinned to the indexed fingerprint (S3 ``If-Match``, local stat), so a file changed since it was
indexed is refused rather than shown as the indexed page.

A PDF page is rendered by the embedding's renderer with the settings its artifact records
(:func:`render_settings`: the corpus's ``images.pdf``, or ``INFINITY_PDF_*``, when it was embedded), so the
picture is the one the model saw. PDFium is not thread-safe: pages are rendered one
at a time under a lock, in this process, and only for files the pipeline already rendered once. Pictures are
cached in memory (:class:`PictureCache`, bounded in bytes) and carry an ETag computed from the document's
fingerprint and the rendering settings.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import posixpath
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from infinity_assets import artifacts
from infinity_assets.index import IndexReader
from infinity_assets.storage.documents import DocumentStore, FailureKind, PdfSettings, SourceObject
from infinity_assets.storage.formats import pdf_render

_COLUMNS = ("doc_id", "partition", "source_uri", "fingerprint", "page", "n_vectors", "embedded_at")
#: The media type of a stored file by extension (anything else is served as bytes to download).
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
               ".pdf": "application/pdf", ".txt": "text/plain; charset=utf-8",
               ".md": "text/plain; charset=utf-8", ".jsonl": "text/plain; charset=utf-8"}
_RENDER_LOCK = threading.Lock()


class DocumentNotFound(LookupError):
    """No such document in the index (or its file is gone): a 404."""


class DocumentConflict(Exception):
    """The request cannot be answered as asked (ambiguous id, file changed since indexed): a 409."""


class DocumentTooLarge(Exception):
    """The document's file is over the size the service sends: a 413 naming the limit."""


@dataclass(frozen=True)
class IndexedDocument:
    """One row of an index table, without its vectors."""

    modality: str
    doc_id: str
    partition: str
    source_uri: str
    fingerprint: str
    page: int | None
    n_vectors: int
    model: str
    embedded_at: str = ""
    """When it was embedded (ISO 8601; empty for an index without the column)."""


def lookup(store: DocumentStore, modality: str, doc_id: str, partition: str | None = None,
           reader: IndexReader | None = None) -> IndexedDocument:
    """The indexed row of ``doc_id`` (in ``partition`` if given), in ``reader``'s table (None: one opened now).
    Raises :class:`DocumentNotFound`, :class:`DocumentConflict` (the id is in several batches and no partition
    was given), or the index's ``SearchIndexError`` (no index)."""
    reader = reader or IndexReader(store, modality)
    if not doc_id or len(doc_id) > 4096 or any(ord(c) < 32 for c in doc_id):
        raise DocumentNotFound(f"no document {doc_id[:200]!r} in the {modality} index")
    where = f"doc_id = {_sql(doc_id)}" + (f" AND partition = {_sql(partition)}" if partition is not None else "")
    columns = [c for c in _COLUMNS if c in reader.table.schema.names]
    rows = reader.table.search().where(where).select(columns).limit(64).to_list()
    if not rows:
        batch = f" in batch {partition!r}" if partition is not None else ""
        raise DocumentNotFound(f"no document {doc_id!r}{batch} in the {modality} index")
    if len(rows) > 1:
        batches = ", ".join(sorted(r["partition"] for r in rows))
        raise DocumentConflict(f"document {doc_id!r} is in several batches ({batches}); add ?partition=<batch>")
    row = rows[0]
    embedded_at = row.get("embedded_at")
    return IndexedDocument(modality, row["doc_id"], row["partition"], row["source_uri"], row["fingerprint"],
                           row.get("page"), int(row.get("n_vectors") or 0), reader.model,
                           embedded_at.isoformat() if embedded_at is not None else "")


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def source_of(store: DocumentStore, document: IndexedDocument) -> SourceObject:
    """The file of an indexed document, pinned to its indexed fingerprint; refuses a ``source_uri`` outside
    ``raw/<modality>/`` of the store (an index written by something else)."""
    path = document.source_uri.removeprefix("s3://") if store.is_s3 else document.source_uri
    raw_root = store.path(f"raw/{document.modality}") + "/"
    if (not path.startswith(raw_root) or posixpath.normpath(path) != path or "\x00" in path
            or store.uri(path) != document.source_uri):
        raise DocumentNotFound(f"document {document.doc_id!r} has a source outside the store's raw/"
                               f"{document.modality}/ folder; it is not served")
    return SourceObject(key=path[len(raw_root):], uri=document.source_uri, path=path, size=0,
                        fingerprint=document.fingerprint, last_modified=0.0)


def read_source(store: DocumentStore, document: IndexedDocument, max_bytes: int | None = None) -> bytes:
    """The bytes of the document's file as indexed. Raises :class:`DocumentNotFound` (deleted),
    :class:`DocumentConflict` (changed since indexed), :class:`DocumentTooLarge` (over ``max_bytes``) or
    ``DocumentStoreError`` (the store fails)."""
    source = source_of(store, document)
    if max_bytes is not None:
        try:
            size = int(store.fs.size(source.path))
        except FileNotFoundError:
            raise DocumentNotFound(f"the file of document {document.doc_id!r} is gone from the store") from None
        if size > max_bytes:
            raise DocumentTooLarge(f"the file of document {document.doc_id!r} is {size:,} bytes; the service "
                                   f"sends files up to {max_bytes:,} bytes (max_source_bytes)")
    data = store.fetch([source])[source.path]
    if isinstance(data, BaseException):
        failure = store.read_failure(data, source)  # raises DocumentStoreError for store-wide failures
        if failure.kind is FailureKind.DELETED:
            raise DocumentNotFound(f"the file of document {document.doc_id!r} is gone from the store")
        if failure.kind is FailureKind.CHANGED:
            raise DocumentConflict(f"the file of document {document.doc_id!r} changed since it was indexed; "
                                   "its picture is served again once the index follows the new version")
        raise DocumentConflict(f"the file of document {document.doc_id!r} cannot be read: {failure.reason}")
    return data


def media_type(document: IndexedDocument) -> str:
    """The media type of the document's stored file."""
    return MEDIA_TYPES.get(posixpath.splitext(source_key(document))[1].lower(), "application/octet-stream")


def source_key(document: IndexedDocument) -> str:
    """The file name part of the source URI (the document's file)."""
    return document.source_uri.rsplit("/", 1)[-1]


def render_settings(store: DocumentStore, document: IndexedDocument) -> PdfSettings:
    """How the document's PDF page was drawn when it was embedded: ``max_side`` and ``dpi`` recorded in its
    batch's artifact (read once per embedding of the page); the store's settings (``INFINITY_PDF_*``) for an
    artifact written before they were recorded, or one that cannot be read now."""
    try:
        max_side, dpi = _recorded_settings(store, document.modality, document.partition, document.doc_id,
                                           document.embedded_at)
    except (OSError, KeyError, ValueError):
        return store.pdf
    return dataclasses.replace(store.pdf, max_side=max_side, dpi=dpi)


@functools.lru_cache(maxsize=4096)
def _recorded_settings(store: DocumentStore, modality: str, partition: str, doc_id: str,
                       embedded_at: str) -> tuple[int, float]:
    """``(max_side, dpi)`` recorded by the artifact that holds this embedding of the page: fixed once recorded
    (a page drawn otherwise is embedded again, at another ``embedded_at``), so cached; a failure is not."""
    with store.fs.open(store.artifact_path(modality, partition), "rb") as handle:
        recorded = artifacts.artifact_metadata(pq.ParquetFile(handle))
    return int(recorded["pdf_max_side"]), float(recorded["pdf_dpi"])


def etag(store: DocumentStore, document: IndexedDocument, size: int | None) -> str:
    """A strong ETag of the document's picture: its store, fingerprint, id and the rendering settings (the
    store too: a local fingerprint, ``<size>-<mtime_ns>``, can be the same for two files of two corpora)."""
    pdf = render_settings(store, document) if document.page is not None else store.pdf
    material = "\0".join(map(str, (store.root_uri, document.fingerprint, document.partition, document.doc_id,
                                   size, pdf.max_side, pdf.dpi, "v2")))
    return '"' + hashlib.sha256(material.encode()).hexdigest()[:32] + '"'


def picture(store: DocumentStore, document: IndexedDocument, size: int | None) -> tuple[bytes, str]:
    """``(bytes, media type)`` of the document's page picture: a PDF page rendered as the embedding rendered
    it, or the stored image as it is; scaled to at most ``size`` pixels on its longest side (PNG) if given."""
    data = read_source(store, document)
    if document.page is not None and media_type(document) == "application/pdf":
        png = render_pdf_page(data, document.page, render_settings(store, document))
        return (png, "image/png") if size is None else (thumbnail(png, size), "image/png")
    if not media_type(document).startswith("image/"):
        raise DocumentNotFound(f"document {document.doc_id!r} is not a page image")
    return (data, media_type(document)) if size is None else (thumbnail(data, size), "image/png")


def render_pdf_page(data: bytes, page: int, settings: PdfSettings) -> bytes:
    """PNG of page ``page`` (from 1) with the embedding's renderer and ``settings``."""
    import pypdfium2 as pdfium

    with _RENDER_LOCK:
        document = pdfium.PdfDocument(data)
        try:
            if not 1 <= page <= len(document):
                raise DocumentNotFound(f"the PDF has {len(document)} pages, not {page}")
            # The renderer of formats/pdf.py, one page: same scale rule, same PNG writer, same pixels.
            png, _ = pdf_render.render_page(document, page - 1, settings)
        finally:
            document.close()
    return png


def thumbnail(image_bytes: bytes, size: int) -> bytes:
    """The image scaled down (never up) to at most ``size`` pixels on its longest side, as an RGB PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale directly
        rgb = image.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return pdf_render.png_bytes(np.asarray(rgb))


class OpenReaders:
    """One :class:`IndexReader` per modality, kept open across requests (its FDE codes are read once; with
    ``local_copy``, a directory, it keeps a copy of stage 3's column there, and with ``copy_originals`` of the
    rerank's rows too).

    :meth:`get` checks the table's latest version first; when a sync has committed a new one, it opens a new
    reader and hands that out, so searches still running on the old reader finish on the version they started
    on (a reader is never moved under a search).
    """

    def __init__(self, store: DocumentStore, local_copy: str | None = None,
                 copy_originals: bool | str = "auto") -> None:
        self.store, self.local_copy, self.copy_originals = store, local_copy, copy_originals
        self._readers: dict[str, IndexReader] = {}
        self._lock = threading.Lock()

    def get(self, modality: str) -> IndexReader:
        """The reader of the latest committed version of the ``modality`` index (``SearchIndexError`` if none)."""
        with self._lock:
            reader = self._readers.get(modality)
            if reader is not None:
                reader.table.checkout_latest()
                if reader.table.version == reader.version:
                    return reader
            self._readers.pop(modality, None)
            self._readers[modality] = reader = IndexReader(self.store, modality, local_copy=self.local_copy,
                                                           copy_originals=self.copy_originals)
            return reader


class PictureCache:
    """Pictures by ETag, least recently used first out, at most ``max_bytes`` in total (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The cached ``(bytes, media type)`` of ``key``, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, item: tuple[bytes, str]) -> None:
        """Keep ``item`` unless it alone is over the bound; drop the oldest beyond it."""
        if len(item[0]) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = item
            self.bytes += len(item[0])
            while self.bytes > self.max_bytes:
                _, (old, _) = self._items.popitem(last=False)
                self.bytes -= len(old)
