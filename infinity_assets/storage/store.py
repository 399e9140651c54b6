"""Object storage under one root (a local folder or ``s3://bucket/prefix``): list, read and pin files; no formats.

Layout under the root::

    raw/<modality>/<batch>/...     the documents' source files (formats: infinity_assets.storage.formats)
    embeddings/<modality>/<batch>.parquet   the artifacts (artifacts.py)

A batch folder is a partition (keys.py maps folder names to partition keys); nested folders inside it belong
to it. Files directly under ``raw/<modality>/`` belong to no batch and are ignored (with a warning).

* :class:`ObjectStore` -- ``fs`` (the fsspec filesystem), ``path(key)`` / ``uri(path)`` / ``uri_for(key)``,
  ``artifact_path(modality, partition)``, ``list_partitions(modality)``, ``iter_object_pages(modality)`` (one
  recursive listing of a whole modality, page by page), ``list_files(modality, partition)``, ``fetch(sources)``
  (bytes, pinned to the listed version), ``open(source)`` (a stream, pinned too), ``read_error(exc, source)``.
* :class:`SourceObject` -- one file: ``key`` (relative to its batch folder), ``uri``, ``path``, ``size``,
  ``fingerprint``, ``last_modified``. The fingerprint is the ETag on S3, ``<size>-<mtime_ns>`` locally.

Consistency: a read is pinned to the listed version. On S3 ``GET`` carries ``If-Match: <listed ETag>`` and a
stream is an s3fs file, which pins the ETag on every block; locally the file's size and mtime_ns are compared
before and after reading. A file changed since it was listed, or while it was read, becomes the failure
"changed ... retry later" (the next run reads the new version) -- never a crash, never a mismatched
fingerprint. Listings never use s3fs's listing cache (it misses new objects): they page ``ListObjectsV2``
directly. Transient S3 errors are retried (:data:`READ_RETRY_DELAYS`).

Safety: ``path()`` refuses keys that leave the root (``..``, absolute paths, NUL); listed keys with
``.``/``..`` or empty segments are skipped; local symlinks are not followed out of the root. The S3 secret
never appears in ``repr``, logs or error messages.
"""
from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec

from infinity_assets.storage.keys import folder_for_partition, partition_key_for_folder

logger = logging.getLogger(__name__)

MODALITIES = ("text", "images")


class DocumentStoreError(Exception):
    """The store cannot be used: bad credentials, missing bucket, unreachable endpoint, or an unsafe key."""


