"""Object storage under one root (a local folder or ``s3://bucket/prefix``): list, read and pin files; no formats.

Layout under the root::

    raw/<modality>/<batch>/...     the documents' source files (formats: infinity_assets.storage.formats)
    embeddings/<modality>/<batch>.parquet   the artifacts (infinity_assets.artifacts)

A batch folder is a partition (keys.py maps folder names to partition keys); nested folders inside it belong
to it. Files directly under ``raw/<modality>/`` belong to no batch and are ignored (with a warning).

* :class:`ObjectStore` -- ``fs`` (the fsspec filesystem), ``path(key)`` / ``uri(path)`` / ``uri_for(key)``,
  ``artifact_path(modality, partition)``, ``list_partitions(modality)``, ``iter_object_pages(modality)`` (one
  recursive listing of a whole modality, page by page), ``list_files(modality, partition)``, ``fetch(sources)``
  (bytes, pinned to the listed version), ``open(source)`` (a stream, pinned too),
  ``read_failure(exc, source)`` (why a file could not be read: a :class:`~.failures.FailureKind` and a reason).
* :class:`SourceObject` -- one file: ``key`` (relative to its batch folder), ``uri``, ``path``, ``size``,
  ``fingerprint``, ``last_modified``. The fingerprint is the ETag on S3, ``<size>-<mtime_ns>`` locally.

Consistency: a read is pinned to the listed version. On S3 ``GET`` carries ``If-Match: <listed ETag>`` and a
stream is an s3fs file, which pins the ETag on every block; locally the file's size and mtime_ns are compared
before and after reading. A file changed since it was listed, or while it was read, becomes a failure of kind
``changed`` (the next run reads the new version) -- never a crash, never a mismatched fingerprint. Listings
never use s3fs's listing cache (it misses new objects): they page ``ListObjectsV2`` directly. Transient S3 errors are retried (:data:`READ_RETRY_DELAYS`).

What differs between a local folder and S3 (listing, pinned reads, store-wide errors) lives in one backend per
kind of store behind :class:`~.backend.StorageBackend` (:mod:`.local`, :mod:`.s3`); this module keeps what
they share.

Safety: ``path()`` refuses keys that leave the root (``..``, absolute paths, NUL); listed keys with
``.``/``..`` or empty segments are skipped; local symlinks are not followed out of the root. The S3 secret
never appears in ``repr``, logs or error messages.
"""
from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from infinity_assets.storage.backend import (
    ChangedError,
    DocumentStoreError,
    SourceObject,
    StorageBackend,
    UnsafeKeyError,
    first_line,
)
from infinity_assets.storage.failures import FailureKind, ReadFailure
from infinity_assets.storage.keys import folder_for_partition, partition_key_for_folder
from infinity_assets.storage.local import LocalBackend
from infinity_assets.storage.modality import MODALITIES, Modality
from infinity_assets.storage.s3 import READ_RETRY_DELAYS, S3Backend, is_auth_failure, s3_code

__all__ = [
    "MODALITIES", "READ_RETRY_DELAYS", "DocumentStoreError", "FailureKind", "Listing", "Modality", "ObjectStore",
    "ReadFailure", "ScannedObject", "SourceObject", "is_auth_failure", "is_safe_segment", "is_storage_failure",
    "modality_folder",
]

logger = logging.getLogger(__name__)


