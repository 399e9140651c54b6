"""What every format shares: the :class:`Document` record and the :class:`Format` interface."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from infinity_assets.storage.backend import SourceObject, first_line  # noqa: F401 (first_line: for the formats)
from infinity_assets.storage.failures import FailureKind


@dataclass
class Document:
    """One document to embed: ``content`` (str for text, bytes for images) or the ``error`` preventing it.

    ``page`` (from 1) and ``page_text`` are set for the pages of a paged document (PDF), else ``None``.
    ``error_kind`` says what kind of failure ``error`` is (meaningful only with an error): a format's own
    failures (the file cannot be parsed) are :attr:`FailureKind.DOCUMENT`, the default; the store sets the
    kind of a failed read (changed, deleted, unreadable for now).
    """

    doc_id: str
    source_uri: str
    fingerprint: str
    content: str | bytes | None = None
    error: str | None = None
    page: int | None = None
    page_text: str | None = None
    error_kind: FailureKind = FailureKind.DOCUMENT


class LineParser(Protocol):
    """Turns the lines of one streamed file into documents (``number``: lines read so far)."""

    number: int
    documents: int
    empty_reason: str  # the failure of a file without any document

    def line(self, raw: bytes) -> Document | None:
        """The document of one line, or ``None`` for a line that holds none (blank)."""


class Format:
    """One kind of file: its modality, its extensions, and how its bytes become documents.

    A format either reads whole files (:meth:`documents`) or, with ``streamed = True``, reads a file line by
    line (:meth:`line_parser`); a streamed file's documents are fingerprinted one by one, so the pipeline
    decides reuse per document rather than per file.
    """

    modality: ClassVar[str]
    extensions: ClassVar[frozenset[str]]
    streamed: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def documents(self, source: SourceObject, data: bytes) -> Iterator[Document]:
        """The documents of one whole file (a failure is a Document with ``error`` set)."""
        raise NotImplementedError

    def documents_of(self, files: Iterable[tuple[SourceObject, bytes]]) -> Iterator[Document]:
        """The documents of several whole files, file after file: :meth:`documents` of each. A format may work
        on later files while the documents of earlier ones are taken (PDF renders ahead)."""
        for source, data in files:
            yield from self.documents(source, data)

    def line_parser(self, source: SourceObject) -> LineParser:
        """A parser for the lines of one streamed file."""
        raise NotImplementedError
