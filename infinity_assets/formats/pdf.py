"""PDF documents: every page becomes one page image (PNG) for the image model, rendered by PDFium (pypdfium2).

One document per page: ``doc_id`` = ``<key>#page=<n>`` (n from 1), ``page`` = n, ``page_text`` = the page's text
layer (PDFium's text page; ``None`` for a scanned page without one), ``source_uri`` and ``fingerprint`` = the PDF
file's. Pages are rendered in worker processes (PDFium is not thread-safe, and a hostile file must not take the
run down): ``workers`` processes per PDF render every ``workers``-th page each and hand pages over one at a time,
so a PDF of 1,000 pages is never in memory as bitmaps, and rendering runs while the pipeline sends the pages
already rendered. Each page must arrive within ``page_timeout`` seconds.

Render size (:class:`PdfSettings`): ``dpi`` (default 144) with the longest side capped at ``max_side`` pixels
(default 1,024). ColPali resizes every page to 448 x 448 and ColQwen2 to at most ~768 patches of 28 x 28
pixels (about 780 x 780): 1,024 pixels keep what both models can use, and cap the pixels (and memory) of
absurd page sizes (a 200 x 200 inch page renders at 1,024 x 1,024 too). Pages are RGB PNG: lossless, so the
server sees exactly the rendered pixels.

Failures name the file and what to do: a 0-byte file, not a PDF (e.g. a ZIP renamed ``.pdf``), corrupt or
truncated, encrypted with a password, no pages, more than ``max_pages`` pages (the whole file fails: never
half-embedded), a page that does not render in time or a renderer that crashes.
"""
from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..storage import SourceObject
from .base import Document, Format, first_line

#: Environment variables of :class:`PdfSettings`, read when a store is built (not at import).
PDF_ENV = {"max_side": "INFINITY_PDF_MAX_SIDE", "dpi": "INFINITY_PDF_DPI",
           "max_pages": "INFINITY_PDF_MAX_PAGES", "page_timeout": "INFINITY_PDF_PAGE_TIMEOUT",
           "workers": "INFINITY_PDF_WORKERS"}
#: Text layers longer than this (characters) are cut: a snippet, not the document.
MAX_PAGE_TEXT = 20_000
MIN_SIDE = 3  # Infinity's vision models reject smaller images


@dataclass(frozen=True)
class PdfSettings:
    """How PDF pages are rendered (see the module docstring for the defaults' reasons)."""

    max_side: int = 1024
    dpi: float = 144.0
    max_pages: int = 2000
    page_timeout: float = 60.0
    workers: int = 0  # 0: one per CPU core

    @classmethod
    def from_env(cls, **overrides: Any) -> PdfSettings:
        """Settings from ``overrides`` (``None`` values ignored), then ``INFINITY_PDF_*``, then the defaults."""
        values: dict[str, Any] = {}
        for name, env_name in PDF_ENV.items():
            value = overrides.get(name)
            raw = os.environ.get(env_name)
            if value is None and raw not in (None, ""):
                try:
                    value = type(getattr(cls, name))(raw)
                except ValueError:
                    raise ValueError(f"environment variable {env_name}={raw!r} is not a valid {name}") from None
            if value is not None:
                values[name] = value
        settings = cls(**values)
        if settings.max_side < 64 or settings.dpi <= 0 or settings.max_pages < 1 or settings.page_timeout <= 0:
            raise ValueError(f"invalid PDF settings {settings} (max_side >= 64, dpi > 0, max_pages >= 1, "
                             "page_timeout > 0)")
        return settings

    @property
    def worker_count(self) -> int:
        """Processes rendering one PDF."""
        return self.workers or os.cpu_count() or 1


class PdfFormat(Format):
    """``.pdf``: one page image document per page (option ``pdf``: :class:`PdfSettings`)."""

    modality = "images"
    extensions = frozenset({".pdf"})

    def documents(self, source: SourceObject, data: bytes) -> Iterator[Document]:
        settings = self.options.get("pdf") or PdfSettings.from_env()
        if not data:
            yield _failed(source, "empty file (0 bytes)")
            return
        if not data.lstrip()[:5].startswith(b"%PDF-"):
            kind = "a ZIP archive" if data.startswith(b"PK\x03\x04") else "not a PDF"
            yield _failed(source, f"{kind} ({len(data):,} bytes without a %PDF- header); check the file")
            return
        yield from _render_pages(source, data, settings)


def _failed(source: SourceObject, reason: str, page: int | None = None) -> Document:
    doc_id = source.key if page is None else f"{source.key}#page={page}"
    return Document(doc_id, source.uri, source.fingerprint, error=reason, page=page)


