"""Similarity maps: which image patches of a page matched a query, for models whose vectors are patches.

A late-interaction score is ``sum over query tokens of max over page vectors of q . d`` (MaxSim). When the
page's vectors are the patches of a known grid, ``max over query tokens of cos(q, patch)`` for each patch shows
where the page matched, as the ColPali paper's figures do.

Which models have a known grid (:func:`patch_grid`):

* ColPali (PaliGemma): the page is resized to a square (448 x 448 for ColPali v1.x and ``colpali-tiny``) and
  cut into a fixed grid of 14-pixel patches, 32 x 32 = 1,024 image tokens, which come first in the sequence,
  before the few tokens of the text prompt (``colpali-tiny``: 1,032 vectors per page, 1,024 patches + 8). The
  grid is the largest square that fits the page's vector count, and it covers the whole page (stretched).
* ColQwen2 (Qwen2-VL) has a grid that follows the rendered size (``smart_resize`` to multiples of 28 pixels
  within the processor's pixel budget; ``colqwen2-tiny``: 95 vectors for 256 x 256, 266 for 792 x 1,024), and
  the image tokens sit between chat-template tokens. The processor's pixel budget and the template live on
  the Infinity server, and Infinity returns vectors without saying which ones are image patches, so the
  grid cannot be known here: no map, said in the answer. The same holds for every other model.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infinity_assets.storage.documents import DocumentStore
from infinity_assets.service.pages import DocumentConflict, IndexedDocument

#: Model name fragments (lower case) of PaliGemma-based models: a square grid of patches first.
SQUARE_GRID_MODELS = ("colpali",)


def has_patch_grid(model: str) -> bool:
    """Whether the pages of ``model`` get a similarity map (see the module docstring)."""
    return any(fragment in model.lower() for fragment in SQUARE_GRID_MODELS)


def patch_grid(model: str, n_vectors: int) -> tuple[int, int] | None:
    """``(rows, cols)`` of the image patches of a page of ``model`` with ``n_vectors`` vectors, or None when
    the model's vectors do not map to a known grid (see the module docstring)."""
    if not has_patch_grid(model) or n_vectors < 4:
        return None
    side = math.isqrt(n_vectors)
    return side, side


def no_map_reason(model: str) -> str:
    """Why there is no similarity map for ``model``."""
    return (f"model {model!r} has no known patch grid: only ColPali-style models (a fixed square grid of "
            "patches first, e.g. 32 x 32 at 448 x 448) get a similarity map; ColQwen2's grid follows the "
            "rendered size and Infinity does not say which vectors are patches")


def page_vectors(store: DocumentStore, document: IndexedDocument) -> np.ndarray:
    """The document's vectors (float32) from its batch's artifact, which the index follows: a filtered read
    (row groups whose ``doc_id`` statistics exclude it are skipped)."""
    path = store.artifact_path(document.modality, document.partition)
    with store.fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=["doc_id", "fingerprint", "embedding"],
                              filters=pc.field("doc_id") == document.doc_id)
    if not table.num_rows:
        raise DocumentConflict(f"the artifact of batch {document.partition!r} no longer holds {document.doc_id!r}")
    if table.column("fingerprint")[0].as_py() != document.fingerprint:
        raise DocumentConflict(f"document {document.doc_id!r} was re-embedded since it was indexed; "
                               "its map is served again once the index follows")
    embedding = table.column("embedding").combine_chunks().slice(0, 1)
    values = embedding.flatten().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, np.float32).reshape(-1, embedding.type.value_type.list_size)


def similarity_grid(query: np.ndarray, vectors: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(rows, cols)`` float32: for each patch, the largest cosine similarity with any query token."""
    rows, cols = grid
    patches = _unit(vectors[: rows * cols])
    return (_unit(query) @ patches.T).max(axis=0).reshape(rows, cols).astype(np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def overlay_png(grid: np.ndarray, size: int) -> bytes:
    """An RGBA PNG of ``size`` pixels on its longest side: the grid as a heat map (transparent = the page's
    weakest patches, opaque orange-red = its strongest), stretched over the page as the model stretched it."""
    from PIL import Image

    low, high = float(grid.min()), float(grid.max())
    scaled = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    rgba = np.zeros((*grid.shape, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = (160 * (1 - scaled)).astype(np.uint8)
    rgba[..., 3] = (200 * scaled**2).astype(np.uint8)
    image = Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()
