"""Rendering the pages of many PDFs in one pool of forked worker processes, page documents out in order.

:func:`render_documents` takes a run of PDF files (the PDFs among the files of a read chunk) and starts
``workers`` processes once for the whole run. The parent hands out one task at a time to each idle worker, in
the order the consumer will want the results: open the next PDF (the worker answers its page count), then its
pages one by one, then the next PDF's. So workers stay busy across PDF boundaries (a worker done with the last
pages of one PDF renders the first ones of the next while the consumer still takes the current one), and a PDF
of 3 pages keeps two workers as busy as one of 1,000. At most ``AHEAD_PER_WORKER`` pages per worker are handed
out or waiting beyond the one the consumer takes next, so a 1,000-page PDF is never in memory as pages.

Failures stay local. A page the consumer waits for must arrive within ``page_timeout`` seconds (counted from
when the consumer starts waiting for it, or it was handed out, whichever is later); a worker that crashes or
hangs is killed and replaced by a fresh one, and the failure is that page's, the pages after it are one named
failure of the file (a renderer that crashed once on a hostile file would likely crash again), and every other
PDF of the run is rendered as if nothing happened. The processes are killed when the run's documents are
consumed, when the consumer stops early (``close()``, garbage collection) and, as daemons, at interpreter exit.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from infinity_assets.storage.backend import SourceObject
from infinity_assets.storage.formats.base import Document, first_line
from infinity_assets.storage.formats.images import MIN_IMAGE_SIDE
from infinity_assets.storage.formats.pdf_settings import PdfSettings

#: Text layers longer than this (characters) are cut: a snippet, not the document.
MAX_PAGE_TEXT = 20_000
#: Pages handed out or rendered and waiting, beyond the one the consumer takes next, per worker process.
AHEAD_PER_WORKER = 2
OPEN = 0  # the page number of the task "open the PDF and count its pages"


def render_documents(files: Iterable[tuple[SourceObject, bytes]], settings: PdfSettings) -> Iterator[Document]:
    """The page documents (or named failures) of each PDF in ``files``, file after file, page after page.

    ``files`` is read at once (the bytes are in memory anyway); the worker processes start at the first file
    that looks like a PDF and are gone when this generator finishes or is closed.
    """
    pdfs = [_Pdf(source, data, _header_problem(data)) for source, data in files]
    pool = _Pool(pdfs, settings)
    try:
        for index in range(len(pdfs)):
            yield from pool.documents(index)
    finally:
        pool.close()


def _header_problem(data: bytes) -> str | None:
    """Why ``data`` is not worth a worker (empty, no ``%PDF-`` header), or ``None``."""
    if not data:
        return "empty file (0 bytes)"
    if not data.lstrip()[:5].startswith(b"%PDF-"):
        kind = "a ZIP archive" if data.startswith(b"PK\x03\x04") else "not a PDF"
        return f"{kind} ({len(data):,} bytes without a %PDF- header); check the file"
    return None


def _failed(source: SourceObject, reason: str, page: int | None = None) -> Document:
    doc_id = source.key if page is None else f"{source.key}#page={page}"
    return Document(doc_id, source.uri, source.fingerprint, error=reason, page=page)


@dataclass(eq=False)
class _Pdf:
    source: SourceObject
    data: bytes
    failure: str | None = None  # the whole file failed
    pages: int | None = None  # known once a worker opened it
    opening: bool = False
    handed_out: int = 0  # pages handed to workers so far
    broken_at: int | None = None  # a renderer crashed or hung on this page: the later ones are not rendered

    @property
    def settled(self) -> bool:
        return self.failure is not None or self.pages is not None


@dataclass(eq=False)
class _Worker:
    process: Any
    connection: multiprocessing.connection.Connection
    task: tuple[int, int] | None = None  # (pdf index, page number or OPEN) being rendered
    handed_out_at: float = 0.0
    loaded: int = -1  # the pdf whose bytes it holds


class _Pool:
    """The worker processes of one run of PDFs, the results not yet taken, and who renders what."""

    def __init__(self, pdfs: list[_Pdf], settings: PdfSettings) -> None:
        self.pdfs, self.settings = pdfs, settings
        self.workers: list[_Worker | None] = []  # None: to be (re)started when needed
        self.results: dict[tuple[int, int], tuple[Any, ...]] = {}  # rendered, not yet taken
        self.next = 0  # the first pdf with tasks left to hand out

    def documents(self, index: int) -> Iterator[Document]:
        """The documents of pdf ``index``, rendering the later ones meanwhile."""
        pdf = self.pdfs[index]
        self._wait_for(index, OPEN, lambda: pdf.settled)
        if pdf.failure is not None:
            yield _failed(pdf.source, pdf.failure)
            return
        assert pdf.pages is not None
        for number in range(1, pdf.pages + 1):
            self._wait_for(index, number, lambda: (index, number) in self.results)
            message = self.results.pop((index, number))
            if message[0] == "page":
                yield Document(f"{pdf.source.key}#page={number}", pdf.source.uri, pdf.source.fingerprint,
                               content=message[1], page=number, page_text=message[2])
                continue
            yield _failed(pdf.source, message[1], number)
            if number == pdf.broken_at:  # the renderer is gone: the pages after this one cannot be had
                if number < pdf.pages:
                    yield _failed(pdf.source, f"the pages after page {number} (up to {pdf.pages}) were not "
                                              "rendered because it failed; fix the file and re-run")
                return

    def close(self) -> None:
        """Kill the worker processes (idle, rendering, or blocked handing over a page alike)."""
        for worker in self.workers:
            if worker is not None:
                _stop(worker)
        self.workers = []

    def _wait_for(self, index: int, number: int, done: Callable[[], bool]) -> None:
        """Hand out tasks and take results until ``done()``; the task (index, number) gets ``page_timeout``."""
        waiting_since = time.monotonic()
        while not done():
            self._hand_out()
            busy = [w for w in self.workers if w is not None and w.task is not None]
            owner = next((w for w in busy if w.task == (index, number)), None)
            if owner is None:  # the order of handing out makes this impossible; a hang would be worse
                raise RuntimeError(f"PDF render pool: nothing renders page {number} of pdf {index}")
            deadline = max(waiting_since, owner.handed_out_at) + self.settings.page_timeout
            ready = multiprocessing.connection.wait([w.connection for w in busy],
                                                    max(0.0, deadline - time.monotonic()))
            for worker in busy:
                if worker.connection in ready:
                    self._take(worker)
            if owner.connection not in ready and time.monotonic() >= deadline:
                self._lose(owner, f"rendering {_what(number)} took longer than {self.settings.page_timeout:g} s "
                                  "(INFINITY_PDF_PAGE_TIMEOUT); the PDF may be hostile")
        self._hand_out()  # the worker that just answered renders on while the consumer takes the answer

    def _hand_out(self) -> None:
        """Give idle workers the next tasks in consumer order, within the look-ahead bound."""
        limit = AHEAD_PER_WORKER * self.settings.worker_count
        while self.next < len(self.pdfs):
            pdf = self.pdfs[self.next]
            if pdf.failure is not None or pdf.handed_out == pdf.pages or pdf.broken_at is not None:
                self.next += 1
                continue
            if pdf.opening:
                return  # its page count decides what comes next
            busy = sum(w is not None and w.task is not None for w in self.workers)
            if busy + len(self.results) > limit:  # beyond the page the consumer waits for
                return
            worker = self._idle_worker()
            if worker is None:
                return
            if pdf.pages is None:
                pdf.opening = True
                self._send(worker, self.next, OPEN)
            else:
                pdf.handed_out += 1
                self._send(worker, self.next, pdf.handed_out)

    def _idle_worker(self) -> _Worker | None:
        """An idle worker, started if the pool is not full (the first tasks start it, a lost one is replaced)."""
        idle = next((w for w in self.workers if w is not None and w.task is None), None)
        if idle is not None:
            return idle
        if None in self.workers:
            slot = self.workers.index(None)
        elif len(self.workers) < self.settings.worker_count:
            slot = len(self.workers)
            self.workers.append(None)
        else:
            return None
        self.workers[slot] = _start(self.settings)
        return self.workers[slot]

    def _send(self, worker: _Worker, index: int, number: int) -> None:
        data = None if worker.loaded == index else self.pdfs[index].data
        worker.task, worker.handed_out_at, worker.loaded = (index, number), time.monotonic(), index
        try:
            worker.connection.send((number, data))
        except OSError:  # it died while idle (killed from outside): nothing of this file was tried yet
            self.workers[self.workers.index(worker)] = None
            _stop(worker)
            replacement = self._idle_worker()
            assert replacement is not None
            self._send(replacement, index, number)

    def _take(self, worker: _Worker) -> None:
        """Store the answer of a busy worker that has one (or its death as its task's failure)."""
        assert worker.task is not None
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            self._lose(worker, f"the PDF renderer crashed on {_what(worker.task[1])} (exit code "
                               f"{worker.process.exitcode}); the file may be corrupt")
            return
        (index, number), worker.task = worker.task, None
        self._record(index, number, message)

    def _lose(self, worker: _Worker, reason: str) -> None:
        """A worker crashed or hung: its task fails for good, and a fresh process takes its place when needed."""
        assert worker.task is not None
        index, number = worker.task
        self.workers[self.workers.index(worker)] = None
        _stop(worker)
        self._record(index, number, ("error", reason, True))

    def _record(self, index: int, number: int, message: tuple[Any, ...]) -> None:
        pdf = self.pdfs[index]
        if number == OPEN:
            pdf.opening = False
            if message[0] == "error":
                pdf.failure = message[1]
            elif message[1] == 0:
                pdf.failure = "the PDF has no pages"
            elif message[1] > self.settings.max_pages:
                pdf.failure = (f"{message[1]:,} pages is over max_pages_per_document={self.settings.max_pages:,}; "
                               "split the PDF or raise the limit (INFINITY_PDF_MAX_PAGES)")
            else:
                pdf.pages = message[1]
            return
        if pdf.broken_at is not None and number > pdf.broken_at:
            return  # rendered on another worker after an earlier page broke the file: nobody takes it
        self.results[(index, number)] = message
        if message[0] == "error" and message[2]:
            pdf.broken_at = number
            for later in [key for key in self.results if key[0] == index and key[1] > number]:
                del self.results[later]


def _what(number: int) -> str:
    return "opening the file" if number == OPEN else f"page {number}"


def _start(settings: PdfSettings) -> _Worker:
    context = _context()
    connection, child_end = context.Pipe()
    process = context.Process(target=_serve, args=(child_end, settings), daemon=True, name="pdf-render")
    with warnings.catch_warnings():
        # LanceDB (the index, in the same code location) warns at every fork; a worker never uses it.
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        process.start()
    child_end.close()  # so that the worker's death is an end of file here
    return _Worker(process, connection)


def _stop(worker: _Worker) -> None:
    worker.connection.close()
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5)


