"""PDF documents: every page becomes one page image (PNG) for the image model, rendered by PDFium (pypdfium2).

One document per page: ``doc_id`` = ``<key>#page=<n>`` (n from 1), ``page`` = n, ``page_text`` = the page's text
layer (PDFium's text page; ``None`` for a scanned page without one), ``source_uri`` and ``fingerprint`` = the PDF
file's. Pages are rendered in worker processes (PDFium is not thread-safe, and a hostile file must not take the
run down): one pool of ``workers`` processes renders all the PDFs of a read chunk (:mod:`.pdf_render`), page by
page, working a few pages ahead of the consumer and across PDF boundaries, so a partition of 3-page PDFs
renders as fast as one of 100-page PDFs, a PDF of 1,000 pages is never in memory as bitmaps, and rendering runs
while the pipeline sends the pages already rendered. Each page must arrive within ``page_timeout`` seconds.

Render size (:class:`~.pdf_settings.PdfSettings`): ``dpi`` (default 144) with the longest side capped at ``max_side`` pixels
(default 1,024). ColPali resizes every page to 448 x 448 and ColQwen2 to at most ~768 patches of 28 x 28
pixels (about 780 x 780): 1,024 pixels keep what both models can use, and cap the pixels (and memory) of
absurd page sizes (a 200 x 200 inch page renders at 1,024 x 1,024 too). Pages are RGB PNG: lossless, so the
server sees exactly the rendered pixels.

Failures name the file and what to do: a 0-byte file, not a PDF (e.g. a ZIP renamed ``.pdf``), corrupt or
truncated, encrypted with a password, no pages, more than ``max_pages`` pages (the whole file fails: never
half-embedded), a page that does not render in time or a renderer that crashes (that page, and the pages after
it as one failure; the other PDFs are rendered by a fresh process).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from infinity_assets.storage.backend import SourceObject
from infinity_assets.storage.formats.base import Document, Format
from infinity_assets.storage.formats.pdf_render import render_documents
from infinity_assets.storage.formats.pdf_settings import PDF_ENV, PdfSettings

__all__ = ["PDF_ENV", "PdfFormat", "PdfSettings"]

class PdfFormat(Format):
    """``.pdf``: one page image document per page (option ``pdf``: :class:`PdfSettings`)."""

    modality = "images"
    extensions = frozenset({".pdf"})

    def documents(self, source: SourceObject, data: bytes) -> Iterator[Document]:
        return self.documents_of([(source, data)])

    def documents_of(self, files: Iterable[tuple[SourceObject, bytes]]) -> Iterator[Document]:
        """The pages of many PDFs, rendered by one pool of worker processes that works ahead across files."""
        return render_documents(files, self.options.get("pdf") or PdfSettings())
