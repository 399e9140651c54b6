"""A local copy of the columns stages 2 and 3 read per candidate (``bits``: the pooled tokens' 1-bit codes;
``pooled``: the same tokens in int8) of one pinned table version, read per query by position from flat
memory-mapped files, and of the columns a hit returns (``carry``: ids, page, text). Stage 3 then does not go
through the table, and the rerank reads only its rows' ``embedding`` from it: on object storage only those
cross the network per query, and on a local disk a read skips Lance's per-call cost. Given ``originals`` (the
table's dtype of them), the copy holds ``embedding`` too (the rerank's unit vectors: ~265 KB per ColPali page
in float16, the size of the table itself), copied once the rest is ready (so stages 2-3 do not wait for it),
and from then on the rerank reads it from here: no query goes through the table. By default (``auto``) it does
so for a table on object storage, where the rerank's rows would otherwise cross the network per query, and
for a local table small enough that the whole copy, ``embedding`` with it, is read into the page cache (then
the rerank gathers its rows from memory instead of through Lance's per-call cost); in either case only when
the copy leaves :data:`RESERVE_SHARE` of its disk free (:func:`originals_fit`; the copies of other tables
still being made, by any process, counted as used). A reader reads stage 2's codes from here too
(unless ``hold_bits=True``): they stay in the OS page cache, shared by every process that reads the copy,
instead of each reader's memory: the pages a read maps are let go when it returns. No copy is made that
would leave less than :data:`RESERVE_SHARE` of its disk free (:func:`disk_room`): the search then reads the
table.

The copy is kept per fragment, in ``<directory>/<table>/<fragment>/``: ``bits.u1`` and ``pooled.i8`` (every
copied row's pooled tokens, ``(tokens, hidden_dim / 8)`` uint8 and ``(tokens, hidden_dim)`` int8), or, in a
folder of its own per fragment, ``embedding.f16`` or ``embedding.f32`` (every token, in the table's
``originals`` dtype); in each folder ``addresses.npy`` (their row addresses, ascending),
``<column>.offsets.npy`` per column (row ``j`` owns tokens ``offsets[j]:offsets[j + 1]`` of each file;
``bits`` leaves out the table's background tokens, :mod:`~infinity_assets.index.background`) and
``hits.arrow`` (the carried columns, one row per copied row, an Arrow IPC file read memory-mapped). Once made,
the column files are read through once, into the OS page cache, while they take at most :data:`WARM_SHARE` of
the memory available (``bits`` first, ``embedding`` last). A fragment's data files never change and its rows
are only ever deleted, so a copy named after the fragment's data files serves every later version of the
table: a sync that appends a fragment or deletes rows copies only the new fragments. Each version maps its
live rows to the copied ones through their row addresses (read with the version, no column data). Copies are
written to a temporary folder and renamed (a concurrent reader of the same table keeps whichever lands first);
folders no version being copied uses any more are removed (a reader that still has their files open keeps
reading them), and so are the ``embedding`` folders when a reader of the table copies without them. While a
copy is being made, a file in ``<directory>/.promises/`` says what it adds to the disk (:class:`_Promise`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from infinity_assets.client.allocator import release_free_memory
from infinity_assets.index.rows import take_runs, token_rows
from infinity_assets.index.schema import column_bytes

logger = logging.getLogger(__name__)

#: Where a long-lived reader (the search service) keeps its copies: a directory, or ``off``.
ENV = "INFINITY_ASSETS_INDEX_LOCAL_COPY"
DEFAULT_DIRECTORY = "~/.cache/infinity-assets/index"
#: The copied columns: file name, item dtype, and items per token as a multiple of ``hidden_dim`` (numerator,
#: denominator).
COLUMNS = {"bits": ("bits.u1", "uint8", 1, 8), "pooled": ("pooled.i8", "int8", 1, 1)}
#: ``embedding``, copied too when a reader asks (``copy_originals``), by the table's ``originals`` dtype.
ORIGINALS = {"float16": ("embedding.f16", "float16", 1, 1), "float32": ("embedding.f32", "float32", 1, 1)}
#: Whether a long-lived reader copies ``embedding`` too: ``auto`` (unset: :func:`originals_fit` decides),
#: ``on`` (or ``1``, ``true``, ``yes``) or ``off`` (or ``0``, ``false``, ``no``).
ORIGINALS_ENV = "INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS"
#: The share of its disk that an ``auto`` copy of ``embedding`` leaves free (else it is not copied).
RESERVE_SHARE = 0.05
#: Raised when the files of a copy change meaning (a copy of another format is made again, not misread).
FORMAT = 2
#: The file that holds the carried columns.
HITS_FILE = "hits.arrow"
#: Rows per batch of the scan that writes a fragment's copy (a sixteenth of them when it copies ``embedding``:
#: 128 ColPali pages are ~34 MB).
COPY_BATCH_ROWS = 2048
#: Batches that scan reads ahead when it copies ``embedding`` (Lance's default, 16, is ~540 MB of them).
COPY_READAHEAD = 2
#: The copy's column files are read once into the OS page cache when made (``bits``, ``pooled``,
#: ``embedding``), as long as together they take at most this share of the memory available: per-query reads then come from
#: memory, not from the disk.
WARM_SHARE = 0.5
#: Bytes per read of that read-ahead.
WARM_CHUNK_BYTES = 8 << 20


def directory_from_env() -> str | None:
    """``$INFINITY_ASSETS_INDEX_LOCAL_COPY`` (read now): the copies' directory, None for ``off``; unset:
    :data:`DEFAULT_DIRECTORY`."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() == "off":
        return None
    return str(Path(value or DEFAULT_DIRECTORY).expanduser())


