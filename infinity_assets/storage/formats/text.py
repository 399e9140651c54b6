"""Plain text (``.txt``, ``.md``): one document per file, UTF-8 (a BOM is dropped).

Failures: zero-byte file, invalid UTF-8 (with the byte offset), empty (whitespace only), over
:data:`MAX_TEXT_CHARS` characters (Infinity's per-input limit).
"""
from __future__ import annotations

from collections.abc import Iterator

from infinity_assets.storage.backend import SourceObject
from infinity_assets.storage.formats.base import Document, Format

#: Infinity's limit on one input string, in characters.
MAX_TEXT_CHARS = 122_880


class TextFormat(Format):
    """``.txt`` / ``.md``: the whole file is one document, ``doc_id`` = the key."""

    modality = "text"
    extensions = frozenset({".txt", ".md"})

    def documents(self, source: SourceObject, data: bytes) -> Iterator[Document]:
        yield _text_document(source, data)


def _text_document(source: SourceObject, data: bytes) -> Document:
    document = Document(source.key, source.uri, source.fingerprint)
    if not data:
        document.error = "empty file (0 bytes)"
        return document
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        document.error = (
            f"not valid UTF-8 (byte {exc.start} from the start is {data[exc.start : exc.start + 1]!r}"
            f"); save the file as UTF-8"
        )
        return document
    return checked_text(document, text.removeprefix("\ufeff"), "")


def checked_text(document: Document, text: str, where: str) -> Document:
    """Set ``content`` to ``text``, or ``error`` if it is empty or over the limit (``where`` prefixes it)."""
    if not text.strip():
        document.error = f"{where}empty document (no text, only whitespace)"
    elif len(text) > MAX_TEXT_CHARS:
        document.error = (
            f"{where}{len(text):,} characters is over Infinity's limit of {MAX_TEXT_CHARS:,} "
            "characters per input; split the document"
        )
    else:
        document.content = text
    return document
