"""Document formats: one small module per kind of file, each turning bytes into :class:`Document` s.

A format declares its modality and extensions (:class:`Format`); :data:`FORMATS` is the registry. Adding a
format is one module and one line here: storage knows no format, and the pipeline reads every format the same
way (``DocumentStore.read_documents``).
"""
from __future__ import annotations

import posixpath

from infinity_assets.storage.formats.base import Document, Format, LineParser
from infinity_assets.storage.formats.images import MIN_IMAGE_SIDE, ImageFormat
from infinity_assets.storage.formats.jsonl import JsonlFormat
from infinity_assets.storage.formats.pdf import PdfFormat, PdfSettings
from infinity_assets.storage.formats.text import MAX_TEXT_CHARS, TextFormat

#: Every format, by modality.
FORMATS: dict[str, tuple[type[Format], ...]] = {
    "text": (TextFormat, JsonlFormat),
    "images": (ImageFormat, PdfFormat),
}
#: The extensions of each modality (lower case, with the dot).
EXTENSIONS = {modality: frozenset().union(*(f.extensions for f in formats)) for modality, formats in FORMATS.items()}


def format_class(modality: str, key: str) -> type[Format] | None:
    """The format of a file of ``modality`` by its key's extension (case-insensitive), or ``None``."""
    extension = posixpath.splitext(key)[1].lower()
    return next((f for f in FORMATS[modality] if extension in f.extensions), None)


__all__ = ["EXTENSIONS", "FORMATS", "MAX_TEXT_CHARS", "MIN_IMAGE_SIDE", "Document", "Format", "LineParser",
           "PdfSettings", "format_class"]
