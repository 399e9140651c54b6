"""PDF pages: render cost per page, and the peak RSS of a 1,000-page PDF through the bandwidth-bound fake.

* ``render``: pages/s and CPU ms per page of ``formats/pdf.py`` (forked workers, one per core) rendering a
  200-page Letter PDF at the default size (longest side 1,024 px), against the baseline a user writes by hand:
  one process, ``pypdfium2`` page by page, same size, same PNG settings.
* ``end_to_end``: a partition of PDFs (``embed_partition``: render, embed, write) against the load generator
  sending the same pages pre-rendered (the limit the issue names), on the same bandwidth-bound fake server,
  repetitions interleaved; for each of :data:`SHAPES` (few long PDFs, many short ones: the render pool must
  keep its workers as busy on 3-page PDFs as on 100-page ones).
* ``memory``: ``embed_partition`` of one 1,000-page PDF (ColPali-shaped answers: 1,031 x 128 floats per page,
  ~0.5 GB of vectors) in a fresh child process (``python -m benchmarks.pdf_pages memory ...``); its VmHWM must
  stay under the 500 MB bound of the 2,000-image partition.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infinity_assets.storage.documents import DocumentStore, PdfSettings
from infinity_assets.storage.formats.pdf import PdfFormat
from infinity_assets.storage.store import SourceObject

from .partition import REPO, _high_water_mb

PARTITION = "bench-pdf"
#: (PDFs, pages each) of the ``end_to_end`` partitions: 200 pages each.
SHAPES = ((2, 100), (20, 10), (100, 3))


def make_pdf(pages: int) -> bytes:
    """A Letter-size PDF of ``pages`` pages with text and shapes (fpdf2, from the test extra)."""
    from fpdf import FPDF

    pdf = FPDF(format="letter")
    pdf.set_font("helvetica", size=14)
    for number in range(1, pages + 1):
        pdf.add_page()
        for line in range(30):
            pdf.cell(text=f"Page {number}, line {line}: quarterly figures, outlook and risks.")
            pdf.ln(7)
        pdf.rect(20, 240, 40 + number % 100, 20, style="F")
    return bytes(pdf.output())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def render(pages: int = 200) -> dict[str, Any]:
    """Pages/s and CPU ms/page: the package's worker processes against one process rendering page by page."""
    import pypdfium2 as pdfium

    data = make_pdf(pages)
    settings = PdfSettings()
    source = SourceObject("bench.pdf", "bench.pdf", "bench.pdf", len(data), "fp", 0.0)
    started, cpu = time.perf_counter(), _children_cpu()
    rendered = sum(1 for document in PdfFormat(pdf=settings).documents(source, data) if document.content)
    ours_s, ours_cpu = time.perf_counter() - started, _children_cpu() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    document = pdfium.PdfDocument(data)
    for page in document:
        width, height = page.get_size()
        image = page.render(scale=min(settings.dpi / 72, settings.max_side / max(width, height))).to_pil()
        image.convert("RGB").save(io.BytesIO(), format="PNG", compress_level=1)
        page.get_textpage().get_text_bounded()
    baseline_s, baseline_cpu = time.perf_counter() - started, time.process_time() - cpu
    if rendered != pages:
        raise RuntimeError(f"rendered {rendered} of {pages} pages")
    return {"pages": pages, "workers": settings.worker_count,
            "ours_pages_s": pages / ours_s, "ours_cpu_ms_page": 1000 * ours_cpu / pages,
            "baseline_pages_s": pages / baseline_s, "baseline_cpu_ms_page": 1000 * baseline_cpu / pages}


def end_to_end(url: str, documents: int = 20, pages: int = 10, repetitions: int = 3) -> dict[str, Any]:
    """Pages/s of a partition of ``documents`` PDFs of ``pages`` pages, and of the load generator sending the
    same pages already rendered (request bodies prepared before timing); medians of interleaved repetitions."""
    from infinity_assets.testing.fake_infinity import MODEL
    from .partition import against_load_generator
    from .workloads import request_bodies

    with tempfile.TemporaryDirectory(prefix="bench-pdf-e2e-") as root:
        folder = Path(root) / "raw" / "images" / "bench"
        folder.mkdir(parents=True)
        rendered = []
        for index in range(documents):
            data = make_pdf(pages)
            (folder / f"report-{index:03d}.pdf").write_bytes(data)
            source = SourceObject(f"report-{index:03d}.pdf", "", "", len(data), "fp", 0.0)
            rendered += [d.content for d in PdfFormat(pdf=PdfSettings()).documents(source, data)]
        ours, limit = against_load_generator(DocumentStore(root), url,
                                             request_bodies(rendered, "image", MODEL, 10), repetitions)
    total = documents * pages
    return {"pages": total, "documents": documents, "ours_pages_s": total / ours, "limit_pages_s": total / limit}