def originals_from_env() -> bool | str:
    """``$INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS`` (read now): ``"auto"`` when unset or ``auto``, True for
    ``on``, ``1``, ``true`` or ``yes``, False for ``off``, ``0``, ``false``, ``no``; ``ValueError`` naming the
    variable otherwise."""
    value = os.environ.get(ORIGINALS_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"${ORIGINALS_ENV}={value!r}: set it to auto (the default: the local copy holds the "
                     "rerank's rows too when the table is on object storage and they fit), on (always; about "
                     "the size of the index table) or off")


#: The folder, beside the tables' folders, where each copy being made says what it adds to the disk.
PROMISES = ".promises"


@contextmanager
def _deciding(directory: Path) -> Iterator[Path]:
    """The promises' folder under ``directory``, held (an ``flock`` on its ``.lock``) for one decision at a
    time by any thread of any process: each decision counts the copies decided before it."""
    folder = directory / PROMISES
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield folder


class _Promise:
    """What a copy being made adds to its disk: a file in the promises' folder that holds an ``flock`` while
    the copy lasts. Readers of other tables, in this process or another, count it as used until it is given
    back (:meth:`release`) or its process dies (the kernel drops the lock, and the next decision removes the
    file). Readers of the same table (two versions) write the same files, so they do not count it."""

    def __init__(self, folder: Path, table: str, disk: int, size: int) -> None:
        self.path = folder / f"{uuid.uuid4().hex}.json"
        self._file = open(self.path, "x")  # noqa: SIM115 -- kept open while the copy lasts: it holds the lock
        fcntl.flock(self._file, fcntl.LOCK_EX)
        self._file.write(json.dumps({"table": table, "disk": disk, "bytes": size}))
        self._file.flush()

    def release(self) -> None:
        """Give the promise back: the copy is on the disk, or it failed."""
        self.path.unlink(missing_ok=True)
        self._file.close()


def _promised_elsewhere(folder: Path, table: str, disk: int) -> int:
    """Bytes promised to copies of tables other than ``table`` on ``disk`` (inside :func:`_deciding`), the
    largest promise per table; the promise of a holder that died is removed."""
    largest: dict[str, int] = {}
    for path in folder.glob("*.json"):
        try:
            with open(path) as file:
                try:
                    fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # its copy is still being made
                    promise = json.load(file)
                else:
                    path.unlink()
                    continue
        except (FileNotFoundError, ValueError):  # given back meanwhile
            continue
        if promise["disk"] == disk and promise["table"] != table:
            largest[promise["table"]] = max(largest.get(promise["table"], 0), promise["bytes"])
    return sum(largest.values())


def _copied(folders: Iterable[Path], *patterns: str) -> int:
    """Bytes of the files matching ``patterns`` in those of ``folders`` that exist."""
    return sum(path.stat().st_size for folder in folders for pattern in patterns
               for path in folder.glob(pattern) if path.is_file())


