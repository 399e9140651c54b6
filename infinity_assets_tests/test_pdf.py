"""PDFs on SeaweedFS, embedded page by page through the real Infinity server (colpali-tiny and colqwen2-tiny).

The PDFs are made here: fpdf2 (pages with a text layer, encryption) and Pillow (image-only pages, odd sizes).
"""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pypdfium2 as pdfium
import pytest
from fpdf import FPDF
from PIL import Image

from infinity_assets import InfinityEmbeddings, artifacts
from infinity_assets.pipeline import embed_partition

MAX_SIDE, DPI = 1024, 144.0  # PdfSettings' defaults


def text_pdf(pages: int, title: str = "report", password: str | None = None) -> bytes:
    """A PDF of ``pages`` letter pages, each with a heading and a line of text (a real text layer)."""
    pdf = FPDF(format="letter")
    pdf.set_font("helvetica", size=28)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.cell(text=f"{title} page {number}")
        pdf.ln(20)
        pdf.rect(20 + 10 * number, 60, 80, 40 + 20 * number, style="F")  # something to see on each page
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    return bytes(pdf.output())


def image_pdf(size_pixels: tuple[int, int], resolution: float) -> bytes:
    """A one-page PDF holding one image; its page size is ``size_pixels / resolution`` inches."""
    buffer = io.BytesIO()
    Image.new("RGB", size_pixels, (40, 90, 160)).save(buffer, format="PDF", resolution=resolution)
    return buffer.getvalue()


def rendered_pages(data: bytes, max_side: int = MAX_SIDE, dpi: float = DPI) -> list[bytes]:
    """Each page rendered as the format renders it (by default dpi 144, longest side <= 1024 px), as PNG bytes."""
    document = pdfium.PdfDocument(data)
    pages = []
    for page in document:
        width, height = page.get_size()
        image = page.render(scale=min(dpi / 72, max_side / max(width, height))).to_pil().convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pages.append(buffer.getvalue())
    return pages


@pytest.mark.parametrize("model", ["colpali-tiny", "colqwen2-tiny"])
def test_every_page_of_a_pdf_is_a_row_equal_to_the_page_sent_as_an_image(model, infinity_server, seaweedfs,
                                                                         s3_bucket):
    report_pdf, memo_pdf = text_pdf(3, "report"), text_pdf(2, "memo")
    fs = seaweedfs.filesystem()
    fs.pipe({f"{s3_bucket}/raw/images/b/report.pdf": report_pdf, f"{s3_bucket}/raw/images/b/sub/memo.pdf": memo_pdf,
             f"{s3_bucket}/raw/images/b/photo.png": rendered_pages(memo_pdf)[0]})
    store = _store(seaweedfs, s3_bucket)
    with InfinityEmbeddings(url=infinity_server.url, model_name=model, hidden_dim=128) as client:
        report = embed_partition(store, client, "images", "b")
        expected = {f"report.pdf#page={n}": page for n, page in enumerate(rendered_pages(report_pdf), 1)}
        expected |= {f"sub/memo.pdf#page={n}": page for n, page in enumerate(rendered_pages(memo_pdf), 1)}
        direct = dict(zip(expected, client.embed_images(list(expected.values()))))
    assert report.failed == 0 and report.embedded == 6
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("images", "b"))
    rows = {doc_id: i for i, doc_id in enumerate(artifact.doc_ids)}
    assert set(rows) == set(expected) | {"photo.png"}
    pages = artifact.table.column("page").to_pylist()
    texts = artifact.table.column("page_text").to_pylist()
    for doc_id, vectors in direct.items():
        i = rows[doc_id]
        np.testing.assert_allclose(artifact.vectors_of(i), vectors, rtol=1e-4, atol=1e-5)
        assert pages[i] == int(doc_id.rsplit("=", 1)[1])
        assert texts[i] == f"{'report' if doc_id.startswith('report') else 'memo'} page {pages[i]}"
        assert artifact.source_uris[i].endswith(doc_id.split("#")[0])
    assert pages[rows["photo.png"]] is None and texts[rows["photo.png"]] is None


