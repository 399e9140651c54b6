"""The protocol a kind of object store implements (:mod:`.local`, :mod:`.s3`), and the records they share.

:class:`~infinity_assets.storage.store.ObjectStore` owns what every store has in common (keys and their
safety, the layout, partitions, readable failure reasons); a backend owns only what differs between a local
folder and S3: how a root becomes filesystem paths, how a folder is listed, how a file is read pinned to its
listed version, and how a store-wide failure is explained. A new kind of store is one module implementing
:class:`StorageBackend` and one line in ``ObjectStore``'s choice of backend.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import fsspec


class DocumentStoreError(Exception):
    """The store cannot be used: bad credentials, missing bucket, unreachable endpoint, or an unsafe key."""


@dataclass(frozen=True, slots=True)
class SourceObject:
    """One file in a batch folder: ``key`` relative to the folder, full ``uri``, ``fingerprint`` for changes.

    ``path`` is the filesystem path (for ``store.fs``); ``last_modified`` is POSIX seconds (whole seconds on
    most S3 servers).
    """

    key: str
    uri: str
    path: str
    size: int
    fingerprint: str
    last_modified: float


#: One listed file: ``(path, size, fingerprint, last_modified)``.
FileEntry = tuple[str, int, str, float]


class ChangedError(Exception):
    """A file no longer matches its listed fingerprint (the message says when: since listing, while read)."""


class UnsafeKeyError(Exception):
    """A key that would make the store read outside its root."""


class StorageBackend(Protocol):
    """One kind of object store under a root: paths, listings, pinned reads, store-wide errors.

    Attributes: ``fs`` (the fsspec filesystem), ``root`` (the root as a filesystem path), ``root_uri``,
    ``is_s3``, and for S3 ``bucket``, ``endpoint_url``, ``region`` (``None`` elsewhere).
    """

    fs: fsspec.AbstractFileSystem
    root: str
    root_uri: str
    is_s3: bool
    bucket: str | None
    endpoint_url: str | None
    region: str | None
    stream_block_size: int

    def uri(self, path: str) -> str:
        """The URI of a filesystem path of this store."""

    def make_dirs(self, path: str) -> None:
        """Create a folder where the store has folders (a no-op on S3)."""

    def list_folders(self, base: str) -> list[str]:
        """The names of the folders directly under the folder ``base`` (none if it does not exist)."""

    def file_pages(self, base: str, page_size: int) -> Iterator[list[FileEntry]]:
        """Every file under the folder ``base`` (recursive), a page at a time, by key within a page."""

    def fetch(self, sources: list[SourceObject]) -> list[bytes | BaseException]:
        """The bytes of each source, pinned to its listed version (an exception for a file not read)."""

    def open(self, source: SourceObject) -> Any:
        """A binary stream of the file, pinned to its listed version."""

    def check_unchanged(self, handle: Any, source: SourceObject) -> None:
        """After streaming a file: raise :class:`ChangedError` if it changed while it was read."""

    def store_error(self, exc: BaseException, path: str) -> DocumentStoreError:
        """A clear error for a failure that concerns the whole store (credentials, bucket, endpoint)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for error messages."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]
