"""A corpus's background tokens, left out of what the first two search stages compare.

Many pages of a corpus carry the same tokens: blank patches, margins, a running header. Pooling merges them
within a page (:mod:`~infinity_assets.index.pooling`), but across the corpus they are on most pages, so in the
FDE's buckets and in the sign MaxSim they add about the same to every page and drown the few tokens that tell
pages apart. The index learns them once per table: faiss spherical k-means clusters the pooled tokens of a
sample of pages, and a cluster is background when more than ``background_share`` of those pages have a
token near its centre (cosine above :data:`NEAR`).
A row's tokens near a background centre (cosine above :data:`NEAR`) are left out of its ``fde`` code and its
``bits`` (a page keeps at least one token); its ``pooled`` and ``embedding`` keep every token, so stages 3 and 4, and the scores a
search returns, are unchanged. The query is encoded as before.

The clusters are kept beside the table, in ``<index>/<table>.background/<name>.npz`` of the document store,
named in the table's metadata, and frozen: a sync encodes new and changed rows with the clusters the table
was built with. A table learns them at its first build with at least ``background_pages`` pages (a smaller
table leaves nothing out; the sync that brings it to that size rebuilds it once), and again at each rebuild.
Too few tokens for :data:`MIN_CLUSTERS` clusters (pages of short texts) learn none: nothing is left out.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from infinity_assets.index.ivf import write_whole
from infinity_assets.index.maxsim import normalized
from infinity_assets.index.schema import INDEX_DIR, TABLES

#: Clusters learned at most (fewer when the sample holds fewer than :data:`MIN_POINTS` tokens per cluster).
CLUSTERS = 4096
#: Clusters learned at least, else none: a few coarse clusters each hold tokens of many topics, which together
#: are on most pages (pages of a few short texts leave nothing out).
MIN_CLUSTERS = 1024
#: Tokens per cluster at least (faiss asks for 39).
MIN_POINTS = 40
#: Tokens per cluster the k-means trains on at most (a sample).
SAMPLE_PER_CLUSTER = 64
#: Pages whose pooled tokens the clusters are learned from at most.
TRAIN_PAGES = 2000
#: Tokens compared with the background centres per block (bounded memory).
ASSIGN_BLOCK = 1 << 18
#: A cluster's radius at most (cosine; the pooling's default): a near-duplicate is in it however tight the
#: cluster is.
NEAR = 0.85
#: The share of a cluster's members that may lie outside its radius (rare tokens merely nearest its centre).
OUTLIERS = 0.05
#: Tokens compared with every centroid at once when counting pages (bounded memory: ~128 MB of scores).
SHARE_BLOCK = 8192


@dataclass(frozen=True)
class Background:
    """A table's token clusters: their centres, ``(clusters, hidden_dim)`` unit float32 (none: nothing is left
    out), each one's radius, ``(clusters,)`` float32 (the cosine to the centre that a token nearest it must
    exceed to be in it), and which are background, ``(clusters,)`` bool."""

    centres: np.ndarray
    radii: np.ndarray
    common: np.ndarray

    @property
    def name(self) -> str:
        """A name derived from the content (the file's, and what the table's metadata records)."""
        digest = hashlib.sha256(self.centres.tobytes() + self.radii.tobytes() + self.common.tobytes())
        return f"background-{digest.hexdigest()[:16]}"

    @property
    def clusters(self) -> int:
        """How many clusters are background."""
        return int(self.common.sum())

    def foreground(self, pooled: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Which of the stacked ``pooled`` rows (document ``i`` owns ``offsets[i]:offsets[i + 1]``, at least
        one each) are not in a background cluster (nearest its centre, within its radius), ``(rows,)`` bool; a
        document whose tokens all are keeps its first."""
        keep = np.ones(len(pooled), bool)
        if not self.common.any() or not len(pooled):
            return keep
        # The nearest background centre of every row first (a few of the centres), then, only for the rows
        # within its radius, whether another centre is nearer still: the nearest centre's test, in less work.
        unit = normalized(pooled.astype(np.float32))
        common, others = np.flatnonzero(self.common), np.flatnonzero(~self.common)
        similarity, nearest = nearest_centres(self.centres[common], unit)
        inside = np.flatnonzero(similarity > self.radii[common[nearest]])
        if len(inside) and len(others):
            rival, _ = nearest_centres(self.centres[others], unit[inside])
            inside = inside[rival < similarity[inside]]
        keep[inside] = False
        kept = np.add.reduceat(keep.astype(np.int64), offsets[:-1])
        keep[offsets[:-1][kept == 0]] = True
        return keep

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's content."""
        sink = io.BytesIO()
        np.savez(sink, centres=self.centres, radii=self.radii, common=self.common)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Background:
        """Read :meth:`to_bytes`'s output."""
        arrays = np.load(io.BytesIO(data))
        return cls(arrays["centres"], arrays["radii"], arrays["common"])


