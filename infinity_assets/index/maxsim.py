"""MaxSim (late-interaction) scoring of a query multi-vector against document multi-vectors.

``score(q, d) = sum over query vectors of the max dot product with any document vector``, as in ColBERT and
ColPali. Everything is vectorised: one matrix product over all documents' vectors, then a segmented max.

Example::

    artifact = read_artifact(fs, "embeddings/text/b1.parquet")
    hits = search(query_vectors, artifact.vectors, artifact.offsets, k=3)   # [(doc_index, score), ...]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """The MaxSim score of one ``(q, d)`` query multi-vector against one ``(n, d)`` document multi-vector."""
    return float((query @ document.T).max(axis=1).sum())


def maxsim_scores(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, *,
                  normalize: bool = False) -> np.ndarray:
    """MaxSim scores of ``query`` against every document at once.

    ``vectors`` is all documents' vectors stacked, ``(N, d)``; document ``i`` owns rows
    ``offsets[i]:offsets[i + 1]`` (every document must have at least one vector). Returns ``(n_docs,)`` float32.
    ``normalize=True`` scores with cosine similarities (every vector L2-normalised first), as the LanceDB index
    does; for normalised models (ColPali, ColQwen2, ColBERT) both are equal.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) < 2:
        return np.zeros(0, dtype=np.float32)
    if np.any(np.diff(offsets) <= 0):
        raise ValueError("every document needs at least one vector (offsets must be strictly increasing)")
    vectors = vectors[offsets[0]:offsets[-1]]
    if normalize:
        query, vectors = normalized(query), normalized(vectors)
    similarities = query @ vectors.T  # (q, N)
    per_document_max = np.maximum.reduceat(similarities, offsets[:-1] - offsets[0], axis=1)  # (q, n_docs)
    return per_document_max.sum(axis=0)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with every row scaled to unit L2 norm (float32)."""
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32, copy=False)


def search(query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray, k: int = 10, *,
           normalize: bool = False) -> list[tuple[int, float]]:
    """The ``k`` best documents for ``query`` as ``(document index, score)``, best first."""
    scores = maxsim_scores(query, vectors, offsets, normalize=normalize)
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k] if k else np.array([], dtype=np.int64)
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best]


def stack(documents: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-document multi-vectors into ``(vectors, offsets)`` for :func:`maxsim_scores` / :func:`search`."""
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.concatenate(documents) if documents else np.zeros((0, 0), np.float32), offsets
