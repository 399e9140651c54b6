"""Retrieval quality of an index: labelled queries (``eval/<modality>.jsonl``), recall@k, MRR@10 and nDCG@5.

A labelled set is JSON Lines, one query per line: ``{"query": "comet near jupiter", "relevant": ["notes.jsonl#comet"]}``
(``relevant``: doc_ids of the index, at least one). The metrics are the usual binary-relevance ones, averaged
over the queries:

* recall@k: the share of a query's relevant documents among the first ``k`` results;
* MRR@10: ``1 / rank`` of the first relevant result within the first 10 (0 if none);
* nDCG@5: DCG of the first 5 results (gain 1 per relevant result, ``1 / log2(rank + 1)``) over the ideal DCG.

Without a labelled set, :func:`self_recall` measures the staged search against exact search on known-item
queries cut from the indexed documents themselves (the index asset reports it after each sync).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infinity_assets.index.take import take_rows
from infinity_assets.storage.documents import DocumentStore


class EvalSetError(Exception):
    """A labelled query set is malformed; names the file and line."""


@dataclass(frozen=True)
class LabelledQuery:
    """One query and the doc_ids that answer it."""

    query: str
    relevant: frozenset[str]


@dataclass(frozen=True)
class QualityReport:
    """Average metrics over a labelled set."""

    queries: int
    k: int
    recall_at_k: float
    mrr_at_10: float
    ndcg_at_5: float


def eval_set_key(modality: str) -> str:
    """The key of a modality's labelled set under the store root."""
    return f"eval/{modality}.jsonl"


def load_eval_set(store: DocumentStore, modality: str) -> list[LabelledQuery] | None:
    """The labelled queries of ``modality`` from the store, or None if there is no set."""
    path = store.path(eval_set_key(modality))
    if not store.fs.exists(path):
        return None
    return parse_eval_set(store.fs.cat_file(path).decode("utf-8"), store.uri(path))


def parse_eval_set(text: str, where: str = "eval set") -> list[LabelledQuery]:
    """Parse JSON Lines of ``{"query": str, "relevant": [doc_id, ...]}``; raise :class:`EvalSetError` if bad."""
    queries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise EvalSetError(f"{where} line {number}: invalid JSON ({exc})") from None
        query, relevant = (item.get("query"), item.get("relevant")) if isinstance(item, dict) else (None, None)
        if not isinstance(query, str) or not query.strip() or not isinstance(relevant, list) or not relevant \
                or not all(isinstance(r, str) for r in relevant):
            raise EvalSetError(f'{where} line {number}: expected {{"query": "<text>", "relevant": ["<doc_id>", ...]}}')
        queries.append(LabelledQuery(query, frozenset(relevant)))
    if not queries:
        raise EvalSetError(f"{where} holds no query")
    return queries


def recall_at(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    """Share of ``relevant`` found in the first ``k`` of ``ranked``."""
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    """``1 / rank`` of the first relevant result within the first ``k``, else 0."""
    return next((1.0 / rank for rank, doc in enumerate(ranked[:k], 1) if doc in relevant), 0.0)


def ndcg_at(ranked: Sequence[str], relevant: frozenset[str], k: int = 5) -> float:
    """Binary-relevance nDCG of the first ``k`` results."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1) if doc in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


def evaluate(queries: Sequence[LabelledQuery], ranker: Callable[[str, int], Sequence[str]], k: int = 10) -> QualityReport:
    """Average recall@k, MRR@10 and nDCG@5 of ``ranker(query, n) -> doc_ids, best first`` over ``queries``."""
    depth = max(k, 10)
    recall = mrr = ndcg = 0.0
    for item in queries:
        ranked = list(ranker(item.query, depth))
        recall += recall_at(ranked, item.relevant, k)
        mrr += reciprocal_rank(ranked, item.relevant, 10)
        ndcg += ndcg_at(ranked, item.relevant, 5)
    n = len(queries)
    return QualityReport(n, k, recall / n, mrr / n, ndcg / n)


@dataclass(frozen=True)
class SelfRecall:
    """Recall of the default (staged) search against exact search on known-item queries taken from the
    index's own documents: ``recall_at_k`` over ``exact_queries`` (as many as the time budget allowed),
    ``known_item_at_k`` (the source document among the staged search's first ``k``) over ``queries``, and
    ``kept_at_k``: per stage (``fde``, ``hamming``, ``pooled``), the share of the exact top ``k`` among the
    candidates it passed on, over ``exact_queries`` (shares only fall from stage to stage). The stage that
    loses the most is where the recall goes, and its setting (``fde_candidates``, ``hamming_candidates``,
    ``pooled_candidates``) the one to raise."""

    queries: int
    exact_queries: int
    k: int
    recall_at_k: float | None
    known_item_at_k: float | None
    seconds: float
    kept_at_k: dict[str, float] = field(default_factory=dict)


def self_recall(reader: Any, queries: int = 32, k: int = 10, *, settings: Any = None, tokens: int = 16,
                seconds: float = 20.0, seed: int = 0) -> SelfRecall:
    """Known-item queries from the indexed documents themselves: ``tokens`` random token vectors of each of
    ``queries`` random rows of ``reader`` (an :class:`~infinity_assets.index.reader.IndexReader`), searched
    staged (with ``settings``, a :class:`~infinity_assets.index.staged.SearchSettings`) and exactly; the
    exact searches stop once ``seconds`` are spent (each scans the whole index)."""
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(reader.rows, min(queries, reader.rows), replace=False))
    sample = take_rows(reader.dataset, positions, ["doc_id", "partition", "embedding"])
    found = overlap = exact_done = 0
    kept: dict[str, float] = {}
    for row in sample.to_pylist():
        vectors = np.asarray(row["embedding"], dtype=np.float32)
        query = vectors[np.sort(rng.choice(len(vectors), min(tokens, len(vectors)), replace=False))]
        result = reader.search_staged(query, k, settings=settings)
        found += (row["partition"], row["doc_id"]) in {(h.partition, h.doc_id) for h in result.hits}
        if time.monotonic() - started < seconds:
            exact = reader.search_staged(query, k, exact=True).positions
            overlap += _share(exact, result.positions)
            for stage, chosen in result.kept.items():
                kept[stage] = kept.get(stage, 0.0) + _share(exact, chosen)
            exact_done += 1
    n = len(positions)
    return SelfRecall(n, exact_done, k, overlap / exact_done if exact_done else None, found / n if n else None,
                      time.monotonic() - started, {stage: total / exact_done for stage, total in kept.items()})


def _share(wanted: np.ndarray, found: np.ndarray) -> float:
    """Share of the row positions ``wanted`` among ``found`` (1 when nothing is wanted)."""
    return float(np.isin(wanted, found).mean()) if len(wanted) else 1.0