# --- records
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
    safety; :class:`infinity_assets.storage.documents.DocumentStore` adds the document formats.
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
        self.is_s3 = root.startswith("s3://")
        self.read_concurrency = max(1, read_concurrency)
        #: Bytes fetched per request while streaming a file from S3 (see :meth:`open`).
        self.stream_block_size = 8 * 2**20
        if self.is_s3:
            import s3fs

            self.root = root[len("s3://") :].strip("/")
            self.bucket = self.root.split("/", 1)[0]
            if not self.bucket:
                raise DocumentStoreError(f"root {root!r} names no bucket; use s3://<bucket>[/<prefix>]")
            self.root_uri = f"s3://{self.root}"
            self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
            self.region = region or os.environ.get("AWS_REGION") or "us-east-1"
            client_kwargs: dict[str, Any] = {"region_name": self.region}
            if self.endpoint_url:
                client_kwargs["endpoint_url"] = self.endpoint_url
            options = {
                "key": key or os.environ.get("AWS_ACCESS_KEY_ID") or None,
                "secret": secret or os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
                "client_kwargs": client_kwargs,
                "use_listings_cache": False,
                "skip_instance_cache": True,
            }
            # No listing cache, no shared instance: s3fs's caches return stale listings (new objects missing).
            self.fs: fsspec.AbstractFileSystem = s3fs.S3FileSystem(
                max_concurrency=self.read_concurrency, **options
            )
            self._lister = s3fs.S3FileSystem(session=_raw_timestamp_session(), **options)
        else:
            self.bucket = None
            self.endpoint_url = None
            self.region = None
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(os.path.expanduser(root)).replace(os.sep, "/").rstrip("/") or "/"
            self.root_uri = self.root

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"DocumentStore({self.root_uri!r}{endpoint})"

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
        return f"s3://{path}" if self.is_s3 else path

    def uri_for(self, relative: str) -> str:
        """The full URI of a key relative to the root (``uri(path(relative))``)."""
        return self.uri(self.path(relative))

    def artifact_path(self, modality: str, partition_key: str) -> str:
        """Where the artifact of a partition lives: ``embeddings/<modality>/<batch folder>.parquet``."""
        folder = _safe_segment(_folder(partition_key))
        return self.path(f"embeddings/{modality_folder(modality)}/{folder}.parquet")

    def ensure_artifact_dir(self, modality: str) -> None:
        """Create the artifact folder on a local root (S3 has no folders)."""
        if not self.is_s3:
            os.makedirs(self.path(f"embeddings/{modality_folder(modality)}"), exist_ok=True)

    # --- listing
    def list_partitions(self, modality: str) -> list[str]:
        """The partition keys of the batch folders under ``raw/<modality>/``, sorted (a fresh listing)."""
        base = self.path(f"raw/{modality_folder(modality)}")
        if self.is_s3:
            folders = [
                prefix
                for page in self._s3_pages(base + "/", delimiter="/")
                for prefix in page.get("CommonPrefixes", [])
            ]
            names = [entry["Prefix"].rstrip("/").rsplit("/", 1)[-1] for entry in folders]
        else:
            try:
                with os.scandir(base) as entries:
                    names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                return []
        return sorted(partition_key_for_folder(name) for name in names if is_safe_segment(name))

    def list_files(self, modality: str, partition_key: str) -> Iterator[SourceObject]:
        """Every file of one batch folder (recursive, in no particular order), whatever its extension."""
        folder = _safe_segment(_folder(partition_key))
        base = self.path(f"raw/{modality_folder(modality)}/{folder}")
        for page in self._file_pages(base, page_size=1000):
            for path, size, fingerprint, modified in page:
                yield self._source(base, path, size, fingerprint, modified)

    def iter_object_pages(self, modality: str, *, page_size: int = 1000) -> Iterator[list[ScannedObject]]:
        """All files under ``raw/<modality>/<batch>/``, one listing page at a time (one recursive listing).

        Memory is bounded by a page, so a sensor can process 100,000 objects incrementally. Unsupported
        extensions are included (``documents.is_supported`` tells documents); unsafe keys and files outside a batch are not.
        Order: by key within a page; pages in the server's order.
        """
        base = self.path(f"raw/{modality_folder(modality)}")
        loose = 0
        for page in self._file_pages(base, page_size=page_size):
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

    def _file_pages(self, base: str, page_size: int) -> Iterator[list[tuple[str, int, str, float]]]:
        """Pages of ``(path, size, fingerprint, last_modified)`` of every file under the folder ``base``."""
        if self.is_s3:
            for page in self._s3_pages(base + "/", delimiter="", page_size=page_size):
                files = []
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # a folder marker object, not a file
                    files.append(
                        (
                            f"{self.bucket}/{obj['Key']}",
                            int(obj.get("Size", 0)),
                            str(obj.get("ETag", "")).strip('"'),
                            _timestamp(obj.get("LastModified")),
                        )
                    )
                files.sort()
                yield files
        else:
            yield from _local_pages(base, page_size)

    def _s3_pages(
        self, prefix_path: str, *, delimiter: str, page_size: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Raw ``ListObjectsV2`` pages under ``bucket/prefix`` -- no s3fs listing cache involved."""
        bucket, _, prefix = prefix_path.partition("/")
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Prefix": prefix,
            "Delimiter": delimiter,
            "MaxKeys": max(1, min(page_size, 1000)),
        }
        while True:
            page = self._s3_call("list_objects_v2", prefix_path, **kwargs)
            yield page
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _s3_call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._lister.call_s3(method, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- every failure becomes a DocumentStoreError naming the setting
            raise self.store_error(exc, path) from None

    def store_error(self, exc: BaseException, path: str) -> DocumentStoreError:
        """A clear error for an S3 failure that concerns the whole store (credentials, bucket, endpoint)."""
        code = _s3_code(exc)
        where = f"bucket {self.bucket!r} at endpoint {self.endpoint_url or 'AWS S3 (no AWS_ENDPOINT_URL)'}"
        if code == "NoSuchBucket":
            return DocumentStoreError(
                f"{where}: the bucket does not exist; create it or fix the root "
                f"{self.root_uri!r} (INFINITY_ASSETS_ROOT or the resource's root)"
            )
        if isinstance(exc, PermissionError) or code in _AUTH_CODES:
            return DocumentStoreError(
                f"S3 authentication failed or access was denied for {where} ({code or type(exc).__name__}: "
                f"{_first_line(exc)}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the resource's "
                "access_key_id / secret_access_key) and that this identity may list and read the bucket"
            )
        if code is None and (
            "Connect" in type(exc).__name__ or isinstance(exc, (ConnectionError, TimeoutError))
        ):
            return DocumentStoreError(
                f"cannot reach the S3 endpoint {self.endpoint_url or 'of AWS'} (bucket {self.bucket!r}): "
                f"{type(exc).__name__}: {_first_line(exc)}; check AWS_ENDPOINT_URL (the resource's "
                "endpoint_url) "
                "and that the server is running"
            )
        return DocumentStoreError(
            f"S3 request for {self.uri(path)!r} failed at {where}: {code or type(exc).__name__}: "
            f"{_first_line(exc)}; check the root URL, AWS_ENDPOINT_URL and AWS_REGION"
        )

    # --- reading
    # --- reading
    def fetch(self, sources: list[SourceObject]) -> dict[str, bytes | BaseException]:
        """``{path: bytes}`` of the sources, pinned to the listed version (an exception in place of the bytes of
        a file that could not be read: :meth:`read_error` tells why). S3 reads run concurrently."""
        if not sources:
            return {}
        if not self.is_s3:
            return {s.path: self._read_local(s) for s in sources}
        from fsspec.asyn import sync

        results = sync(self.fs.loop, self._fetch_s3, sources)
        return {s.path: r for s, r in zip(sources, results, strict=True)}

    async def _fetch_s3(self, sources: list[SourceObject]) -> list[bytes | BaseException]:
        gate = asyncio.Semaphore(self.read_concurrency)

        async def one(source: SourceObject) -> bytes | BaseException:
            bucket, _, key = source.path.partition("/")
            # If-Match: the bytes are those of the listed version, so the stored fingerprint matches them.
            pin = {"IfMatch": f'"{source.fingerprint}"'} if source.fingerprint else {}
            async with gate:
                for delay in (*READ_RETRY_DELAYS, None):
                    try:
                        response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **pin)
                        try:
                            return await response["Body"].read()
                        finally:
                            response["Body"].close()
                    except Exception as exc:  # noqa: BLE001 -- reported per document
                        if delay is None or not _is_transient(exc):
                            return exc
                        await asyncio.sleep(delay)
            raise AssertionError("unreachable")

        return await asyncio.gather(*(one(s) for s in sources))

    def _read_local(self, source: SourceObject) -> bytes | BaseException:
        try:
            with self._open_local(source) as handle:
                data = handle.read()
                _check_unchanged(handle, source, "while it was read")
            return data
        except Exception as exc:  # noqa: BLE001 -- reported per document
            return exc

    def _open_local(self, source: SourceObject) -> io.BufferedReader:
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(source.path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise _Unsafe(
                f"it resolves to {real!r}, outside the store root; symbolic links out of the root "
                "are not followed"
            )
        handle = open(source.path, "rb")  # noqa: SIM115 -- returned to the caller's with-block
        try:
            _check_unchanged(handle, source, "since it was listed")
        except BaseException:
            handle.close()
            raise
        return handle

    def open(self, source: SourceObject) -> Any:
        """A binary stream of the file, pinned to its listed version (a change mid-read raises)."""
        if not self.is_s3:
            return self._open_local(source)
        # An s3fs file pins the ETag it saw at open on every block it fetches: an overwrite mid-read raises.
        handle = self.fs.open(source.path, "rb", block_size=self.stream_block_size)
        etag = str(handle.details.get("ETag", "")).strip('"')
        if source.fingerprint and etag != source.fingerprint:
            handle.close()
            raise _Changed("since it was listed")
        return handle

    def check_unchanged(self, handle: Any, source: SourceObject) -> None:
        """After streaming a local file: raise if it changed while it was read (S3 streams pin the ETag)."""
        if not self.is_s3:
            _check_unchanged(handle, source, "while it was read")

    def read_error(self, exc: BaseException, source: SourceObject) -> str:
        """The readable reason a file could not be read; raises :class:`DocumentStoreError` for store-wide
        failures (credentials, endpoint)."""
        code = _s3_code(exc)
        if isinstance(exc, _Changed) or code in ("PreconditionFailed", "412") or _is_file_expired(exc):
            when = (
                str(exc)
                if isinstance(exc, _Changed)
                else ("since it was listed" if code else "while it was read")
            )
            return (
                f"the file changed {when} (it no longer matches fingerprint {source.fingerprint}); "
                "retry later: the next run reads the new version"
            )
        if isinstance(exc, FileNotFoundError) or code == "NoSuchKey":
            return "the file was deleted after it was listed; retry later: the next run will not list it"
        if isinstance(exc, _Unsafe):
            return f"refused to read: {exc}"
        if is_auth_failure(exc):
            raise self.store_error(exc, source.path) from None
        if isinstance(exc, IsADirectoryError):
            return "it is a folder, not a file"
        return f"could not be read ({type(exc).__name__}: {_first_line(exc)}); retry later"


def is_storage_failure(exc: BaseException) -> bool:
    """Whether an exception comes from talking to the object store (S3 or network), not from our own code."""
    from botocore.exceptions import BotoCoreError

    return isinstance(exc, (OSError, BotoCoreError))


def is_retryable(error: str) -> bool:
    """Whether a document failure is transient (the file changed, vanished or could not be read: "retry
    later"), as opposed to a problem of the document itself that only a new version of it can fix."""
    return "; retry later" in error


# --- helpers
_AUTH_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "403",
        "ExpiredToken",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
        "RequestTimeTooSkewed",
    }
)