# --- records
@dataclass
class Listing:
    """The sources of one batch folder (sorted by key) and the keys skipped (bad extension, unsafe key)."""

    sources: list[SourceObject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def fingerprints(self) -> dict[str, str]:
        """``{key: fingerprint}`` of the sources: what data versions and run keys are computed from."""
        return {s.key: s.fingerprint for s in self.sources}


@dataclass(frozen=True, slots=True)
class ScannedObject:
    """One file found by a whole-modality scan: its batch's ``partition`` key and the file as a source."""

    partition: str
    source: SourceObject



# --- the store
class ObjectStore:
    """Lists and reads files under ``root``, a local folder or ``s3://bucket/prefix`` (via s3fs).

    S3 settings come from the arguments, else the standard variables ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION`` (default ``us-east-1``).
    ``read_concurrency`` bounds concurrent S3 reads. The module docstring describes the layout, pinning and
    safety; what differs between kinds of store is in ``backend`` (:class:`~.local.LocalBackend`,
    :class:`~.s3.S3Backend`); :class:`infinity_assets.storage.documents.DocumentStore` adds the document formats.
    """

    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        region: str | None = None,
        read_concurrency: int = 32,
    ) -> None:
        if not root:
            raise DocumentStoreError(
                "the document store root is empty; set it to a folder or s3://bucket/prefix"
            )
        self.read_concurrency = max(1, read_concurrency)
        self.backend: StorageBackend = (
            S3Backend(root, endpoint_url=endpoint_url, key=key, secret=secret, region=region,
                      read_concurrency=self.read_concurrency)
            if root.startswith("s3://") else LocalBackend(root))
        self.fs = self.backend.fs
        self.root, self.root_uri, self.is_s3 = self.backend.root, self.backend.root_uri, self.backend.is_s3
        self.bucket, self.endpoint_url, self.region = (
            self.backend.bucket, self.backend.endpoint_url, self.backend.region)

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"DocumentStore({self.root_uri!r}{endpoint})"

    @property
    def stream_block_size(self) -> int:
        """Bytes fetched per request while streaming a file from S3 (see :meth:`open`)."""
        return self.backend.stream_block_size

    @stream_block_size.setter
    def stream_block_size(self, value: int) -> None:
        self.backend.stream_block_size = value

    # --- paths
    def path(self, relative: str) -> str:
        """The filesystem path (for ``self.fs``) of a key relative to the root; refuses keys leaving it."""
        cleaned = relative.replace("\\", "/")
        normalized = posixpath.normpath(cleaned) if cleaned else "."
        if (
            cleaned.startswith("/")
            or normalized == ".."
            or normalized.startswith("../")
            or "\x00" in cleaned
            or normalized == "."
        ):
            raise DocumentStoreError(
                f"key {relative!r} does not name a file inside the store root {self.root_uri!r}"
            )
        return f"{self.root}/{normalized}"

    def uri(self, path: str) -> str:
        """The URI of a filesystem path of this store (``s3://...`` or a local absolute path)."""
        return self.backend.uri(path)

    def uri_for(self, relative: str) -> str:
        """The full URI of a key relative to the root (``uri(path(relative))``)."""
        return self.uri(self.path(relative))

    def artifact_path(self, modality: str, partition_key: str) -> str:
        """Where the artifact of a partition lives: ``embeddings/<modality>/<batch folder>.parquet``."""
        folder = _safe_segment(_folder(partition_key))
        return self.path(f"embeddings/{modality_folder(modality)}/{folder}.parquet")

    def ensure_artifact_dir(self, modality: str) -> None:
        """Create the artifact folder on a local root (S3 has no folders)."""
        self.backend.make_dirs(self.path(f"embeddings/{modality_folder(modality)}"))

    # --- listing
    def list_partitions(self, modality: str) -> list[str]:
        """The partition keys of the batch folders under ``raw/<modality>/``, sorted (a fresh listing)."""
        names = self.backend.list_folders(self.path(f"raw/{modality_folder(modality)}"))
        return sorted(partition_key_for_folder(name) for name in names if is_safe_segment(name))

    def list_files(self, modality: str, partition_key: str) -> Iterator[SourceObject]:
        """Every file of one batch folder (recursive, in no particular order), whatever its extension."""
        folder = _safe_segment(_folder(partition_key))
        base = self.path(f"raw/{modality_folder(modality)}/{folder}")
        for page in self.backend.file_pages(base, page_size=1000):
            for path, size, fingerprint, modified in page:
                yield self._source(base, path, size, fingerprint, modified)

    def iter_object_pages(self, modality: str, *, page_size: int = 1000) -> Iterator[list[ScannedObject]]:
        """All files under ``raw/<modality>/<batch>/``, one listing page at a time (one recursive listing).

        Memory is bounded by a page, so a sensor can process 100,000 objects incrementally. Unsupported
        extensions are included (``documents.is_supported`` tells documents); unsafe keys and files outside a
        batch are not.
        Order: by key within a page; pages in the server's order.
        """
        base = self.path(f"raw/{modality_folder(modality)}")
        loose = 0
        for page in self.backend.file_pages(base, page_size=page_size):
            scanned = []
            for path, size, fingerprint, modified in page:
                relative = path[len(base) + 1 :]
                folder, _, key = relative.partition("/")
                if not key:
                    loose += 1  # directly under raw/<modality>/: in no batch folder
                    continue
                if not is_safe_segment(folder):
                    continue
                scanned.append(
                    ScannedObject(
                        partition_key_for_folder(folder),
                        self._source(f"{base}/{folder}", path, size, fingerprint, modified),
                    )
                )
            yield scanned
        if loose:
            logger.warning(
                "%d files directly under %s belong to no batch folder and are ignored; move them into "
                "raw/%s/<batch>/",
                loose,
                self.uri(base),
                modality_folder(modality),
            )

    def _source(self, base: str, path: str, size: int, fingerprint: str, modified: float) -> SourceObject:
        return SourceObject(
            key=path[len(base) + 1 :],
            uri=self.uri(path),
            path=path,
            size=size,
            fingerprint=fingerprint,
            last_modified=modified,
        )

    def store_error(self, exc: BaseException, path: str) -> DocumentStoreError:
        """A clear error for a failure that concerns the whole store (credentials, bucket, endpoint)."""
        return self.backend.store_error(exc, path)

    # --- reading
    def fetch(self, sources: list[SourceObject]) -> dict[str, bytes | BaseException]:
        """``{path: bytes}`` of the sources, pinned to the listed version (an exception in place of the bytes of
        a file that could not be read: :meth:`read_failure` tells why). S3 reads run concurrently."""
        if not sources:
            return {}
        return {s.path: r for s, r in zip(sources, self.backend.fetch(sources), strict=True)}

    def open(self, source: SourceObject) -> Any:
        """A binary stream of the file, pinned to its listed version (a change mid-read raises)."""
        return self.backend.open(source)

    def check_unchanged(self, handle: Any, source: SourceObject) -> None:
        """After streaming a local file: raise if it changed while it was read (S3 streams pin the ETag)."""
        self.backend.check_unchanged(handle, source)

    def read_failure(self, exc: BaseException, source: SourceObject) -> ReadFailure:
        """Why a file could not be read: its :class:`FailureKind` and a readable reason; raises
        :class:`DocumentStoreError` for store-wide failures (credentials, endpoint)."""
        code = s3_code(exc)
        if isinstance(exc, ChangedError) or code in ("PreconditionFailed", "412") or _is_file_expired(exc):
            when = (
                str(exc)
                if isinstance(exc, ChangedError)
                else ("since it was listed" if code else "while it was read")
            )
            return ReadFailure(
                FailureKind.CHANGED, f"the file changed {when} (it no longer matches fingerprint "
                f"{source.fingerprint}); retry later: the next run reads the new version")
        if isinstance(exc, FileNotFoundError) or code == "NoSuchKey":
            return ReadFailure(
                FailureKind.DELETED,
                "the file was deleted after it was listed; retry later: the next run will not list it")
        if isinstance(exc, UnsafeKeyError):
            return ReadFailure(FailureKind.DOCUMENT, f"refused to read: {exc}")
        if is_auth_failure(exc):
            raise self.store_error(exc, source.path) from None
        if isinstance(exc, IsADirectoryError):
            return ReadFailure(FailureKind.DOCUMENT, "it is a folder, not a file")
        return ReadFailure(FailureKind.UNREADABLE,
                           f"could not be read ({type(exc).__name__}: {first_line(exc)}); retry later")


def is_storage_failure(exc: BaseException) -> bool:
    """Whether an exception comes from talking to the object store (S3 or network), not from our own code."""
    from botocore.exceptions import BotoCoreError

    return isinstance(exc, (OSError, BotoCoreError))


# --- helpers
def modality_folder(modality: str) -> str:
    """``"text"`` or ``"images"`` (``"image"`` accepted): the folder of a modality under ``raw/``."""
    return Modality.of(modality).folder


def _folder(partition_key: str) -> str:
    try:
        return folder_for_partition(partition_key)
    except ValueError as exc:
        raise DocumentStoreError(str(exc)) from None


def is_safe_segment(name: str) -> bool:
    """Whether ``name`` is one path segment that stays where it is (not empty, ``.``, ``..``, no separators)."""
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
    )


def _safe_segment(folder: str) -> str:
    if not is_safe_segment(folder):
        raise DocumentStoreError(f"batch folder {folder!r} is not a single safe path segment")
    return folder


def _is_file_expired(exc: BaseException) -> bool:
    return type(exc).__name__ == "FileExpired"  # s3fs: the object changed between two blocks of a stream