def test_colqwen2_vector_count_follows_the_render_size(infinity_server, tmp_path):
    """ColQwen2 has dynamic resolution: a smaller max_side means fewer vectors per page."""
    from infinity_assets.storage.documents import DocumentStore, PdfSettings

    (tmp_path / "raw" / "images" / "b").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "b" / "a.pdf").write_bytes(text_pdf(1))
    counts = {}
    with InfinityEmbeddings(url=infinity_server.url, model_name="colqwen2-tiny", hidden_dim=128) as client:
        for side in (256, 1024):
            store = DocumentStore(str(tmp_path), pdf=PdfSettings(max_side=side))
            embed_partition(store, client, "images", "b")
            counts[side] = int(artifacts.read_artifact(store.fs, store.artifact_path("images", "b")).n_vectors[0])
            (tmp_path / "embeddings" / "images" / "b.parquet").unlink()
    assert counts[256] < counts[1024]


def test_bad_pdfs_are_named_failures_and_the_good_ones_are_embedded(infinity_server, seaweedfs, s3_bucket):
    good = text_pdf(2)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("report.txt", "not a pdf")
    bad = {
        "encrypted.pdf": text_pdf(2, password="secret"),
        "truncated.pdf": good[: len(good) // 3],
        "corrupt.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 20,
        "zip-renamed.pdf": archive.getvalue(),
        "empty.pdf": b"",
    }
    huge_page = image_pdf((200, 200), resolution=1.0)  # 200 x 200 inches: rendered at 1024 x 1024, no more
    fs = seaweedfs.filesystem()
    fs.pipe({f"{s3_bucket}/raw/images/b/{name}": data for name, data in
             {**bad, "good.pdf": good, "huge-page.pdf": huge_page}.items()})
    store = _store(seaweedfs, s3_bucket, max_pages=50)
    fs.pipe({f"{s3_bucket}/raw/images/b/too-long.pdf": text_pdf(51)})
    with InfinityEmbeddings(url=infinity_server.url, model_name="colpali-tiny", hidden_dim=128) as client:
        report = embed_partition(store, client, "images", "b")
        assert client.health()  # the real server is still healthy
    reasons = dict(report.failures)
    assert set(reasons) == {*bad, "too-long.pdf"}
    assert "encrypted with a password" in reasons["encrypted.pdf"]
    assert "corrupt or truncated" in reasons["truncated.pdf"] and "corrupt or truncated" in reasons["corrupt.pdf"]
    assert "ZIP archive" in reasons["zip-renamed.pdf"]
    assert "empty file" in reasons["empty.pdf"]
    assert "51 pages is over max_pages_per_document=50" in reasons["too-long.pdf"]
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("images", "b"))
    assert sorted(artifact.doc_ids) == ["good.pdf#page=1", "good.pdf#page=2", "huge-page.pdf#page=1"]
    sidecar = artifacts.read_failures(store.fs, store.artifact_path("images", "b"))
    assert {f["doc_id"] for f in sidecar["failures"]} == set(reasons)
    assert {f["kind"] for f in sidecar["failures"]} == {"document"}  # a new version of the file is needed