def _render_pages(source: SourceObject, data: bytes, settings: PdfSettings) -> Iterator[Document]:
    """The pages of one PDF, rendered by worker processes, in page order."""
    context = _context()
    workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
    try:
        count = settings.worker_count
        for index in range(count):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_render_worker, args=(sender, data, settings, index, count),
                                      daemon=True, name=f"pdf-render-{index}")
            with warnings.catch_warnings():
                # LanceDB (the index, in the same code location) warns at every fork; a worker never uses it.
                warnings.filterwarnings("ignore", message="lance is not fork-safe")
                process.start()
            sender.close()
            workers.append((process, receiver))
        header = _receive(workers[0], settings.page_timeout, "opening the file")
        if header[0] == "error":
            yield _failed(source, header[1])
            return
        pages = header[1]
        if pages == 0:
            yield _failed(source, "the PDF has no pages")
            return
        if pages > settings.max_pages:
            yield _failed(source, f"{pages:,} pages is over max_pages_per_document={settings.max_pages:,}; "
                                  "split the PDF or raise the limit (INFINITY_PDF_MAX_PAGES)")
            return
        for number in range(1, pages + 1):
            message = _receive(workers[(number - 1) % count], settings.page_timeout, f"page {number}")
            if message[0] == "error":
                yield _failed(source, message[1], number)
                fatal = message[2]  # the renderer is gone: the pages after this one cannot be had
                if fatal and number < pages:
                    yield _failed(source, f"the pages after page {number} (up to {pages}) were not rendered "
                                          "because it failed; fix the file and re-run")
                if fatal:
                    return
                continue
            _, png, text = message
            yield Document(f"{source.key}#page={number}", source.uri, source.fingerprint, content=png,
                           page=number, page_text=text)
    finally:
        for process, receiver in workers:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join(5)


def _receive(worker: tuple[Any, multiprocessing.connection.Connection], timeout: float,
             what: str) -> tuple[Any, ...]:
    """The worker's next message; a timeout or a dead worker becomes a fatal ``("error", reason, True)``."""
    process, receiver = worker
    try:
        if receiver.poll(timeout):
            return receiver.recv()
        reason = f"rendering {what} took longer than {timeout:g} s (INFINITY_PDF_PAGE_TIMEOUT); the PDF may be hostile"
    except (EOFError, OSError):
        process.join(5)
        reason = f"the PDF renderer crashed on {what} (exit code {process.exitcode}); the file may be corrupt"
    process.kill()
    return ("error", reason, True)


def _context() -> Any:
    """Forked workers: a few milliseconds to start, and no re-import of the caller's ``__main__`` (spawn and the
    fork server run it again, which scripts, Dagster's CLI and pytest do not expect). A worker only renders and
    writes to its pipe; if it ever hung on a lock inherited from the parent's threads, the page timeout ends it
    like any other hang."""
    # Everything a worker uses is imported before forking: a worker never takes the import lock, which another
    # thread of this process might hold at the instant of the fork.
    import pypdfium2  # noqa: F401
    from PIL import Image, PngImagePlugin  # noqa: F401

    return multiprocessing.get_context("fork")


def _render_worker(sender: multiprocessing.connection.Connection, data: bytes, settings: PdfSettings,
                   index: int, count: int) -> None:
    """In a worker process: open the PDF, report the page count (worker 0), send pages index, index+count, ..."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if index == 0:
            sender.send(("error", _open_error(exc)))
        return
    try:
        pages = len(document)
        if index == 0:
            sender.send(("pages", pages))
        if pages == 0 or pages > settings.max_pages:
            return
        for number in range(index, pages, count):
            try:
                sender.send(("page", *_render_page(document, number, settings)))
            except Exception as exc:  # noqa: BLE001 -- one bad page is that page's failure
                sender.send(("error", f"page {number + 1} could not be rendered ({type(exc).__name__}: "
                                      f"{first_line(exc)}); check the file", False))
    finally:
        document.close()
        sender.close()


def _render_page(document: Any, number: int, settings: PdfSettings) -> tuple[bytes, str | None]:
    """PNG bytes of one page at the configured size, and its text layer (``None`` if it has no text)."""
    page = document[number]
    try:
        width, height = page.get_size()  # points (1/72 inch)
        scale = min(settings.dpi / 72, settings.max_side / max(width, height, 1e-6))
        if min(width, height) * scale < MIN_SIDE:
            raise ValueError(f"the page is {width:.0f} x {height:.0f} points, under {MIN_SIDE} pixels on one "
                             f"side at max_side={settings.max_side}")
        bitmap = page.render(scale=scale)
        image = bitmap.to_pil().convert("RGB")
        bitmap.close()
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: the CPU goes to rendering
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_bounded().strip()[:MAX_PAGE_TEXT] or None
        finally:
            textpage.close()
        return buffer.getvalue(), text
    finally:
        page.close()


def _open_error(exc: BaseException) -> str:
    message = first_line(exc)
    if "password" in message.lower():
        return "the PDF is encrypted with a password; decrypt it (e.g. qpdf --decrypt) and upload it again"
    return f"the PDF is corrupt or truncated (PDFium: {message}); re-export or re-upload the file"