def learn(pooled: np.ndarray, offsets: np.ndarray, share: float, seed: int = 0) -> Background:
    """The background of a sample of pages given as their stacked ``pooled`` token rows (document ``i`` owns
    ``offsets[i]:offsets[i + 1]``): the k-means clusters of those tokens that more than ``share`` of the
    pages have a token in or near (:func:`page_shares`). A cluster's radius is the cosine to its centre that
    all but :data:`OUTLIERS` of its members exceed, at most :data:`NEAR`: a rare token merely nearest a
    background centre stays out of it."""
    import faiss

    unit = normalized(pooled.astype(np.float32))
    count = min(CLUSTERS, len(unit) // MIN_POINTS)
    if count < MIN_CLUSTERS:
        none = np.zeros((0, pooled.shape[1]), np.float32)
        return Background(none, np.zeros(0, np.float32), np.zeros(0, bool))
    rng = np.random.default_rng(seed)
    limit = count * SAMPLE_PER_CLUSTER
    sample = unit if len(unit) <= limit else unit[np.sort(rng.choice(len(unit), limit, replace=False))]
    kmeans = faiss.Kmeans(unit.shape[1], count, niter=10, spherical=True, seed=seed + 1, verbose=False,
                          max_points_per_centroid=SAMPLE_PER_CLUSTER)
    kmeans.train(np.ascontiguousarray(sample))
    centroids = np.asarray(kmeans.centroids, np.float32)
    similarity, nearest = nearest_centres(centroids, unit)
    radii = np.full(count, NEAR, np.float32)
    order = np.argsort(nearest, kind="stable")
    starts = np.searchsorted(nearest[order], np.arange(count + 1))
    for cluster in np.flatnonzero(np.diff(starts)):
        members = similarity[order[starts[cluster]:starts[cluster + 1]]]
        radii[cluster] = min(NEAR, float(np.quantile(members, OUTLIERS)))
    return Background(centroids, radii, page_shares(centroids, nearest, unit, offsets) > share)


def page_shares(centroids: np.ndarray, nearest: np.ndarray, unit: np.ndarray,
                offsets: np.ndarray) -> np.ndarray:
    """Each centroid's share of the pages (document ``i`` owns unit rows ``offsets[i]:offsets[i + 1]``) with a
    token nearest it or within :data:`NEAR` of it, ``(centroids,)`` float64: a near-duplicate background that
    k-means splits among many centroids is still on most pages for each of them. Pages are taken a block of
    about :data:`SHARE_BLOCK` tokens at a time."""
    pages = len(offsets) - 1
    counts = np.zeros(len(centroids), np.int64)
    start = 0
    while start < pages:
        last_page = int(np.searchsorted(offsets, offsets[start] + SHARE_BLOCK, "right")) - 1
        stop = min(pages, max(start + 1, last_page))
        first, last = offsets[start], offsets[stop]
        rows, near = np.divmod(np.flatnonzero(unit[first:last] @ centroids.T > NEAR), len(centroids))
        page = np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))
        pairs = np.concatenate([page[rows] * len(centroids) + near,
                                page * len(centroids) + nearest[first:last]])
        counts += np.bincount(np.unique(pairs) % len(centroids), minlength=len(centroids))
        start = stop
    return counts / max(pages, 1)


def nearest_centres(centres: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unit row's cosine to its nearest centre and that centre, ``(rows,)`` float32 and int64 (faiss, a
    block at a time). The cosine is computed again row by row: faiss's (BLAS's) can differ in the last bit
    with the rows searched together, and a row's side of a cluster's radius must not depend on its batch."""
    import faiss

    search = faiss.IndexFlatIP(centres.shape[1])
    search.add(np.ascontiguousarray(centres, np.float32))
    similarity, nearest = np.empty(len(unit), np.float32), np.empty(len(unit), np.int64)
    for start in range(0, len(unit), ASSIGN_BLOCK):
        block = np.ascontiguousarray(unit[start:start + ASSIGN_BLOCK])
        found = search.search(block, 1)[1][:, 0]
        similarity[start:start + len(block)] = np.einsum("ij,ij->i", block, centres[found])
        nearest[start:start + len(block)] = found
    return similarity, nearest


def summary(found: Background | None) -> dict[str, int]:
    """What a sync reports of a table's background: how many clusters it has (empty: none learned)."""
    return {"background_clusters": found.clusters} if found is not None else {}


def folder(store: Any, modality: str) -> str:
    """Where the background files of a table live (a path of ``store.fs``)."""
    return store.path(f"{INDEX_DIR}/{TABLES[modality]}.background")


def save(store: Any, modality: str, background: Background) -> None:
    """Write ``background`` beside the table (whole or not at all), as :attr:`Background.name`."""
    write_whole(store.fs, f"{folder(store, modality)}/{background.name}.npz", background.to_bytes())


def load(store: Any, modality: str, name: str) -> Background:
    """The background a table's metadata names; FileNotFoundError if its file is gone."""
    with store.fs.open(f"{folder(store, modality)}/{name}.npz", "rb") as handle:
        return Background.from_bytes(handle.read())


def prune(store: Any, modality: str, keep: str) -> None:
    """Remove the background files but ``keep``'s (those of earlier builds)."""
    try:
        paths = store.fs.ls(folder(store, modality), detail=False)
    except FileNotFoundError:
        return
    for path in paths:
        if path.rsplit("/", 1)[-1] != f"{keep}.npz":
            store.fs.rm(path)