def test_an_unchanged_pdf_is_reused_whole_and_a_changed_one_re_embedded_whole(infinity_server, tmp_path):
    from infinity_assets.storage.documents import DocumentStore

    batch = tmp_path / "raw" / "images" / "b"
    batch.mkdir(parents=True)
    (batch / "a.pdf").write_bytes(text_pdf(3, "first"))
    (batch / "b.pdf").write_bytes(text_pdf(2, "second"))
    store = DocumentStore(str(tmp_path))
    with InfinityEmbeddings(url=infinity_server.url, model_name="colpali-tiny", hidden_dim=128) as client:
        first = embed_partition(store, client, "images", "b")
        again = embed_partition(store, client, "images", "b")
        (batch / "b.pdf").write_bytes(text_pdf(4, "second, revised"))
        changed = embed_partition(store, client, "images", "b")
    assert (first.embedded, first.reused) == (5, 0)
    assert (again.embedded, again.reused) == (0, 5)
    assert (changed.embedded, changed.reused) == (4, 3)
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("images", "b"))
    texts = dict(zip(artifact.doc_ids, artifact.table.column("page_text").to_pylist()))
    assert texts["a.pdf#page=3"] == "first page 3" and texts["b.pdf#page=4"] == "second, revised page 4"
    assert artifacts.check_schema(store.fs, store.artifact_path("images", "b"), 128).passed


def test_pages_drawn_with_other_pdf_settings_are_embedded_again_and_the_artifact_records_the_new_ones(
        infinity_server, tmp_path):
    from infinity_assets.storage.documents import DocumentStore, PdfSettings

    batch = tmp_path / "raw" / "images" / "b"
    batch.mkdir(parents=True)
    (batch / "a.pdf").write_bytes(text_pdf(2, "first"))
    Image.new("RGB", (64, 48), (10, 200, 30)).save(batch / "photo.png")
    path = DocumentStore(str(tmp_path)).artifact_path("images", "b")
    with InfinityEmbeddings(url=infinity_server.url, model_name="colpali-tiny", hidden_dim=128) as client:
        small = embed_partition(DocumentStore(str(tmp_path), pdf=PdfSettings(max_side=400)), client, "images", "b")
        recorded = artifacts.read_index(DocumentStore(str(tmp_path)).fs, path)[0]
        assert (recorded["pdf_max_side"], recorded["pdf_dpi"]) == ("400", "144.0")
        same = embed_partition(DocumentStore(str(tmp_path), pdf=PdfSettings(max_side=400, dpi=144)), client,
                               "images", "b")  # the same settings, the dpi written as an int
        larger = embed_partition(DocumentStore(str(tmp_path)), client, "images", "b")
    assert (small.embedded, small.reused) == (3, 0) and (same.embedded, same.reused) == (0, 3)
    assert (larger.embedded, larger.reused) == (2, 1)  # the pages again, the photo kept
    assert artifacts.read_index(DocumentStore(str(tmp_path)).fs, path)[0]["pdf_max_side"] == "1024"


def _store(seaweedfs, bucket: str, **pdf: object):
    from infinity_assets.storage.documents import DocumentStore, PdfSettings

    return DocumentStore(f"s3://{bucket}", pdf=PdfSettings(**pdf), **seaweedfs.storage_options())


def _break_page_2(monkeypatch, renderer: str, of_pdfs_with_pages: int) -> None:
    """Make the renderer crash (exit code 3) or hang on page 2 of the PDFs of ``of_pdfs_with_pages`` pages.

    Workers are forked, so a patched page renderer behaves like PDFium crashing or hanging on a hostile page."""
    import os
    import time

    from infinity_assets.storage.formats import pdf_render

    real_render = pdf_render.render_page

    def hostile(document, number, settings):
        if len(document) == of_pdfs_with_pages and number == 1:
            if renderer == "crash":
                os._exit(3)
            time.sleep(60)
        return real_render(document, number, settings)

    monkeypatch.setattr(pdf_render, "render_page", hostile)


