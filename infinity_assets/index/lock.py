"""The index's writer lock: at most one process writes a LanceDB index at a time, on local disk or on S3.

Lance commits are optimistic, and two writers appending the same new rows at once would both succeed (appends
do not conflict): rows would be duplicated. So every write to the index happens under this lock, whatever
launched it (an automation run, a manual run, a script).

* Local disk: ``fcntl.flock`` on ``<index>/.writer.lock``; the kernel releases it when the holder dies.
* S3: a lease object ``<index>/_writer.lease`` created with a conditional PUT (``If-None-Match: *``), renewed
  in the background with ``If-Match: <its ETag>`` and deleted with ``If-Match`` on release. A lease whose holder
  stopped renewing (killed process) expires after ``ttl`` seconds and is taken over with ``If-Match`` on the
  expired lease's ETag, so two waiters cannot both take it. The store must honour conditional writes (AWS S3
  since 2024, SeaweedFS, MinIO do); one that ignores them is detected at acquisition and refused.
  A holder that cannot renew (store unreachable for ``ttl``) is marked lost; :meth:`WriterLock.check` raises
  before the next commit.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec

#: Seconds a lease lives without renewal; it is renewed every third of it.
DEFAULT_TTL = 60.0


class IndexLockError(Exception):
    """The writer lock of an index could not be taken in time, or was lost; says who holds it."""


class WriterLock:
    """Exclusive writer lock of one index directory (a context manager).

    Example::

        with WriterLock(fs, "bucket/prefix/index", is_s3=True, timeout=600) as lock:
            ...            # write
            lock.check()   # before each commit: raises IndexLockError if the lease was lost
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, index_path: str, *, is_s3: bool, timeout: float = 600.0,
                 ttl: float = DEFAULT_TTL, poll: float = 0.2) -> None:
        self.fs, self.index_path, self.is_s3 = fs, index_path.rstrip("/"), is_s3
        self.timeout, self.ttl, self.poll = timeout, ttl, poll
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.waited = 0.0
        #: Wall-clock (``time.time()``) interval the lock was held: comparable across processes.
        self.held: tuple[float, float] = (0.0, 0.0)
        self._handle: Any = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def lease_path(self) -> str:
        """The lock file (local) or lease object (S3)."""
        return f"{self.index_path}/{'_writer.lease' if self.is_s3 else '.writer.lock'}"

    def __enter__(self) -> WriterLock:
        started = time.monotonic()
        while not (self._try_s3() if self.is_s3 else self._try_local()):
            if time.monotonic() - started > self.timeout:
                raise IndexLockError(
                    f"another writer holds the index lock {self.lease_path} ({self._holder()}) for more than "
                    f"{self.timeout:.0f} s; wait for it to finish, or raise lock_timeout_seconds")
            time.sleep(self.poll)
        self.waited = time.monotonic() - started
        self.held = (time.time(), 0.0)
        if self.is_s3:
            self._renewer = threading.Thread(target=self._renew_loop, name="index-lease", daemon=True)
            self._renewer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.held = (self.held[0], time.time())  # before releasing: the next holder starts after this
        if self.is_s3:
            self._stop.set()
            if self._renewer is not None:
                self._renewer.join()
            if self._lost is None and self._etag is not None:
                try:
                    self.fs.call_s3("delete_object", **self._location(), IfMatch=self._etag)
                except OSError:
                    pass  # taken over or already gone: it expires anyway
        elif self._handle is not None:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def check(self) -> None:
        """Raise :class:`IndexLockError` if the lease was lost (call before committing)."""
        if self._lost is not None:
            raise IndexLockError(f"lost the index lock {self.lease_path}: {self._lost}; nothing more is written")

    # --- local
    def _try_local(self) -> bool:
        import fcntl

        if self._handle is None:
            os.makedirs(self.index_path, exist_ok=True)
            self._handle = open(self.lease_path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(self.owner)
        self._handle.flush()
        return True

    # --- S3
    def _location(self) -> dict[str, str]:
        bucket, key = self.lease_path.split("/", 1)
        return {"Bucket": bucket, "Key": key}

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl}).encode()

    def _try_s3(self) -> bool:
        try:
            answer = self.fs.call_s3("put_object", **self._location(), Body=self._body(), IfNoneMatch="*")
        except OSError as exc:
            if not _precondition_failed(exc):
                raise  # the store itself failed (credentials, endpoint): not a reason to wait
            return self._take_over_if_expired()  # a lease exists
        self._etag = answer["ETag"]
        self._refuse_unconditional_store()
        return True

    def _take_over_if_expired(self) -> bool:
        try:
            current = self.fs.call_s3("get_object", **self._location())
            lease = json.loads(_read_body(self.fs, current))
        except (OSError, ValueError):
            return False  # released meanwhile, or being replaced: try again
        if lease.get("expires_at", 0) > time.time():
            return False
        try:
            answer = self.fs.call_s3("put_object", **self._location(), Body=self._body(), IfMatch=current["ETag"])
        except OSError as exc:
            if not _precondition_failed(exc):
                raise
            return False  # someone else took it over first
        self._etag = answer["ETag"]
        return True

    def _refuse_unconditional_store(self) -> None:
        # A store that ignores If-None-Match would let every writer "create" the lease: check it answers 412.
        try:
            self.fs.call_s3("put_object", **self._location(), Body=self._body(), IfNoneMatch="*")
        except OSError:
            return
        raise IndexLockError(
            f"the S3 store at {self.lease_path} ignores conditional writes (If-None-Match), so a single writer "
            "cannot be guaranteed; use a store that supports them (AWS S3, SeaweedFS, MinIO)")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                answer = self.fs.call_s3("put_object", **self._location(), Body=self._body(), IfMatch=self._etag)
                self._etag = answer["ETag"]
            except OSError as exc:
                self._lost = f"renewing the lease failed ({exc})"
                return

    def _holder(self) -> str:
        try:
            if self.is_s3:
                return json.loads(self.fs.cat_file(self.lease_path)).get("owner", "unknown holder")
            with open(self.lease_path) as handle:
                return handle.read().strip() or "unknown holder"
        except (OSError, ValueError):
            return "unknown holder"


def _precondition_failed(exc: BaseException) -> bool:
    """True for S3's answer to a conditional write that lost (412, or 409 for a concurrent one)."""
    cause = exc.__cause__ or exc.__context__
    code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _read_body(fs: fsspec.AbstractFileSystem, answer: dict[str, Any]) -> bytes:
    """The body of an aiobotocore ``get_object`` answer, read on the filesystem's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with answer["Body"] as body:
            return await body.read()

    return sync(fs.loop, read)
