"""The sample documents of ``make demo`` and ``make dev``: texts (plain, Markdown, JSON Lines), scanned-looking
PNG pages and a small PDF, in three batch folders, plus a labelled query set for the retrieval quality check.

Kept beside the launchers so the tools and the tests that check the demo agree on what was uploaded.
"""
from __future__ import annotations

import io
import json

from PIL import Image, ImageDraw

BUCKET = "documents"
TEXTS = {
    "raw/text/getting-started/lighthouse.txt":
        "The lighthouse keeper painted the spiral staircase bright red every spring.",
    "raw/text/getting-started/vineyards.md":
        "# Island wines\nVolcanic soil makes the vineyards on the island produce unusually sweet grapes.",
    "raw/text/getting-started/notes.jsonl":
        '{"id": "orchestra", "text": "The orchestra rehearsed the symphony twice before the premiere."}\n'
        '{"id": "comet", "text": "Astronomers detected a faint comet passing close to Jupiter."}\n'
        '{"id": "bridge", "text": "Engineers reinforced the suspension bridge after the winter storms."}\n',
    "raw/text/field-reports/cranes.txt": "A migrating flock of cranes rested on the frozen lake at dawn.",
    "raw/text/field-reports/harvest.txt": "Farmers harvested pumpkins early because of the approaching frost.",
}
#: The batch folders (partitions) uploaded, by modality.
BATCHES = {"text": ["field-reports", "getting-started"], "images": ["scanned-pages"]}
#: The text query the demo asks, and the document that answers it.
QUERY, QUERY_ANSWER = "comet near jupiter", "notes.jsonl#comet"
#: Asked of the page images (PNG pages and the pages of the sample PDF); the tiny demo image model is randomly
#: initialised, so its ranking means nothing: the answer shows the path (PDF page -> index -> CLI) works.
PAGE_QUERY = "outlook for the next year"
#: The labelled text queries the ``retrieval_quality`` check measures the text index with.
EVAL_TEXT = [
    {"query": "comet near jupiter", "relevant": ["notes.jsonl#comet"]},
    {"query": "red staircase in the lighthouse", "relevant": ["lighthouse.txt"]},
    {"query": "cranes resting on a frozen lake", "relevant": ["cranes.txt"]},
]


def rendered_page(lines: list[str]) -> bytes:
    """A small 'scanned page' rendered with Pillow, as PNG bytes."""
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((6, 6 + 14 * row), line, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pdf_of_pages(pages: list[list[str]]) -> bytes:
    """A small multi-page PDF: one Pillow-rendered page image per page (each becomes one embedding row)."""
    images = [Image.open(io.BytesIO(rendered_page(lines))).convert("RGB") for lines in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=36.0)
    return buffer.getvalue()


def sample_objects() -> dict[str, bytes]:
    """Every sample object by its key under the store root (``raw/...`` and ``eval/text.jsonl``)."""
    objects = {key: text.encode() for key, text in TEXTS.items()}
    for number in range(1, 4):
        objects[f"raw/images/scanned-pages/page-{number}.png"] = rendered_page(
            [f"Quarterly report, page {number}", "Revenue grew 12%", "in the third quarter."])
    objects["raw/images/scanned-pages/annual-report.pdf"] = pdf_of_pages([
        [f"Annual report, page {number}", "Outlook for the next year", "and the risks we see."]
        for number in range(1, 4)])
    objects["eval/text.jsonl"] = "".join(json.dumps(item) + "\n" for item in EVAL_TEXT).encode()
    return objects