_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504"}
)

#: Seconds between attempts to read one S3 object when the server answers with a transient error.
READ_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


class _Changed(Exception):
    """A local or S3 file no longer matches its listed fingerprint."""


class _Unsafe(Exception):
    """A key that would make the store read outside its root."""


def _check_unchanged(handle: Any, source: SourceObject, when: str) -> None:
    """Raise :class:`_Changed` if an open local file's size/mtime_ns differ from the listed fingerprint."""
    if isinstance(handle, io.IOBase) and hasattr(handle, "fileno"):
        info = os.fstat(handle.fileno())
        if source.fingerprint and _local_fingerprint(info) != source.fingerprint:
            raise _Changed(when)


def _local_fingerprint(info: os.stat_result) -> str:
    return f"{info.st_size}-{info.st_mtime_ns}"


def _local_pages(base: str, page_size: int) -> Iterator[list[tuple[str, int, str, float]]]:
    """Pages of files under a local folder, in key order, without following symlinked folders."""
    page: list[tuple[str, int, str, float]] = []
    stack = [base]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scanned:
                entries = list(scanned)
        except (FileNotFoundError, NotADirectoryError):
            continue
        # Sorting names with "/" appended to folders gives the same order as sorting full keys (S3's order).
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, reverse=True)
        files = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
                continue
            try:
                info = entry.stat()  # follows a symlinked file; reading checks it stays inside the root
            except OSError:
                continue  # a dangling symlink or a file deleted since the folder was read
            if stat.S_ISREG(info.st_mode):
                files.append(
                    (
                        entry.path.replace(os.sep, "/"),
                        info.st_size,
                        _local_fingerprint(info),
                        info.st_mtime_ns / 1e9,
                    )
                )
        page.extend(reversed(files))
        while len(page) >= page_size:
            yield page[:page_size]
            page = page[page_size:]
    if page:
        yield page


