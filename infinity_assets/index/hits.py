"""Search results (:class:`Hit`) and their snippets: the page text of a page, else the start of a text
document read from the document store."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from infinity_assets.storage.documents import DocumentStore

logger = logging.getLogger(__name__)


@dataclass
class Hit:
    """One search result: the cosine MaxSim ``score`` and where the document came from."""

    score: float
    doc_id: str
    partition: str
    source_uri: str
    page: int | None = None
    page_text: str | None = None
    snippet: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json`` line)."""
        return {"score": round(self.score, 6), "doc_id": self.doc_id, "source_uri": self.source_uri,
                "page": self.page, "partition": self.partition, "snippet": self.snippet}


def add_snippets(store: DocumentStore, modality: str, hits: list[Hit], length: int = 160) -> None:
    """Fill ``hit.snippet``: the page text of a page, else the start of a text document read from the store.

    A document deleted or changed since it was indexed keeps an empty snippet.
    """
    wanted: dict[str, list[Hit]] = {}
    for hit in hits:
        if hit.page_text:
            hit.snippet = _shorten(hit.page_text, length)
        elif modality == "text":
            wanted.setdefault(hit.partition, []).append(hit)
    for partition, partition_hits in wanted.items():
        uris = {h.source_uri for h in partition_hits}
        try:
            sources = [s for s in store.list_sources(modality, partition).sources if s.uri in uris]
            texts = {d.doc_id: d.content for d in store.read_documents(modality, sources) if d.content}
        except Exception as exc:  # noqa: BLE001 -- a snippet is a nicety; the hits stand without it
            logger.warning("no snippets for partition %s: %s", partition, exc)
            continue
        for hit in partition_hits:
            hit.snippet = _shorten(str(texts.get(hit.doc_id, "")), length)


def _shorten(text: str, length: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[:length - 1] + "…"
