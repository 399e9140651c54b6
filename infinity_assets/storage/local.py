"""The local-folder backend of the object store: ``os.scandir`` listings and reads pinned by size and mtime.

A file's fingerprint is ``<size>-<mtime_ns>``; a read compares it before and after reading, so a file changed
since it was listed, or while it was read, is a :class:`~.backend.ChangedError` rather than bytes that do not
match their fingerprint. Symbolic links are listed but never followed out of the root.
"""
from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from typing import Any

import fsspec

from infinity_assets.storage.backend import (
    ChangedError,
    DocumentStoreError,
    FileEntry,
    SourceObject,
    UnsafeKeyError,
    first_line,
)


class LocalBackend:
    """A folder on the local filesystem (see :class:`~.backend.StorageBackend` for the methods)."""

    is_s3 = False
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None

    def __init__(self, root: str) -> None:
        self.fs: fsspec.AbstractFileSystem = fsspec.filesystem("file")
        self.root = os.path.abspath(os.path.expanduser(root)).replace(os.sep, "/").rstrip("/") or "/"
        self.root_uri = self.root
        self.stream_block_size = 8 * 2**20  # unused locally: files are streamed by the OS

    def uri(self, path: str) -> str:
        """A local path is its own URI."""
        return path

    def make_dirs(self, path: str) -> None:
        """``os.makedirs(path, exist_ok=True)``."""
        os.makedirs(path, exist_ok=True)

    def list_folders(self, base: str) -> list[str]:
        """The sub-folders of ``base`` (symlinked folders are not followed)."""
        try:
            with os.scandir(base) as entries:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def file_pages(self, base: str, page_size: int) -> Iterator[list[FileEntry]]:
        """Pages of files under ``base``, in key order, without following symlinked folders."""
        page: list[FileEntry] = []
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
                    files.append((entry.path.replace(os.sep, "/"), info.st_size, local_fingerprint(info),
                                  info.st_mtime_ns / 1e9))
            page.extend(reversed(files))
            while len(page) >= page_size:
                yield page[:page_size]
                page = page[page_size:]
        if page:
            yield page

    def fetch(self, sources: list[SourceObject]) -> list[bytes | BaseException]:
        """Each file read whole, one after the other (a local disk gains nothing from concurrent reads)."""
        return [self.read(source) for source in sources]

    def read(self, source: SourceObject) -> bytes | BaseException:
        """The bytes of one file, or the exception that prevented reading them."""
        try:
            with self.open(source) as handle:
                data = handle.read()
                self.check_unchanged(handle, source)
            return data
        except Exception as exc:  # noqa: BLE001 -- reported per document
            return exc

    def open(self, source: SourceObject) -> io.BufferedReader:
        """The open file, refused if it resolves outside the root or changed since it was listed."""
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(source.path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise UnsafeKeyError(
                f"it resolves to {real!r}, outside the store root; symbolic links out of the root are not followed")
        handle = open(source.path, "rb")  # noqa: SIM115 -- returned to the caller's with-block
        try:
            _check_fingerprint(handle, source, "since it was listed")
        except BaseException:
            handle.close()
            raise
        return handle

    def check_unchanged(self, handle: Any, source: SourceObject) -> None:
        """Raise :class:`ChangedError` if the file's size or mtime changed while it was read."""
        _check_fingerprint(handle, source, "while it was read")

    def store_error(self, exc: BaseException, path: str) -> DocumentStoreError:
        """A local folder fails as a whole only when it cannot be read at all: say which and why."""
        return DocumentStoreError(
            f"the local store {self.root_uri!r} cannot be used at {path!r}: {type(exc).__name__}: "
            f"{first_line(exc)}; check the root (INFINITY_ASSETS_ROOT or the resource's root) and its permissions")


def local_fingerprint(info: os.stat_result) -> str:
    """The fingerprint of a local file: ``<size>-<mtime_ns>``."""
    return f"{info.st_size}-{info.st_mtime_ns}"


def _check_fingerprint(handle: Any, source: SourceObject, when: str) -> None:
    if isinstance(handle, io.IOBase) and hasattr(handle, "fileno"):
        info = os.fstat(handle.fileno())
        if source.fingerprint and local_fingerprint(info) != source.fingerprint:
            raise ChangedError(when)