def _context() -> Any:
    """Forked workers: a few milliseconds to start, and no re-import of the caller's ``__main__`` (spawn and the
    fork server run it again, which scripts, Dagster's CLI and pytest do not expect).

    A pool forks when a run of PDFs starts and when a worker is replaced, possibly while other threads of this
    process (the HTTP client's, the artifact writer's) hold locks; a forked worker has only the forking thread
    and inherits those locks as they were. It takes none of them: everything it uses is imported before the
    fork (so it never takes the import lock), glibc's malloc resets its locks in the child, PDFium runs only in
    workers (no other thread can hold its state), and it only renders and writes to its own pipe. If it ever
    did hang on an inherited lock, the page timeout ends it like any other hang, and the replacement is a new
    fork. A pool lives for one run of PDFs, not for the process: a worker never outlives the state it was
    forked from by more than a read chunk."""
    # Everything a worker uses is imported before forking: a worker never takes the import lock, which another
    # thread of this process might hold at the instant of the fork.
    import pypdfium2  # noqa: F401  (numpy, zlib and struct, for the PNG, are imported with this module)

    return multiprocessing.get_context("fork")


def _serve(connection: multiprocessing.connection.Connection, settings: PdfSettings) -> None:
    """In a worker process: answer tasks ``(page number or OPEN, the PDF's bytes if new here)`` until closed."""
    import pypdfium2 as pdfium

    document = None
    while True:
        try:
            number, data = connection.recv()
        except EOFError:
            return
        if data is not None:
            if document is not None:
                document.close()
                document = None
            try:
                document = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                connection.send(("error", _open_error(exc), False))
                continue
        if number == OPEN:
            connection.send(("pages", len(document)))
            continue
        try:
            message: tuple[Any, ...] = ("page", *render_page(document, number - 1, settings))
        except Exception as exc:  # noqa: BLE001 -- one bad page is that page's failure
            message = ("error", f"page {number} could not be rendered ({type(exc).__name__}: {first_line(exc)}); "
                                "check the file", False)
        connection.send(message)