@pytest.mark.parametrize("renderer, reason", [
    ("crash", "the PDF renderer crashed on page 2 (exit code 3)"),
    ("hang", "rendering page 2 took longer than 1 s"),
])
def test_a_renderer_that_crashes_or_hangs_fails_only_its_pdf(renderer, reason, infinity_server, tmp_path,
                                                             monkeypatch):
    import time

    from infinity_assets.storage.documents import DocumentStore, PdfSettings

    _break_page_2(monkeypatch, renderer, of_pdfs_with_pages=3)
    batch = tmp_path / "raw" / "images" / "b"
    batch.mkdir(parents=True)
    (batch / "hostile.pdf").write_bytes(text_pdf(3))
    (batch / "fine.pdf").write_bytes(text_pdf(2))
    store = DocumentStore(str(tmp_path), pdf=PdfSettings(page_timeout=1.0, workers=1))
    started = time.monotonic()
    with InfinityEmbeddings(url=infinity_server.url, model_name="colpali-tiny", hidden_dim=128) as client:
        report = embed_partition(store, client, "images", "b")
    assert time.monotonic() - started < 30
    reasons = dict(report.failures)
    assert reason in reasons["hostile.pdf#page=2"]
    assert "the pages after page 2 (up to 3) were not rendered" in reasons["hostile.pdf"]
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("images", "b"))
    assert sorted(artifact.doc_ids) == ["fine.pdf#page=1", "fine.pdf#page=2", "hostile.pdf#page=1"]


# The render pool (formats/pdf_render.py): one pool of worker processes for a run of PDFs, without a server.

def _sources(files: dict[str, bytes]) -> list[tuple]:
    from infinity_assets.storage.store import SourceObject

    return [(SourceObject(key, f"file:///b/{key}", f"/b/{key}", len(data), f"fp-{key}", 0.0), data)
            for key, data in files.items()]


def _render(files: dict[str, bytes], **settings: object) -> list:
    from infinity_assets.storage.documents import PdfSettings
    from infinity_assets.storage.formats.pdf import PdfFormat

    return list(PdfFormat(pdf=PdfSettings(**settings)).documents_of(_sources(files)))


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _render_processes() -> list:
    import multiprocessing

    return [p for p in multiprocessing.active_children() if p.name == "pdf-render"]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_the_pages_of_many_pdfs_come_out_in_order_with_their_doc_ids_and_texts(workers):
    counts = {"a.pdf": 1, "b.pdf": 3, "c.pdf": 2, "d.pdf": 5, "e.pdf": 1}
    files = {key: text_pdf(pages, key) for key, pages in counts.items()}
    files = {**dict(list(files.items())[:2]), "empty.pdf": b"", "corrupt.pdf": b"%PDF-1.7\n" + bytes(300),
             **dict(list(files.items())[2:])}
    documents = _render(files, workers=workers)
    expected = [(f"{key}#page={n}", n) if key in counts else (key, None)
                for key in files for n in range(1, counts.get(key, 1) + 1)]
    assert [(d.doc_id, d.page) for d in documents] == expected
    for document in documents:
        key = document.doc_id.split("#")[0]
        assert document.fingerprint == f"fp-{key}" and document.source_uri == f"file:///b/{key}"
        if key in counts:
            assert document.error is None and document.page_text == f"{key} page {document.page}"
            expected_pixels = _pixels(rendered_pages(files[key])[document.page - 1])
            np.testing.assert_array_equal(_pixels(document.content), expected_pixels)
    assert [d.doc_id for d in documents if d.error] == ["empty.pdf", "corrupt.pdf"]


@pytest.mark.parametrize("renderer, reason", [
    ("crash", "the PDF renderer crashed on page 2 (exit code 3)"),
    ("hang", "rendering page 2 took longer than 1 s"),
])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_crash_or_hang_in_one_pdf_does_not_affect_the_next_pdfs_of_the_pool(renderer, reason, workers,
                                                                              monkeypatch):
    import time

    _break_page_2(monkeypatch, renderer, of_pdfs_with_pages=4)
    files = {"first.pdf": text_pdf(3, "first"), "hostile.pdf": text_pdf(4, "hostile"),
             "next.pdf": text_pdf(3, "next"), "last.pdf": text_pdf(1, "last")}
    started = time.monotonic()
    documents = _render(files, workers=workers, page_timeout=1.0)
    assert time.monotonic() - started < 20
    failures = {d.doc_id: d.error for d in documents if d.error}
    assert set(failures) == {"hostile.pdf#page=2", "hostile.pdf"}
    assert reason in failures["hostile.pdf#page=2"]
    assert "the pages after page 2 (up to 4) were not rendered" in failures["hostile.pdf"]
    assert [d.doc_id for d in documents if not d.error] == [
        "first.pdf#page=1", "first.pdf#page=2", "first.pdf#page=3", "hostile.pdf#page=1",
        "next.pdf#page=1", "next.pdf#page=2", "next.pdf#page=3", "last.pdf#page=1"]
    assert not _render_processes()


