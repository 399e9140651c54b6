"""The index's writer lock: at most one process writes a LanceDB index at a time, on local disk or on S3.

Lance commits are optimistic, and two writers appending the same new rows at once would both succeed (appends
do not conflict): rows would be duplicated. So every write to the index happens under this lock, whatever
launched it (an automation run, a manual run, a script).

One class per kind of store behind :class:`LockBackend` (:class:`FileLock`, :class:`S3Lease`);
:class:`WriterLock` waits for either and is what writers use.

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
from typing import Any, Protocol

import fsspec

#: Seconds a lease lives without renewal; it is renewed every third of it.
DEFAULT_TTL = 60.0


class IndexLockError(Exception):
    """The writer lock of an index could not be taken in time, or was lost; says who holds it."""


class LockBackend(Protocol):
    """How one kind of store holds the writer lock: try to take it, keep it, release it, say who holds it."""

    path: str
    #: Why the lock was lost while held (``None``: still held).
    lost: str | None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or expired); False if someone else holds it."""

    def on_acquired(self) -> None:
        """Called once the lock is taken: start whatever keeps it (S3: the renewal thread)."""

    def release(self) -> None:
        """Give the lock up (a lock taken over meanwhile is left to its new holder)."""

    def holder(self) -> str:
        """Who holds the lock now, as recorded by the holder (``unknown holder`` if unreadable)."""


class FileLock:
    """The local lock: ``fcntl.flock`` on ``<index>/.writer.lock``, which records the holder's name."""

    def __init__(self, index_path: str, owner: str) -> None:
        self.path, self.owner, self.lost = f"{index_path}/.writer.lock", owner, None
        self._index_path = index_path
        self._handle: Any = None

    def try_acquire(self) -> bool:
        """A non-blocking exclusive ``flock``; the kernel releases it if the holder dies."""
        import fcntl

        if self._handle is None:
            os.makedirs(self._index_path, exist_ok=True)
            self._handle = open(self.path, "a+")  # noqa: SIM115 -- held until release()
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(self.owner)
        self._handle.flush()
        return True

    def on_acquired(self) -> None:
        """Nothing keeps a flock alive: the open file does."""

    def release(self) -> None:
        """Unlock and close the lock file."""
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def holder(self) -> str:
        """The name the holder wrote into the lock file."""
        try:
            with open(self.path) as handle:
                return handle.read().strip() or "unknown holder"
        except OSError:
            return "unknown holder"


class S3Lease:
    """The S3 lock: a lease object ``<index>/_writer.lease`` taken, renewed and deleted with conditional PUTs.

    ``fs`` is an s3fs filesystem; the module docstring describes the protocol.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, index_path: str, owner: str, ttl: float) -> None:
        self.fs, self.path, self.owner, self.ttl = fs, f"{index_path}/_writer.lease", owner, ttl
        self.lost: str | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """Create the lease (``If-None-Match: *``), or take over an expired one."""
        try:
            answer = self.fs.call_s3("put_object", **self._location(), Body=self._body(), IfNoneMatch="*")
        except OSError as exc:
            if not _precondition_failed(exc):
                raise  # the store itself failed (credentials, endpoint): not a reason to wait
            return self._take_over_if_expired()  # a lease exists
        self._etag = answer["ETag"]
        self._refuse_unconditional_store()
        return True

    def on_acquired(self) -> None:
        """Start renewing the lease every third of its ``ttl``."""
        self._renewer = threading.Thread(target=self._renew_loop, name="index-lease", daemon=True)
        self._renewer.start()

    def stop_renewing(self) -> None:
        """Stop the renewal thread (the lease then expires after ``ttl`` unless released)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (``If-Match`` on its ETag)."""
        self.stop_renewing()
        if self.lost is None and self._etag is not None:
            try:
                self.fs.call_s3("delete_object", **self._location(), IfMatch=self._etag)
            except OSError:
                pass  # taken over or already gone: it expires anyway

    def holder(self) -> str:
        """The owner recorded in the lease object."""
        try:
            return json.loads(self.fs.cat_file(self.path)).get("owner", "unknown holder")
        except (OSError, ValueError):
            return "unknown holder"

    def _location(self) -> dict[str, str]:
        bucket, key = self.path.split("/", 1)
        return {"Bucket": bucket, "Key": key}

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl}).encode()

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
            f"the S3 store at {self.path} ignores conditional writes (If-None-Match), so a single writer "
            "cannot be guaranteed; use a store that supports them (AWS S3, SeaweedFS, MinIO)")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                answer = self.fs.call_s3("put_object", **self._location(), Body=self._body(), IfMatch=self._etag)
                self._etag = answer["ETag"]
            except OSError as exc:
                self.lost = f"renewing the lease failed ({exc})"
                return


class WriterLock:
    """Exclusive writer lock of one index directory (a context manager), on the store's :class:`LockBackend`.

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
        self.backend: LockBackend = (S3Lease(fs, self.index_path, self.owner, ttl) if is_s3
                                     else FileLock(self.index_path, self.owner))
        self.waited = 0.0
        #: Wall-clock (``time.time()``) interval the lock was held: comparable across processes.
        self.held: tuple[float, float] = (0.0, 0.0)

    @property
    def lease_path(self) -> str:
        """The lock file (local) or lease object (S3)."""
        return self.backend.path

    def __enter__(self) -> WriterLock:
        started = time.monotonic()
        while not self.backend.try_acquire():
            if time.monotonic() - started > self.timeout:
                raise IndexLockError(
                    f"another writer holds the index lock {self.lease_path} ({self.backend.holder()}) for more "
                    f"than {self.timeout:.0f} s; wait for it to finish, or raise lock_timeout_seconds")
            time.sleep(self.poll)
        self.waited = time.monotonic() - started
        self.held = (time.time(), 0.0)
        self.backend.on_acquired()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.held = (self.held[0], time.time())  # before releasing: the next holder starts after this
        self.backend.release()

    def check(self) -> None:
        """Raise :class:`IndexLockError` if the lease was lost (call before committing)."""
        if self.backend.lost is not None:
            raise IndexLockError(
                f"lost the index lock {self.lease_path}: {self.backend.lost}; nothing more is written")


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