def render_page(document: Any, number: int, settings: PdfSettings) -> tuple[bytes, str | None]:
    """PNG bytes of one page at the configured size, and its text layer (``None`` if it has no text)."""
    page = document[number]
    try:
        width, height = page.get_size()  # points (1/72 inch)
        scale = min(settings.dpi / 72, settings.max_side / max(width, height, 1e-6))
        if min(width, height) * scale < MIN_IMAGE_SIDE:
            raise ValueError(f"the page is {width:.0f} x {height:.0f} points, under {MIN_IMAGE_SIDE} pixels on one "
                             f"side at max_side={settings.max_side}")
        bitmap = page.render(scale=scale, rev_byteorder=True)  # RGB, no alpha
        try:
            png = png_bytes(bitmap.to_numpy())
        finally:
            bitmap.close()
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_bounded().strip()[:MAX_PAGE_TEXT] or None
        finally:
            textpage.close()
        return png, text
    finally:
        page.close()


def png_bytes(rgb: np.ndarray) -> bytes:
    """A lossless RGB PNG of ``rgb`` (height x width x 3, uint8): every row with PNG's "Sub" filter (each byte
    minus the one a pixel to its left), zlib at level 1. Pillow picks a filter per row by trying all five,
    which made PNG encoding ~70 % of a page's rendering; Sub alone is 2-2.5 x faster for the same bytes on
    rendered text pages (+6 %) and on photo-like pages (+0 %)."""
    height, width, _ = rgb.shape
    rows = rgb.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 1  # the Sub filter
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # modulo 256, as PNG defines it
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits per channel, RGB, no interlace
    return b"".join((b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(filtered, 1)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _open_error(exc: BaseException) -> str:
    message = first_line(exc)
    if "password" in message.lower():
        return "the PDF is encrypted with a password; decrypt it (e.g. qpdf --decrypt) and upload it again"
    return f"the PDF is corrupt or truncated (PDFium: {message}); re-export or re-upload the file"
