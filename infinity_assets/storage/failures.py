"""Why a document was not embedded, as data: a :class:`FailureKind` goes with the failure's message.

The kind is set where the failure happens (a read of the store, a format parsing the file, the Infinity server
refusing the input) and read where it is decided: the partition's data version leaves out the files whose
failure a later run may fix (:attr:`FailureKind.retryable`), the failures sidecar records it, and the service
answers 404 for a deleted file and 409 for one changed since it was indexed. The message is for people only;
nothing decides by searching its text.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class FailureKind(str, Enum):
    """What went wrong with one document (its value is what the failures sidecar records).

    * ``changed``: the file no longer matches its listed fingerprint (changed since it was listed or indexed,
      or while it was read); the next run reads the new version.
    * ``deleted``: the file was deleted after it was listed; the next run will not list it.
    * ``unreadable``: the store failed to read the file for now (an I/O or network error).
    * ``document``: the file itself cannot be embedded (invalid UTF-8, a corrupt image, an encrypted PDF, an
      unsafe key); only a new version of it can fix that.
    * ``embedding``: the Infinity server refused or could not embed this input.
    """

    CHANGED = "changed"
    DELETED = "deleted"
    UNREADABLE = "unreadable"
    DOCUMENT = "document"
    EMBEDDING = "embedding"

    @property
    def retryable(self) -> bool:
        """Whether a later run may succeed without the document changing (the store's failures)."""
        return self in (FailureKind.CHANGED, FailureKind.DELETED, FailureKind.UNREADABLE)


@dataclass(frozen=True)
class ReadFailure:
    """Why one file could not be read: its ``kind`` and the ``reason`` to show (says what happens next)."""

    kind: FailureKind
    reason: str

    def __str__(self) -> str:
        return self.reason
