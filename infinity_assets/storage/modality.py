"""The kinds of document a corpus holds, each knowing its names: folder, wire modality, index table, asset stem.

One object per kind instead of ``"text"`` / ``"images"`` strings looked up in dicts across the layers. A
``Modality`` is a ``str`` (``Modality.TEXT == "text"``), so paths, JSON and old callers passing the string
keep working.
"""
from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    """``text`` (.txt, .md, .jsonl documents) or ``images`` (images and PDF pages)."""

    TEXT = "text"
    IMAGES = "images"

    @classmethod
    def of(cls, value: str) -> Modality:
        """The modality ``value`` names (``"image"`` accepted for images); ``ValueError`` naming the choices."""
        if value == "image":
            return cls.IMAGES
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"modality must be 'text' or 'images', got {value!r}") from None

    def __str__(self) -> str:
        return self.value

    @property
    def folder(self) -> str:
        """Its folder under ``raw/`` and ``embeddings/`` of a root: ``text`` or ``images``."""
        return self.value

    @property
    def wire(self) -> str:
        """What Infinity's ``/embeddings`` calls it: ``text`` or ``image``."""
        return "image" if self is Modality.IMAGES else "text"

    @property
    def table(self) -> str:
        """Its table in a root's LanceDB index: ``text`` or ``images``."""
        return self.value

    @property
    def stem(self) -> str:
        """How its Dagster asset names start: ``text_embeddings``, ``image_embeddings``."""
        return "image" if self is Modality.IMAGES else "text"


#: Every modality, text first.
MODALITIES: tuple[Modality, ...] = tuple(Modality)