def modality_folder(modality: str) -> str:
    """``"text"`` or ``"images"`` (``"image"`` accepted): the folder of a modality under ``raw/``."""
    if modality in ("image", "images"):
        return "images"
    if modality == "text":
        return "text"
    raise ValueError(f"modality must be 'text' or 'images', got {modality!r}")


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


def _raw_timestamp_session() -> Any:
    """An aiobotocore session that leaves timestamps as strings.

    botocore's date parsing is ~40% of the CPU time of a large listing, while the objects of one upload share
    a handful of distinct LastModified values (parsed once each by :func:`_iso_timestamp`).
    """
    from aiobotocore.session import AioSession

    session = AioSession()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return session


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return _iso_timestamp(value)
    return float(value or 0)


@functools.lru_cache(maxsize=4096)
def _iso_timestamp(value: str) -> float:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # Python 3.10 has no "Z"
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code (``NoSuchBucket``, ``PreconditionFailed``...) behind an s3fs/botocore exception."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code") or "") or None
    return None


def _is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the S3 server is busy, restarting or briefly unreachable."""
    code = _s3_code(exc)
    if code is not None:
        return code in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, TimeoutError)) or "Connect" in type(exc).__name__ or (
        isinstance(exc, OSError) and "internal error" in str(exc).lower())


def is_auth_failure(exc: BaseException) -> bool:
    """Wrong key/secret (store-wide), as opposed to one object's ``AccessDenied`` (reported per document)."""
    return _s3_code(exc) in _AUTH_CODES - {"AccessDenied"}


def _is_file_expired(exc: BaseException) -> bool:
    return type(exc).__name__ == "FileExpired"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]
