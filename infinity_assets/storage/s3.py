"""The S3 backend of the object store (s3fs): raw ``ListObjectsV2`` listings, reads pinned by ETag, S3 errors.

* Listings never use s3fs's listing cache (it misses new objects): they page ``ListObjectsV2`` directly, with
  a session that leaves timestamps as strings (:func:`_raw_timestamp_session`).
* ``GET`` carries ``If-Match: <listed ETag>``; a stream is an s3fs file, which pins the ETag on every block, so
  an overwrite mid-read raises instead of mixing two versions. Reads of a chunk run concurrently (at most
  ``read_concurrency``), transient errors are retried (:data:`READ_RETRY_DELAYS`).
* Failures that concern the whole store (credentials, bucket, endpoint) become one
  :class:`~.backend.DocumentStoreError` naming the setting to fix; the secret never appears in it.
"""
from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import fsspec

from infinity_assets.storage.backend import ChangedError, DocumentStoreError, FileEntry, SourceObject, first_line

#: Seconds between attempts to read one S3 object when the server answers with a transient error.
READ_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)

_AUTH_CODES = frozenset({
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403", "ExpiredToken", "InvalidToken",
    "AuthorizationHeaderMalformed", "RequestTimeTooSkewed",
})
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504"})


class S3Backend:
    """A bucket and prefix on S3 or an S3-compatible server (see :class:`~.backend.StorageBackend`).

    Settings come from the arguments, else ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ENDPOINT_URL``, ``AWS_REGION`` (default ``us-east-1``).
    """

    is_s3 = True

    def __init__(self, root: str, *, endpoint_url: str | None, key: str | None, secret: str | None,
                 region: str | None, read_concurrency: int) -> None:
        import s3fs

        self.root = root[len("s3://"):].strip("/")
        self.bucket: str | None = self.root.split("/", 1)[0]
        if not self.bucket:
            raise DocumentStoreError(f"root {root!r} names no bucket; use s3://<bucket>[/<prefix>]")
        self.root_uri = f"s3://{self.root}"
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.region: str | None = region or os.environ.get("AWS_REGION") or "us-east-1"
        self.read_concurrency = read_concurrency
        #: Bytes fetched per request while streaming a file (see :meth:`open`).
        self.stream_block_size = 8 * 2**20
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
        self.fs: fsspec.AbstractFileSystem = s3fs.S3FileSystem(max_concurrency=read_concurrency, **options)
        self._lister = s3fs.S3FileSystem(session=_raw_timestamp_session(), **options)

    def uri(self, path: str) -> str:
        """``s3://<path>``."""
        return f"s3://{path}"

    def make_dirs(self, path: str) -> None:
        """S3 has no folders: nothing to create."""

    def list_folders(self, base: str) -> list[str]:
        """The common prefixes directly under ``base`` (a delimited listing)."""
        return [prefix["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                for page in self._pages(base + "/", delimiter="/")
                for prefix in page.get("CommonPrefixes", [])]

    def file_pages(self, base: str, page_size: int) -> Iterator[list[FileEntry]]:
        """The objects under ``base/`` a listing page at a time (folder markers left out), by key."""
        for page in self._pages(base + "/", delimiter="", page_size=page_size):
            files = [(f"{self.bucket}/{obj['Key']}", int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'),
                      _timestamp(obj.get("LastModified")))
                     for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
            files.sort()
            yield files

    def _pages(self, prefix_path: str, *, delimiter: str, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Raw ``ListObjectsV2`` pages under ``bucket/prefix`` -- no s3fs listing cache involved."""
        bucket, _, prefix = prefix_path.partition("/")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": delimiter,
                                  "MaxKeys": max(1, min(page_size, 1000))}
        while True:
            try:
                page = self._lister.call_s3("list_objects_v2", **kwargs)
            except Exception as exc:  # noqa: BLE001 -- every failure becomes a DocumentStoreError naming the setting
                raise self.store_error(exc, prefix_path) from None
            yield page
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def fetch(self, sources: list[SourceObject]) -> list[bytes | BaseException]:
        """The objects' bytes, fetched concurrently with ``If-Match`` on their listed ETags."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, self._fetch, sources)

    async def _fetch(self, sources: list[SourceObject]) -> list[bytes | BaseException]:
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

    def open(self, source: SourceObject) -> Any:
        """An s3fs file, which pins the ETag it saw at open on every block it fetches."""
        handle = self.fs.open(source.path, "rb", block_size=self.stream_block_size)
        etag = str(handle.details.get("ETag", "")).strip('"')
        if source.fingerprint and etag != source.fingerprint:
            handle.close()
            raise ChangedError("since it was listed")
        return handle

    def check_unchanged(self, handle: Any, source: SourceObject) -> None:
        """Nothing to do: the stream already pinned the ETag on every block."""

    def store_error(self, exc: BaseException, path: str) -> DocumentStoreError:
        """The S3 failure explained: missing bucket, authentication, unreachable endpoint, or another error."""
        code = s3_code(exc)
        where = f"bucket {self.bucket!r} at endpoint {self.endpoint_url or 'AWS S3 (no AWS_ENDPOINT_URL)'}"
        if code == "NoSuchBucket":
            return DocumentStoreError(
                f"{where}: the bucket does not exist; create it or fix the root "
                f"{self.root_uri!r} (INFINITY_ASSETS_ROOT or the resource's root)")
        if isinstance(exc, PermissionError) or code in _AUTH_CODES:
            return DocumentStoreError(
                f"S3 authentication failed or access was denied for {where} ({code or type(exc).__name__}: "
                f"{first_line(exc)}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the resource's "
                "access_key_id / secret_access_key) and that this identity may list and read the bucket")
        if code is None and ("Connect" in type(exc).__name__ or isinstance(exc, (ConnectionError, TimeoutError))):
            return DocumentStoreError(
                f"cannot reach the S3 endpoint {self.endpoint_url or 'of AWS'} (bucket {self.bucket!r}): "
                f"{type(exc).__name__}: {first_line(exc)}; check AWS_ENDPOINT_URL (the resource's endpoint_url) "
                "and that the server is running")
        return DocumentStoreError(
            f"S3 request for {self.uri(path)!r} failed at {where}: {code or type(exc).__name__}: "
            f"{first_line(exc)}; check the root URL, AWS_ENDPOINT_URL and AWS_REGION")


def s3_code(exc: BaseException) -> str | None:
    """The S3 error code (``NoSuchBucket``, ``PreconditionFailed``...) behind an s3fs/botocore exception."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code") or "") or None
    return None


def is_auth_failure(exc: BaseException) -> bool:
    """Wrong key/secret (store-wide), as opposed to one object's ``AccessDenied`` (reported per document)."""
    return s3_code(exc) in _AUTH_CODES - {"AccessDenied"}


def is_precondition_failure(exc: BaseException) -> bool:
    """S3's answer to a conditional request that lost: ``If-Match`` on a changed object (412)."""
    return s3_code(exc) in ("PreconditionFailed", "412")


def _is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the S3 server is busy, restarting or briefly unreachable."""
    code = s3_code(exc)
    if code is not None:
        return code in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, TimeoutError)) or "Connect" in type(exc).__name__ or (
        isinstance(exc, OSError) and "internal error" in str(exc).lower())


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