def _finished(root: Path) -> list[Path]:
    """The folders of finished copies under ``root`` (not a temporary folder another reader is still writing:
    it stays once renamed)."""
    return [folder for folder in root.iterdir() if folder.is_dir() and not folder.name.startswith(".")]


def disk_room(root: Path, needed: int, copied: int, promised: int = 0) -> tuple[str | None, int]:
    """Why a copy of ``needed`` bytes under ``root`` would leave less than :data:`RESERVE_SHARE` of its disk
    free (None: it would not), and the bytes it adds: ``copied`` bytes of it are there already, ``promised``
    bytes of other copies being made count as used."""
    disk, adds = shutil.disk_usage(root), max(0, needed - copied)
    if disk.free - promised - adds >= RESERVE_SHARE * disk.total:
        return None, adds
    others = f", {promised / 1e9:.1f} GB of it promised to other copies being made" if promised else ""
    return (f"would leave less than {RESERVE_SHARE:.0%} of the disk under {root} free "
            f"({disk.free / 1e9:.1f} GB free{others})"), adds


def originals_fit(dataset: Any, root: Path, needed: int, promised: int = 0, local_too: bool = False,
                  page_cache: float = 0.0) -> tuple[bool, str, int]:
    """Whether an ``auto`` copy takes ``embedding`` (``needed`` bytes in the table) too, why, and the bytes
    it would add to the disk: for a table on object storage; for a local table (whose rows are on a local
    disk already) only when they fit in the ``page_cache`` bytes the copy may still read into the OS page
    cache (``local_too``: whatever their size); and only when the copy leaves :data:`RESERVE_SHARE` of the
    disk under ``root`` free (:func:`disk_room`: the finished copies of it there count as free, since those
    this version does not use are removed before it is copied; ``promised`` bytes count as used)."""
    local = "://" not in str(dataset.uri) or str(dataset.uri).startswith("file://")
    size = f"its rerank rows ({needed / 1e9:.1f} GB)"
    if local and not local_too and needed > page_cache:
        left = f"{max(page_cache, 0) / 1e9:.1f} GB left of {WARM_SHARE:.0%} of the memory available"
        return False, (f"the table is on a local disk and {size} do not fit in the page cache with the rest "
                       f"of the copy ({left})"), 0
    why, adds = disk_room(root, needed, _copied(_finished(root), "embedding.*"), promised)
    if why:
        return False, f"copying the rerank's rows needs {needed / 1e9:.1f} GB and {why}", adds
    if not local:
        return True, f"the table is on object storage and {size} fit", adds
    where = "" if local_too else " in the page cache"
    return True, f"the table is on a local disk and {size} fit{where}", adds


def table_folder(directory: str | Path, table_uri: str) -> Path:
    """Where the copies of the table at ``table_uri`` (``dataset.uri``) live under ``directory``."""
    return Path(directory) / hashlib.sha256(str(table_uri).encode()).hexdigest()[:16]


