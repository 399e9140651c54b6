"""Documents in object storage: the files of a batch folder, read through their formats.

:class:`DocumentStore` is the storage layer (:class:`infinity_assets.storage.store.ObjectStore`: listing, pinned
reads, retries, errors) plus the formats (:mod:`infinity_assets.storage.formats`: which extensions are documents and
how bytes become :class:`Document` s). Layout under the root::

    raw/text/<batch>/...      .txt .md (one document each, UTF-8), .jsonl (one document per line)
    raw/images/<batch>/...    .png .jpg .jpeg .webp .gif .bmp .tif .tiff (one document each),
                              .pdf (one page image document per page, formats/pdf.py)
    embeddings/text/<batch>.parquet, embeddings/images/<batch>.parquet   (artifacts: infinity_assets.artifacts)

Nothing is silently dropped: a file with an unsupported extension (or an unsafe key such as ``a/../b``) is
listed in ``Listing.skipped``; a file that cannot be read or parsed becomes a Document with ``error`` set and
its ``error_kind`` (:class:`FailureKind`: changed, deleted, unreadable for now, or a problem of the document).
The names users imported from this module before storage and formats were split (``DocumentStore``,
``Document``, ``SourceObject``, ``Listing``, ``partition_key_for_folder``, ...) are still here.

Example::

    store = DocumentStore("s3://docs/prod", endpoint_url="http://127.0.0.1:8333")
    listing = store.list_sources("text", "2026-11-24")
    for document in store.read_documents("text", listing.sources):
        print(document.doc_id, document.error or len(document.content))
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from infinity_assets.storage.formats import (
    EXTENSIONS,
    FORMATS,
    MAX_TEXT_CHARS,
    MIN_IMAGE_SIDE,
    Document,
    Format,
    PdfSettings,
    format_class,
)
from infinity_assets.storage.keys import folder_for_partition, partition_key_for_folder
from infinity_assets.storage.store import (
    MODALITIES,
    DocumentStoreError,
    FailureKind,
    Listing,
    ObjectStore,
    ReadFailure,
    ScannedObject,
    SourceObject,
    is_auth_failure,
    is_safe_segment,
    is_storage_failure,
    modality_folder,
)

__all__ = [
    "EXTENSIONS", "MAX_TEXT_CHARS", "MIN_IMAGE_SIDE", "MODALITIES", "Document", "PdfSettings", "DocumentStore",
    "DocumentStoreError", "FailureKind", "Listing", "ScannedObject", "SourceObject", "folder_for_partition",
    "is_storage_failure", "is_streamed", "is_supported", "partition_key_for_folder",
]


def is_supported(modality: str, key: str) -> bool:
    """Whether a file of this key is a document of ``modality`` (by extension, case-insensitive)."""
    return format_class(modality_folder(modality), key) is not None


def is_streamed(modality: str, source: SourceObject) -> bool:
    """Whether the file is read line by line into many documents, each with its own fingerprint (JSONL)."""
    found = format_class(modality_folder(modality), source.key)
    return found is not None and found.streamed


class DocumentStore(ObjectStore):
    """An :class:`ObjectStore` that reads documents: lists the supported files of a batch and parses them.

    The format options are ``jsonl_id_field``, ``jsonl_text_field`` and ``pdf`` (:class:`PdfSettings`; unset:
    its defaults, the environment's ``INFINITY_PDF_*`` being read at the edges by :mod:`infinity_assets.settings`);
    the other keyword arguments are the storage's (``endpoint_url``, ``key``, ``secret``, ``region``,
    ``read_concurrency``).
    """

    def __init__(self, root: str, *, jsonl_id_field: str = "id", jsonl_text_field: str = "text",
                 pdf: PdfSettings | None = None, **storage_options: object) -> None:
        super().__init__(root, **storage_options)  # type: ignore[arg-type]
        self.jsonl_id_field, self.jsonl_text_field = jsonl_id_field, jsonl_text_field
        self.pdf = pdf or PdfSettings()
        options = {"jsonl_id_field": jsonl_id_field, "jsonl_text_field": jsonl_text_field, "pdf": self.pdf}
        self.formats: dict[type[Format], Format] = {
            cls: cls(**options) for classes in FORMATS.values() for cls in classes}

    def list_sources(self, modality: str, partition_key: str) -> Listing:
        """The documents' source files of one batch folder (recursive, sorted by key), with fingerprints.

        Files with an unsupported extension or an unsafe key are in ``skipped``. A missing folder is empty.
        """
        listing = Listing()
        for source in self.list_files(modality, partition_key):
            _add_to_listing(listing, modality, source.key, source)
        listing.sources.sort(key=lambda s: s.key)
        listing.skipped.sort()
        return listing

    def scan(self, modality: str, *, page_size: int = 1000) -> dict[str, Listing]:
        """One recursive listing of ``raw/<modality>/``: ``{partition key: Listing}``, sorted (for sensors).

        Same sources, keys and fingerprints as :meth:`list_sources` of each partition. For bounded memory over
        huge buckets iterate :meth:`iter_object_pages` instead.
        """
        listings: dict[str, Listing] = {}
        for page in self.iter_object_pages(modality, page_size=page_size):
            for item in page:
                _add_to_listing(
                    listings.setdefault(item.partition, Listing()), modality, item.source.key, item.source
                )
        for listing in listings.values():
            listing.sources.sort(key=lambda s: s.key)
            listing.skipped.sort()
        return dict(sorted(listings.items()))

    def read_documents(
        self, modality: str, sources: Iterable[SourceObject], *, chunk_size: int = 64
    ) -> Iterator[Document]:
        """Yield the documents of ``sources`` in order, reading ``chunk_size`` files at a time.

        On S3 the files of a chunk are fetched concurrently (at most ``read_concurrency`` at once), so memory
        is bounded by a chunk; streamed formats (JSONL) are read line by line. A file that cannot be read or
        parsed yields a :class:`Document` with ``error`` set; only store-wide failures (credentials, endpoint)
        raise :class:`DocumentStoreError`.
        """
        modality = modality_folder(modality)
        chunk: list[SourceObject] = []
        for source in sources:
            chunk.append(source)
            if len(chunk) >= chunk_size:
                yield from self._read_chunk(modality, chunk)
                chunk = []
        if chunk:
            yield from self._read_chunk(modality, chunk)

    def _format(self, modality: str, source: SourceObject) -> Format:
        found = format_class(modality, source.key)
        if found is None:
            raise DocumentStoreError(f"{source.uri!r} is not a {modality} document of a known format")
        return self.formats[found]

    def _read_chunk(self, modality: str, chunk: list[SourceObject]) -> Iterator[Document]:
        formats = [self._format(modality, source) for source in chunk]
        contents = self.fetch([s for s, f in zip(chunk, formats) if not f.streamed])

        def whole(pair: tuple[SourceObject, Format]) -> Format | None:
            source, fmt = pair
            return None if fmt.streamed or isinstance(contents[source.path], BaseException) else fmt

        # Consecutive files of one format that were read whole go to the format together, so that it can work
        # ahead on the next files (PDF: the render pool stays busy across files).
        for fmt, run in itertools.groupby(zip(chunk, formats), key=whole):
            if fmt is not None:
                yield from fmt.documents_of((source, contents[source.path]) for source, _ in run)
                continue
            for source, each in run:
                if each.streamed:
                    yield from self._streamed_documents(source, each)
                else:
                    yield _failed(source, self.read_failure(contents[source.path], source))

    def _streamed_documents(self, source: SourceObject, fmt: Format) -> Iterator[Document]:
        try:
            handle = self.open(source)
        except DocumentStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 -- reported per document
            yield _failed(source, self.read_failure(exc, source))
            return
        parser = fmt.line_parser(source)
        try:
            with handle:
                for raw in handle:
                    document = parser.line(raw)
                    if document is not None:
                        yield document
                self.check_unchanged(handle, source)
        except Exception as exc:  # noqa: BLE001 -- the rest of the file is one failure
            if is_auth_failure(exc):
                raise self.store_error(exc, source.path) from None
            yield _failed(source, self.read_failure(exc, source), f"after line {parser.number}: ")
            return
        if parser.documents == 0:
            yield Document(source.key, source.uri, source.fingerprint, error=parser.empty_reason)


def _failed(source: SourceObject, failure: ReadFailure, prefix: str = "") -> Document:
    """The document of a file that could not be read, with the failure's kind."""
    return Document(source.key, source.uri, source.fingerprint, error=prefix + failure.reason,
                    error_kind=failure.kind)


def _add_to_listing(listing: Listing, modality: str, key: str, source: SourceObject) -> None:
    if not all(is_safe_segment(part) for part in key.split("/")) or not is_supported(modality, key):
        listing.skipped.append(key)
    else:
        listing.sources.append(source)