def test_a_worker_killed_from_outside_fails_only_its_page_and_is_replaced(tmp_path, monkeypatch):
    """As the OOM killer would: the page it was rendering fails, a fresh process renders the next PDF."""
    import os
    import signal
    import threading
    import time

    from infinity_assets.storage.formats import pdf_render

    real_render = pdf_render.render_page
    rendering = tmp_path / "rendering"

    def slow_on_victim(document, number, settings):
        if len(document) == 2 and number == 0:  # page 1 of victim.pdf: say who renders it, then take long
            rendering.write_text(str(os.getpid()))
            time.sleep(60)
        return real_render(document, number, settings)

    def kill_the_renderer():
        deadline = time.monotonic() + 20
        while not rendering.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(int(rendering.read_text()), signal.SIGKILL)

    monkeypatch.setattr(pdf_render, "render_page", slow_on_victim)
    killer = threading.Thread(target=kill_the_renderer)
    killer.start()
    documents = _render({"victim.pdf": text_pdf(2, "victim"), "next.pdf": text_pdf(3, "next")}, workers=1)
    killer.join()
    outcome = [(d.doc_id, d.error) for d in documents]
    assert outcome[0][0] == "victim.pdf#page=1"
    assert "the PDF renderer crashed on page 1 (exit code -9)" in outcome[0][1]
    assert outcome[1][0] == "victim.pdf" and "the pages after page 1 (up to 2)" in outcome[1][1]
    assert outcome[2:] == [("next.pdf#page=1", None), ("next.pdf#page=2", None), ("next.pdf#page=3", None)]
    assert not _render_processes()


def test_no_render_process_is_left_after_the_pages_are_taken_or_the_reader_stops_early():
    from infinity_assets.storage.documents import PdfSettings
    from infinity_assets.storage.formats.pdf import PdfFormat

    files = _sources({"a.pdf": text_pdf(5), "b.pdf": text_pdf(5)})
    documents = PdfFormat(pdf=PdfSettings(workers=2)).documents_of(files)
    assert next(documents).doc_id == "a.pdf#page=1"
    assert len(_render_processes()) == 2
    documents.close()  # a consumer that stops early (an exception, a break) closes the generator
    assert not _render_processes()
    assert len(list(PdfFormat(pdf=PdfSettings(workers=2)).documents_of(files))) == 10
    assert not _render_processes()


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 101), (1024, 792)])
def test_page_pngs_are_lossless_and_pass_the_clients_check(shape):
    """The renderer's own PNG writer (Sub filter, zlib): Pillow decodes exactly the pixels, the client's PNG
    structure check accepts it, also from a strided view like PDFium's bitmaps."""
    from infinity_assets.client import wire
    from infinity_assets.storage.formats import pdf_render

    rng = np.random.default_rng(sum(shape))
    padded = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    rgb = padded[:, :, :3]  # not contiguous, as a bitmap with row padding is not
    png = pdf_render.png_bytes(rgb)
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.mode == "RGB" and decoded.size == (shape[1], shape[0])
        np.testing.assert_array_equal(np.asarray(decoded), rgb)
    if min(shape) >= wire.MIN_IMAGE_SIDE:
        assert wire.image_data_uri(png).startswith("data:image/png;base64,")