class LocalCopy:
    """The :data:`COLUMNS` and the ``carry`` columns of one pinned dataset version (``table.to_lance()``)
    under ``directory``, copied in a background thread when made (:meth:`ready` says when reads can start;
    until then a caller reads the table); with ``originals``, then ``embedding`` too, in that dtype
    (``float16`` or ``float32``), in folders of its own (:meth:`originals_ready` says when the rerank can read
    it; until then it reads the table). With ``auto_originals``, ``embedding`` is copied only where
    :func:`originals_fit` says (decided in that thread; why in :attr:`originals_choice`)."""

    def __init__(self, dataset: Any, hidden_dim: int, directory: str | Path, carry: tuple[str, ...] = (),
                 originals: str | None = None, auto_originals: bool = False) -> None:
        self.dataset, self.hidden_dim, self.carry = dataset, hidden_dim, tuple(carry)
        self.columns = dict(COLUMNS)  # with "embedding" once that is copied
        self._originals, self._auto = originals, auto_originals
        self._wanted: bool | None = None if auto_originals else bool(originals)  # embedding to be copied
        self.originals_choice = "not decided yet" if auto_originals else f"copy_originals={bool(originals)}"
        self.root = table_folder(directory, dataset.uri)
        self.error: Exception | None = None
        self.originals_error: Exception | None = None
        self.seconds = self.originals_seconds = 0.0  # the time to make the copy, and then its embedding
        self.warmed: tuple[str, ...] = ()  # the columns whose files were read into the OS page cache
        self._budget = 0.0  # bytes of the copy it may still read into the page cache (set as it begins)
        self._done, self._originals_done = threading.Event(), threading.Event()
        self._fragments: list[_FragmentCopy] = []
        self._embedding: list[_FragmentCopy] = []
        self._progress: str | None = None  # which fragment the copy is at, while it copies
        self._promise: _Promise | None = None  # what this copy adds to the disk, while it is made
        threading.Thread(target=self._copy, name="index-copy", daemon=True).start()

    def ready(self, timeout: float | None = 0) -> bool:
        """True once the copy can be read (waiting up to ``timeout`` seconds; None: until it is); False while
        it is being made or if making it failed (:attr:`error`)."""
        return self._done.wait(timeout) and self.error is None

    def originals_ready(self, timeout: float | None = 0) -> bool:
        """True once the copy of ``embedding`` can be read (waiting up to ``timeout`` seconds; None: until it
        is or is not to be); False while it is being made, when it is not made (:attr:`originals_choice`) or
        if making it failed (:attr:`originals_error`)."""
        return self._originals_done.wait(timeout) and self.originals

    def _copy(self) -> None:
        started = time.perf_counter()
        fragments, live, embedding = [], [], None
        self._budget = WARM_SHARE * _available_memory()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fragments = self.dataset.get_fragments()
            embedding = self._reserve(fragments)
            live = [_FragmentCopy.live_addresses(fragment) for fragment in fragments]  # for both copies
            self._fragments = self._open(fragments, live, self.carry, COLUMNS, "")
            kept = {copy.folder.name for copy in self._fragments}
            if embedding:  # kept for the copy of embedding made next
                kept |= {_FragmentCopy.name(fragment, (), embedding) for fragment in fragments}
            for stale in _finished(self.root):
                if stale.name not in kept:
                    shutil.rmtree(stale, ignore_errors=True)
            self.warmed = self._warm(self._fragments, COLUMNS)
        except Exception as error:  # noqa: BLE001 -- kept on .error; the search reads the table instead
            self.error = error
        release_free_memory()  # the scan's freed read buffers
        self.seconds = time.perf_counter() - started
        self._done.set()
        if embedding and self.error is None:
            try:
                self._embedding = self._open(fragments, live, (), embedding, " of embedding")
                self.columns = {**COLUMNS, **embedding}
                self.warmed += self._warm(self._embedding, embedding)
            except Exception as error:  # noqa: BLE001 -- kept on .originals_error; the rerank reads the table
                self.originals_error = error
            release_free_memory()
            self.originals_seconds = time.perf_counter() - started - self.seconds
        if self._promise:  # copied, failed or never begun: the bytes are on the disk or not at all
            self._promise.release()
        self._originals_done.set()

    def _open(self, fragments: list[Any], live: list[np.ndarray], carry: tuple[str, ...],
              columns: dict[str, tuple], what: str) -> list[_FragmentCopy]:
        """Each fragment's copy of ``columns`` and ``carry`` (:meth:`_FragmentCopy.open`), in order, the
        count of those done (``what``: of which columns) in :meth:`status` until the last is."""
        copies: list[_FragmentCopy] = []
        of = f"of {len(fragments)} fragment{'' if len(fragments) == 1 else 's'}{what} copied"
        try:
            for fragment, rows in zip(fragments, live):
                self._progress = f"{len(copies)} {of}"
                copies.append(_FragmentCopy.open(self.root, fragment, rows, carry, self.hidden_dim, columns))
        finally:
            self._progress = None
        return copies

    def _reserve(self, fragments: list[Any]) -> dict[str, tuple] | None:
        """Check that the copy of ``fragments`` leaves :data:`RESERVE_SHARE` of its disk free (OSError if not:
        the search then reads the table; the folders it reuses count as free) and decide whether it takes
        ``embedding`` too: its columns then (:data:`ORIGINALS`), else None (as :func:`originals_fit`
        decides, logged; with ``originals`` asked for outright, only whether they leave the reserve). The
        bytes the copy adds are promised (:class:`_Promise`) until it is done, so copies of other tables, in
        any process, count them."""
        disk, sizes = os.stat(self.root).st_dev, column_bytes(self.dataset)
        needed = sum(sizes.get(name, 0) for name in (*COLUMNS, *self.carry))
        reused = [self.root / _FragmentCopy.name(fragment, self.carry, COLUMNS) for fragment in fragments]
        embedding = {"embedding": ORIGINALS[self._originals]} if self._originals else None
        with _deciding(self.root.parent) as promises:
            elsewhere = _promised_elsewhere(promises, self.root.name, disk)
            copied = _copied(reused, "bits.*", "pooled.*", HITS_FILE)
            why, adds = disk_room(self.root, needed, copied, elsewhere)
            if why:
                raise OSError(f"the copy of the columns stages 2-3 read needs {needed / 1e9:.1f} GB and "
                              f"{why}")
            if embedding:
                page_cache = self._budget - sum(sizes.get(name, 0) for name in COLUMNS)  # after bits, pooled
                fits, choice, more = originals_fit(self.dataset, self.root, sizes["embedding"],
                                                   elsewhere + adds, local_too=not self._auto,
                                                   page_cache=page_cache)
                if self._auto or not fits:
                    self.originals_choice = choice if self._auto else f"{self.originals_choice}, but {choice}"
                self._wanted = fits
                if fits:
                    adds += more
                else:
                    embedding = None
            if adds:  # a copy already made (a restart) adds nothing
                self._promise = _Promise(promises, self.root.name, disk, adds)
        if self._originals and (self._auto or not embedding):
            logger.info("local copy of %s: the rerank's rows %s: %s", self.dataset.uri,
                        "copied too" if embedding else "read from the table", self.originals_choice)
        return embedding

    def rows(self, fragment_rows: list[tuple[int, np.ndarray]], column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, offsets)`` of ``column`` for the rows given as ``(fragment number, positions among its
        live rows)`` pairs, in that order: the tokens stacked (``bits``: ``(n, hidden_dim / 8)`` uint8;
        ``pooled``: ``(n, hidden_dim)`` int8; ``embedding``: ``(n, hidden_dim)`` in the table's dtype),
        document ``i`` owning ``offsets[i]:offsets[i + 1]``. Gathered
        from the memory-mapped files in one ``take`` per fragment, whose mapped pages are then let go
        (:meth:`_FragmentCopy.release`): a read leaves nothing of the copy in the reader's memory. A column
        not read into the page cache (:attr:`warmed`) has its rows' pages asked for first, all at once
        (:meth:`_FragmentCopy.prefetch`): the gather then waits for one round of disk reads, not for one
        read per page fault in turn."""
        name, dtype, numerator, denominator = self.columns[column]
        width = self.hidden_dim * numerator // denominator
        copies = self._embedding if column == "embedding" else self._fragments
        runs = [(copies[number], *copies[number].ranges(local, column)) for number, local in fragment_rows]
        if column not in self.warmed:  # on the disk: every run's read asked for before the first is gathered
            for copy, starts, lengths in runs:
                copy.prefetch(name, starts, lengths)
        tokens, counts = [], []
        for copy, starts, lengths in runs:
            tokens.append(take_runs(copy.mapped[name], starts, lengths))
            copy.release()
            counts.append(lengths)
        offsets = np.zeros(sum(len(c) for c in counts) + 1, np.int64)
        np.cumsum(np.concatenate(counts) if counts else np.zeros(0, np.int64), out=offsets[1:])
        out = np.concatenate(tokens) if len(tokens) > 1 else tokens[0] if tokens else np.zeros(0, _item(dtype, width))
        return out.view(dtype).reshape(-1, width), offsets

    def status(self) -> dict[str, str]:
        """Where the copy stands, as a service reports it: ``copy`` (``copying``, ``ready`` or ``failed:
        ...``), where the rerank reads its rows, ``rerank_rows`` (``the copy``, ``the table until they are
        copied``, or ``the table: ...`` saying why), and while a column is being copied, ``progress`` (``12 of
        40 fragments of embedding copied``)."""
        copy = "copying" if not self._done.is_set() else f"failed: {self.error}" if self.error else "ready"
        if self.originals:
            rerank = "the copy"
        elif self.error is not None:
            rerank = "the table: the copy failed"
        elif self.originals_error is not None:
            rerank = f"the table: copying them failed: {self.originals_error}"
        elif self._wanted is False or self._originals_done.is_set():
            rerank = f"the table: {self.originals_choice}"
        else:
            rerank = "the table until they are copied"
        progress = self._progress
        return {"copy": copy, "rerank_rows": rerank, **({"progress": progress} if progress else {})}

    @property
    def originals(self) -> bool:
        """Whether the copy holds ``embedding`` (the rerank reads it here)."""
        return "embedding" in self.columns

    def _warm(self, copies: list[_FragmentCopy], columns: dict[str, tuple]) -> tuple[str, ...]:
        """Read ``columns``' files of ``copies`` through once, column by column, while they and the columns
        read before take at most :data:`WARM_SHARE` of the memory available when the copy began (what is
        left: ``_budget``); the columns read."""
        buffer, warmed = bytearray(WARM_CHUNK_BYTES), []
        for column, (name, *_) in columns.items():
            files = [copy.folder / name for copy in copies]
            self._budget -= sum(os.path.getsize(path) for path in files)
            if self._budget < 0:
                break
            for path in files:
                _read_through(path, buffer)
            warmed.append(column)
        return tuple(warmed)

    def hits(self, fragment_rows: list[tuple[int, np.ndarray]]) -> pa.Table:
        """The ``carry`` columns of the rows given as ``(fragment number, positions among its live rows)``
        pairs, in that order (one table)."""
        pieces = [self._fragments[number].hits.take(self._fragments[number].rows[local])
                  for number, local in fragment_rows]
        return pa.concat_tables(pieces) if pieces else self._fragments[0].hits.slice(0, 0)


class _FragmentCopy:
    """One fragment's copy (its column files memory-mapped, one token per item) and this version's map from
    the fragment's live rows to it."""

    def __init__(self, folder: Path, live_rows: np.ndarray, hidden_dim: int, columns: dict[str, tuple]) -> None:
        self.folder = folder
        self.offsets = {column: np.load(folder / f"{column}.offsets.npy") for column in columns}
        self._maps: dict[str, mmap.mmap] = {}
        self.mapped = {name: self._map(name, _item(dtype, hidden_dim * numerator // denominator))
                       for name, dtype, numerator, denominator in columns.values()}
        self.hits = pa.ipc.open_file(pa.memory_map(str(folder / HITS_FILE))).read_all()
        self.rows = live_rows  # position among the fragment's live rows -> row of the copy

    def _map(self, name: str, item: str) -> np.ndarray:
        """The column file ``name`` mapped read-only, as an array of ``item`` (an empty file: an empty
        array)."""
        with open(self.folder / name, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return np.zeros(0, item)
            self._maps[name] = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
        return np.frombuffer(self._maps[name], item)

    def prefetch(self, name: str, starts: np.ndarray, lengths: np.ndarray) -> None:
        """Ask the kernel to read the pages of the runs ``starts[i]:starts[i] + lengths[i]`` of the column
        file ``name`` now (``MADV_WILLNEED``: it queues the reads and returns), so that they are read
        concurrently."""
        mapping, item = self._maps.get(name), self.mapped[name].itemsize
        if mapping is None:  # an empty file: nothing to read
            return
        for start, length in zip(np.asarray(starts).tolist(), np.asarray(lengths).tolist()):
            if length:
                begin = start * item
                aligned = begin - begin % mmap.PAGESIZE
                mapping.madvise(mmap.MADV_WILLNEED, aligned, begin + length * item - aligned)

    def release(self) -> None:
        """Drop the mapped pages from the process (``MADV_DONTNEED``; the OS page cache keeps them, and the
        next read maps them again). A read maps far more than it gathers: each page fault maps the pages
        around it that the page cache holds (64 KB), so 1,500 candidates' codes map ~80 MB."""
        for mapping in self._maps.values():
            mapping.madvise(mmap.MADV_DONTNEED)

    @staticmethod
    def name(fragment: Any, carry: tuple[str, ...], columns: dict[str, tuple]) -> str:
        """The folder name of the fragment's copy of ``columns`` and ``carry``: a hash of the fragment's data
        files (which never change) and of what is copied."""
        files = sorted(str(getattr(f, "path", f)) for f in fragment.data_files())
        originals = f":{columns['embedding'][0]}" if "embedding" in columns else ""
        key = f"{FORMAT}:{fragment.fragment_id}:{files}:{list(carry)}{originals}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @staticmethod
    def live_addresses(fragment: Any) -> np.ndarray:
        """The row addresses of the fragment's live rows in the pinned version (no column data read)."""
        return np.concatenate([batch.column("_rowaddr").to_numpy() for batch in
                               fragment.to_batches(columns=[], with_row_address=True)] or [np.zeros(0, np.uint64)])

    @classmethod
    def open(cls, root: Path, fragment: Any, live: np.ndarray, carry: tuple[str, ...], hidden_dim: int,
             columns: dict[str, tuple]) -> _FragmentCopy:
        """The fragment's copy under ``root`` (with ``columns`` and the ``carry`` columns), written first if
        there is none (or it lacks one of the ``live`` row addresses, :meth:`live_addresses`)."""
        folder = root / cls.name(fragment, carry, columns)
        for _ in range(2):
            if (folder / "addresses.npy").exists():
                addresses = np.load(folder / "addresses.npy")
                rows = np.searchsorted(addresses, live)
                if np.all(rows < len(addresses)) and np.array_equal(addresses[np.minimum(rows, len(addresses) - 1)], live):
                    return cls(folder, rows, hidden_dim, columns)
                shutil.rmtree(folder, ignore_errors=True)  # rows the copy lacks (should not happen): copy again
            _write(root, folder, fragment, carry, columns)
        raise RuntimeError(f"the local copy of fragment {fragment.fragment_id} does not hold its live rows")

    def ranges(self, local: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(first token, token count)`` in ``column``'s file of the rows at these live positions."""
        rows, offsets = self.rows[np.asarray(local, np.int64)], self.offsets[column]
        return offsets[rows], offsets[rows + 1] - offsets[rows]


def _item(dtype: str, width: int) -> str:
    """The numpy void type of one token of ``width`` items of ``dtype`` (a file's items as whole tokens)."""
    return f"V{width * np.dtype(dtype).itemsize}"


def _read_through(path: Path, buffer: bytearray) -> None:
    """Read the file at ``path`` from start to end (into the OS page cache), a buffer at a time."""
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


def _available_memory() -> int:
    """Bytes of memory available without swapping (Linux's ``MemAvailable``; elsewhere the free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _write(root: Path, folder: Path, fragment: Any, carry: tuple[str, ...], columns: dict[str, tuple]) -> None:
    """Copy ``columns`` and the ``carry`` columns of the fragment's live rows into ``folder`` (via a
    temporary folder, renamed)."""
    temporary = Path(tempfile.mkdtemp(prefix=".copy-", dir=root))
    try:
        addresses, lengths = [], {column: [] for column in columns}
        schema = pa.schema([fragment.schema.field(name) for name in carry])
        with ExitStack() as files:
            outputs = {column: files.enter_context(open(temporary / name, "wb"))
                       for column, (name, *_) in columns.items()}
            hits = files.enter_context(pa.ipc.new_file(str(temporary / HITS_FILE), schema))
            large = "embedding" in columns  # ~34 MB per batch of COPY_BATCH_ROWS // 16 ColPali pages
            for batch in fragment.to_batches(columns=[*columns, *carry], with_row_address=True,
                                             batch_size=COPY_BATCH_ROWS // 16 if large else COPY_BATCH_ROWS,
                                             batch_readahead=COPY_READAHEAD if large else 16):
                hits.write_table(pa.table([batch.column(name) for name in carry], schema=schema))
                for column, out in outputs.items():
                    values, offsets = token_rows(batch.column(column))
                    out.write(values[:offsets[-1]].tobytes())
                    lengths[column].append(np.diff(offsets))
                # a copy: a view would keep the batch's buffers (the copied columns' too) until the end
                addresses.append(batch.column("_rowaddr").to_numpy().copy())
        for column, pieces in lengths.items():
            token_offsets = np.zeros(sum(len(p) for p in pieces) + 1, np.int64)
            np.cumsum(np.concatenate(pieces) if pieces else np.zeros(0, np.int64), out=token_offsets[1:])
            np.save(temporary / f"{column}.offsets.npy", token_offsets)
        np.save(temporary / "addresses.npy", np.concatenate(addresses) if addresses else np.zeros(0, np.uint64))
        try:
            temporary.rename(folder)
        except OSError:  # another reader's copy landed first
            if not (folder / "addresses.npy").exists():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