def peak_rss(url: str, pages: int = 1000) -> dict[str, Any]:
    """Embed one ``pages``-page PDF in a child process; its peak RSS (MB), seconds and artifact size."""
    completed = subprocess.run([sys.executable, "-m", "benchmarks.pdf_pages", "memory", "--url", url,
                                "--pages", str(pages)], cwd=REPO, capture_output=True, text=True, check=False)
    if completed.returncode:
        raise RuntimeError(f"the PDF memory benchmark child failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _memory_child(url: str, pages: int) -> None:
    from infinity_assets import pipeline
    from infinity_assets.client.embeddings import InfinityEmbeddings

    from infinity_assets.testing.fake_infinity import MODEL

    with tempfile.TemporaryDirectory(prefix="bench-pdf-") as root:
        folder = Path(root) / "raw" / "images" / PARTITION
        folder.mkdir(parents=True)
        (folder / "long.pdf").write_bytes(make_pdf(pages))
        store = DocumentStore(root)
        baseline = _high_water_mb()
        with InfinityEmbeddings(url=url, model_name=MODEL, hidden_dim=128, max_concurrency=8) as client:
            report = pipeline.embed_partition(store, client, "images", PARTITION)
        if report.embedded != pages or report.failed:
            raise RuntimeError(f"the PDF partition had failures: {report.failures[:3]}")
        print(json.dumps({"pages": pages, "vectors": report.vectors, "seconds": report.seconds,
                          "vector_mb": report.vectors * 128 * 4 / 2**20,
                          "artifact_mb": report.artifact_bytes / 2**20, "baseline_rss_mb": baseline,
                          "peak_rss_mb": _high_water_mb(), "render_workers_cpu_s": _children_cpu()}))


def markdown(results: dict[str, Any]) -> list[str]:
    """The PDF rows of the results table."""
    lines = ["", "### PDF pages", "", "| measure | ours | baseline / bound |", "|---|---:|---|"]
    if "render" in results:
        r = results["render"]
        lines.append(f"| render {r['pages']} Letter pages at 1,024 px, pages/s ({r['workers']} worker processes) | "
                     f"{r['ours_pages_s']:.1f} | one process, pypdfium2 by hand: {r['baseline_pages_s']:.1f} "
                     f"(x {r['ours_pages_s'] / r['baseline_pages_s']:.2f}) |")
        lines.append(f"| render CPU per page (ms, workers) | {r['ours_cpu_ms_page']:.1f} | by hand: "
                     f"{r['baseline_cpu_ms_page']:.1f} |")
    for e in results.get("end_to_end", []):
        lines.append(f"| a partition of {e['documents']} PDFs ({e['pages']} pages) end to end, pages/s | "
                     f"{e['ours_pages_s']:.1f} | load generator sending the pages pre-rendered: "
                     f"{e['limit_pages_s']:.1f} (x {e['ours_pages_s'] / e['limit_pages_s']:.2f}; target 0.8) |")
    if "memory" in results:
        m = results["memory"]
        lines.append(f"| peak RSS of a {m['pages']:,}-page PDF ({m['vector_mb']:.0f} MB of vectors, bandwidth fake) | "
                     f"{m['peak_rss_mb']:.0f} MB | < 500 MB: {'met' if m['peak_rss_mb'] < 500 else 'MISSED'} |")
        lines.append(f"| that partition end to end | {m['seconds']:.1f} s, {m['pages'] / m['seconds']:.1f} pages/s | "
                     f"artifact {m['artifact_mb']:.0f} MB |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="child process of the PDF memory benchmark")
    parser.add_argument("mode", choices=["memory"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pages", type=int, default=1000)
    arguments = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    _memory_child(arguments.url, arguments.pages)
