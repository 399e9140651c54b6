"""``--only index``: two-stage search against exact MaxSim, LanceDB's multi-vector search and public engines.

Corpora (:mod:`benchmarks.corpora`, cached under ``.cache/bench/``): (c) synthetic structured ColPali-sized
pages (1,031 x 128) at 10,000, 20,000 and 100,000 pages, 200 known-item queries of 20 vectors drawn from the
first 10,000 pages; a needle-in-a-haystack set (5,000 near-duplicate pages, 200 needles); (a) the real MiniLM
ColBERT vectors of texlive's manuals (7,927 pages, 300 sentence queries); (b) the labelled retrieval set of
the tests (30 documents, 5-word queries, real server).

Each engine runs alone in a fresh process (:mod:`benchmarks.index_engines`): p50/p95 latency over the
queries after 3 warm-up queries (query embedding excluded), recall@10 against the exact top-10 (ground truth
cached per query set, its CPU cost printed), known-item hit@10 and MRR, bytes per page, and resident memory
per indexed page (RSS after the queries minus RSS before opening, the engine's libraries already imported). Engines too slow for a size (numpy exact,
LanceDB flat) are measured at a smaller size and extrapolated linearly in vectors, marked so. Index builds
are cached per corpus, size and engine source (a change of ``infinity_assets/index`` rebuilds); their build
time is the one measured when built. ``--quick`` runs the same at small sizes in a few minutes.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import corpora
from benchmarks.index_engines import dir_bytes, run_engine
from infinity_assets.index import local_copy

SCRATCH = corpora.CACHE / "scratch"
BUILDS = corpora.CACHE / "builds"

FULL = {"sizes": (10_000, 100_000), "queries": 200, "query_pages": 10_000, "gt_pages": 100_000,
        "gt_queries": 100, "numpy_pages": 10_000, "numpy_queries": 30, "exact_queries": 10, "lance_pages": 1_000,
        "lance_flat_queries": 10, "lance_ann_queries": 30, "public_pages": 10_000, "qdrant_pages": 500,
        "loose_pages": 20_000, "codes": 1_000_000, "needle": (5_000, 200), "sync": (4, 500),
        "table_sync_pages": 1_000, "texlive_lance_flat_queries": 10, "real_pages": None}
QUICK = {"sizes": (500, 1_000), "queries": 50, "query_pages": 500, "gt_pages": 1_000,
         "gt_queries": 50, "numpy_pages": 500, "numpy_queries": 10, "exact_queries": 10, "lance_pages": 200,
         "lance_flat_queries": 5, "lance_ann_queries": 10, "public_pages": 500, "qdrant_pages": 200,
         "loose_pages": 1_000, "codes": 20_000, "needle": (500, 30), "sync": (2, 100),
         "table_sync_pages": 100, "texlive_lance_flat_queries": 5, "real_pages": 500}
#: Sections that need the largest table of :data:`FULL` (skipped by a run at fewer pages).
AT_FULL_SIZE = ("million", "table_sync")


def at_pages(pages: int) -> dict[str, Any]:
    """:data:`FULL` with ``pages`` as its largest synthetic table (10,000 and ``pages``, or ``pages`` alone;
    ground truth at ``pages``): the whole section less its full-size builds (~30 minutes of builds at 10,000
    against ~2 hours), for a change of the search measured on a machine without the 100,000-page cache."""
    sizes = tuple(sorted({min(10_000, pages), pages}))
    return {**FULL, "sizes": sizes, "gt_pages": pages, "query_pages": min(FULL["query_pages"], pages),
            "numpy_pages": min(FULL["numpy_pages"], pages), "public_pages": min(FULL["public_pages"], pages),
            "full_size_sections": False}
#: The rows beside the default (1,500 / 150 / 30, the flat first stage), on both token mixes: more sign MaxSim
#: candidates, more FDE candidates (an earlier default), no weighted scan, more and fewer candidates at every
#: stage, and no stage 3 (an earlier default: the rerank reads all 100).
MORE_POOLED = ("two-stage, 1,500 / 200 / 30", {"hamming_candidates": 200})
SIDE_ROWS = (MORE_POOLED,
             ("two-stage, 2,000 / 150 / 30 (an earlier default)", {"fde_candidates": 2000}),
             ("two-stage, stage 1 without the weighted scan", {"fde_shortlist": 1}),
             ("two-stage, 4,000 / 200 / 40", {"fde_candidates": 4000, "hamming_candidates": 200, "pooled_candidates": 40}),
             ("two-stage, 1,000 / 50 / 20", {"fde_candidates": 1000, "hamming_candidates": 50, "pooled_candidates": 20}),
             ("two-stage without stage 3 (an earlier default, 2,000 / 100, rerank of 100)", {"fde_candidates": 2000, "hamming_candidates": 100,
                                                                                      "pooled_candidates": 100}))
#: The previous release's numpy stages, with the candidates they had (2,000 / 100).
LAST_ROUND = {"mode": "last-round", "search": {"fde_candidates": 2000, "hamming_candidates": 100}}
#: Stage 3 reading the table per query instead of the reader's local copy of its column.
NO_COPY = ("two-stage, stage 3 read from the table (no local copy)", {"local_copy": False})
#: Stage 2's codes held in memory instead of read per query from the local copy.
HELD = ("two-stage, stage 2's codes held in memory (hold_bits=True; an earlier default)", {"hold_bits": True})
#: The rerank's rows read from the reader's local copy too (``copy_originals``), a copy of its own, removed
#: after its row (it is about the size of the table: run only when the disk holds it twice).
COPY_ORIGINALS = ("two-stage, the rerank's rows from the local copy too (copy_originals=True)",
                  {"copy_originals": True, "local_copy": str(SCRATCH / "originals-copies")})
#: On S3, the rerank's rows read from the table per query (the default before ``copy_originals="auto"``).
RERANK_FROM_S3 = ("the rerank's rows read from S3 (copy_originals=False, the previous default)",
                  {"copy_originals": False})
#: The IVF probed (32 lists of sqrt(pages)).
IVF_PROBED = {"fde_probes": 32}
DEFAULT_LABEL = "two-stage (local disk)"
#: The default search on the same pages indexed without leaving the background out of stages 1-2 (the
#: encoding before it, ``background_share=1.0``): the baseline of the default row, its own build.
BACKGROUND_KEPT = ("two-stage, background tokens kept in stages 1-2 (background_share=1.0, the previous "
                   "default)", {"encoding": {"background_share": 1.0}})
#: The default search on the same pages in a table of Lance's file format 2.0 (the index writes pylance 14's
#: default, 2.2: :data:`infinity_assets.index.schema.FILE_VERSION`), its own build: a random ``take`` of
#: whole float16 pages costs less CPU in 2.0.
FORMAT_2_0 = ("two-stage, table in Lance's file format 2.0 (the index writes 2.2)", {"file_version": "2.0"})
#: The default search on an index that keeps the rerank's vectors in float32 (``originals``), on the real
#: pages: their exact ground truth is float32 MaxSim of the model's own vectors, not of float16 ones.
ORIGINALS_FLOAT32 = "two-stage, vectors kept in float32 (originals=float32)"


MUVERA = "muvera-python FDE (flat dot) + float16 rerank of 100"
#: Why fast-plaid is not in the tables (checked with pip in .cache/bench/venv-plaid, torch pinned to 2.13.0).
FAST_PLAID = ("does not install with torch pinned to 2.13.0: fast-plaid 1.7.0 requires torch==2.11.0; the "
              "1.1.0 the resolver falls back to crashes (SIGSEGV) in create() against torch 2.13")


def _engine_version() -> str:
    """The row format, default encoding and data file bound of the two-stage index: a cached build is reused
    by any code that writes the same rows (a change of the search code, or of the first-stage sidecar, does
    not rebuild)."""
    from infinity_assets.index.rows import ROW_FORMAT
    from infinity_assets.index.schema import DATA_FILE_BYTES, FILE_VERSION, EncodingSettings

    key = f"{ROW_FORMAT}:{EncodingSettings().rows_json()}:{FILE_VERSION}:{DATA_FILE_BYTES}"
    digest = hashlib.sha256(key.encode())
    return digest.hexdigest()[:12]


def _build_root(engine: str, name: str, version: str = "") -> str:
    """The cache folder of one build; a two-stage build of the previous row format is upgraded in place (as a
    sync upgrades a user's index: :func:`infinity_assets.index.sync.add_missing_columns`), older versions of
    the same build are removed (disk is shared)."""
    folder = BUILDS / f"{engine}-{name}"
    if version:
        for stale in BUILDS.glob(f"{engine}-{name}-*"):
            if not stale.name.startswith(f"{engine}-{name}-{version}"):  # (its -partN folders too)
                for table in stale.glob("index/*.lance"):  # the readers' local copies of its tables go with it
                    shutil.rmtree(local_copy.table_folder(corpora.CACHE / "copies", str(table)), ignore_errors=True)
                shutil.rmtree(stale, ignore_errors=True)
        folder = BUILDS / f"{engine}-{name}-{version}"
    return str(folder)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


def _quality(top: list[list[int]], exact: Any, known: list[int], k: int = 10) -> dict[str, Any]:
    """recall@k against the exact top-k, known-item hit@k and MRR@10 of an engine's answers. ``exact``: per
    query the exact top ``k``, possibly followed by the pages tied with the ``k``-th
    (:func:`corpora.tied_top_k`), any of which counts as exact."""
    out: dict[str, Any] = {}
    if exact is not None:
        hits = [min(k, len(set(t[:k]) & set(e))) for t, e in zip(top, exact)]
        out["recall_at_10"] = float(np.mean(hits)) / k
    ranks = [t.index(p) + 1 if p in t else None for t, p in zip(top, known) if p >= 0]  # -1: page not indexed
    if ranks:
        out["known_hit_at_10"] = float(np.mean([r is not None and r <= 10 for r in ranks]))
        out["known_mrr_at_10"] = float(np.mean([1 / r if r and r <= 10 else 0.0 for r in ranks]))
    return out


def _row(name: str, result: dict[str, Any], pages: int, vectors_per_page: float, exact: Any,
         known: list[int], *, measured_pages: int | None = None, note: str = "") -> dict[str, Any]:
    """One table row from an engine's result (``measured_pages``: it ran at that size, extrapolated to ``pages``)."""
    if "error" in result:
        return {"engine": name, "pages": pages, "error": result["error"], "note": note}
    row = {"engine": name, "pages": pages, "queries": len(result["seconds"]), **_percentiles(result["seconds"]),
           "cpu_p50_ms": statistics.median(result["cpu_seconds"]) * 1000,
           "rss_bytes_per_page": (result["rss_after"] - result["rss_before"]) / (measured_pages or pages),
           "info": result.get("info", {}), "note": note, "page_cache_dropped": result.get("page_cache_dropped")}
    if measured_pages and measured_pages != pages:
        factor = pages / measured_pages
        row.update(p50_ms=row["p50_ms"] * factor, p95_ms=row["p95_ms"] * factor,
                   cpu_p50_ms=row["cpu_p50_ms"] * factor, extrapolated_from=measured_pages)
    else:
        row.update(_quality(result["top"], exact, known))
    info = row["info"]
    if "bytes_per_page" in info:
        row["stage12_bytes_per_page"] = info["bytes_per_page"].get("stages_1_2")
        row["index_bytes_per_page"] = info["bytes_per_page"].get("total")
    elif "index_bytes" in info:
        row["index_bytes_per_page"] = info["index_bytes"] / (measured_pages or pages)
    return row


def _kept_by_stage(result: dict[str, Any]) -> dict[str, float] | None:
    """The share of the exact top 10 each stage of a run with ``exact_top`` passed on (None if it failed)."""
    return result.get("info", {}).get("kept_at_10")


def _kept_text(kept: dict[str, float]) -> str:
    return ", ".join(f"{stage} {share:.3f}" for stage, share in kept.items())


def _print(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"    {row['engine']} ({row['pages']:,} pages): not run: {row['error']}", flush=True)
        return
    extra = "".join(f", {key} {row[key]:.3f}" for key in ("recall_at_10", "known_hit_at_10") if key in row)
    extra += f", exact top 10 kept by stage {_kept_text(row['kept_at_10'])}" if row.get("kept_at_10") else ""
    print(f"    {row['engine']} ({row['pages']:,} pages{', extrapolated' if 'extrapolated_from' in row else ''}): "
          f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms{extra}, "
          f"RSS {row['rss_bytes_per_page']:,.0f} B/page", flush=True)


# ------------------------------------------------------------------------------------------- sections
def synthetic(cfg: dict[str, Any]) -> dict[str, Any]:
    """(c): every engine on the synthetic pages (tight token mix), ground truth at ``gt_pages``."""
    corpus = corpora.SyntheticPages()
    top = max(cfg["sizes"])
    source = corpora.SyntheticSource(corpus, cached=top)
    queries = corpora.synthetic_queries(corpus, cfg["query_pages"], cfg["queries"])
    vectors, known = [q.vectors for q in queries], [q.page for q in queries]
    started = time.perf_counter()
    judged = queries[:cfg["gt_queries"]]  # recall@10 over these (latency over all)
    scores, gt_cpu = corpora.exact_scores(source, judged, cfg["gt_pages"])
    gt = {"pages": cfg["gt_pages"], "queries": len(judged), "cpu_seconds_this_run": gt_cpu,
          "wall_seconds": time.perf_counter() - started, "cpu_seconds_per_1000_pages": _gt_cost(source.name, judged)}
    exact = {n: corpora.top_k(scores[:, :n], 10) for n in cfg["sizes"] if n <= cfg["gt_pages"]}
    rows: list[dict[str, Any]] = []
    version = _engine_version()

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        _print(row)

    def cached(spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "corpus": "synthetic", "mix": "tight", "cached": top}

    n, few = cfg["numpy_pages"], cfg["numpy_queries"]
    known_n = [p if p < n else -1 for p in known]
    numpy_result = run_engine(cached({"engine": "numpy", "pages": n}), vectors[:few], SCRATCH)
    for size in cfg["sizes"]:
        add(_row("numpy exact (float32 in RAM)", numpy_result, size, corpora.PAGE_VECTORS,
                 exact[n][:few] if size == n else None, known_n[:few], measured_pages=n))
    builds = {size: _build_root("two-stage", f"synthetic-{size}", version) for size in cfg["sizes"]}

    def default_spec(size: int) -> dict[str, Any]:
        return cached({"engine": "two-stage", "pages": size, "root": builds[size], "marker": builds[size] + "/built.json"})

    def two_stage(size: int, **extra: Any) -> dict[str, Any]:
        return run_engine({**default_spec(size), **extra}, extra.pop("queries", vectors), SCRATCH)

    few = cfg["exact_queries"]
    exact_result = run_engine(cached({"engine": "two-stage", "pages": n, "root": builds[n],
                                      "marker": builds[n] + "/built.json", "mode": "exact"}), vectors[:few], SCRATCH)
    for size in cfg["sizes"]:
        add(_row("exact, compiled kernels (float16 on disk)", exact_result, size, corpora.PAGE_VECTORS,
                 exact[n][:few] if size == n else None, known_n[:few], measured_pages=n))
    n = cfg["lance_pages"]
    lance_root = _build_root("lancedb", f"synthetic-{n}")
    exact_small = corpora.top_k(scores[:, :n], 10)
    known_small = [p if p < n else -1 for p in known]
    flat = run_engine({"engine": "lancedb", "corpus": "synthetic", "pages": n, "ann": False, "root": lance_root},
                      vectors[:cfg["lance_flat_queries"]], SCRATCH)
    add(_row("LanceDB multi-vector flat", flat, n, corpora.PAGE_VECTORS, exact_small[:cfg["lance_flat_queries"]],
             known_small))
    for size in cfg["sizes"]:
        add(_row("LanceDB multi-vector flat", flat, size, corpora.PAGE_VECTORS, None, known, measured_pages=n))
    ann = run_engine({"engine": "lancedb", "corpus": "synthetic", "pages": n, "ann": True, "root": lance_root,
                      "nprobes": 64, "refine_factor": 30, "xtr_overfetch": 100},
                     vectors[:cfg["lance_ann_queries"]], SCRATCH)
    add(_row("LanceDB IVF-PQ (nprobes 64, refine 30, XTR overfetch 100)", ann, n, corpora.PAGE_VECTORS,
             exact_small[:cfg["lance_ann_queries"]], known_small))
    n = cfg["qdrant_pages"]
    known_q = [p if p < n else -1 for p in known]
    for label, extra in (("Qdrant Edge (multi-vector MaxSim, binary quantization, rescore, oversampling 4)", {}),
                         ("Qdrant Edge (multi-vector MaxSim, float vectors)", {"quantization": False})):
        result = run_engine({"engine": "qdrant-edge", "corpus": "synthetic", "mix": "tight", "cached": top,
                             "pages": n, "root": _build_root("qdrant-edge", f"synthetic-{n}"), **extra},
                            vectors[:50], SCRATCH)
        add(_row(label, result, n, corpora.PAGE_VECTORS, corpora.top_k(scores[:, :n], 10)[:50], known_q[:50]))
    for size in sorted(cfg["sizes"], reverse=True):
        row = _row(DEFAULT_LABEL, two_stage(size), size, corpora.PAGE_VECTORS, exact.get(size), known)
        if size in exact:
            row["kept_at_10"] = _kept_by_stage(two_stage(size, exact_top=exact[size].tolist(),
                                                         queries=vectors[:len(exact[size])]))
        add(row)
        if size == min(cfg["sizes"]):  # the same pages built otherwise: a build of its own each
            for (label, extra), name in ((BACKGROUND_KEPT, "background-kept"), (FORMAT_2_0, "lance-2.0")):
                other = _build_root("two-stage", f"{name}-synthetic-{size}", version)
                other_spec = {"engine": "two-stage", "pages": size, **extra, "root": other,
                              "marker": other + "/built.json"}
                row = _row(label, run_engine(cached(other_spec), vectors, SCRATCH), size,
                           corpora.PAGE_VECTORS, exact.get(size), known)
                if size in exact:
                    row["kept_at_10"] = _kept_by_stage(run_engine(
                        cached({**other_spec, "exact_top": exact[size].tolist()}), vectors[:len(exact[size])],
                        SCRATCH))
                add(row)
        for label, search in SIDE_ROWS:
            add(_row(label, two_stage(size, search=search), size, corpora.PAGE_VECTORS, exact.get(size), known))
        for label, extra in (NO_COPY, HELD):
            add(_row(label, two_stage(size, **extra), size, corpora.PAGE_VECTORS, exact.get(size), known))
        add(with_originals(default_spec(size), vectors, exact.get(size), known))
        add(_row("two-stage, IVF: 32 lists probed", two_stage(size, search=IVF_PROBED), size,
                 corpora.PAGE_VECTORS, exact.get(size), known))
        add(_row("last round's numpy stages (flat FDE, numpy popcounts, float32 copies)",
                 two_stage(size, **LAST_ROUND), size, corpora.PAGE_VECTORS, exact.get(size), known))
    n = cfg["public_pages"]
    add({"engine": "fast-plaid (PLAID)", "pages": n, "error": FAST_PLAID})
    few = cfg["numpy_queries"]  # its rerank converts 100 pages per query in a Python loop: seconds each
    result = run_engine({"engine": "muvera", "corpus": "synthetic", "mix": "tight", "cached": top, "pages": n,
                         "root": _build_root("muvera", f"synthetic-{n}")}, vectors[:few], SCRATCH)
    add(_row(MUVERA, result, n, corpora.PAGE_VECTORS, exact[n][:few] if n in exact else None,
             [p if p < n else -1 for p in known][:few]))
    return {"rows": rows, "ground_truth": gt, "queries": len(queries), "vectors_per_query": corpora.QUERY_VECTORS,
            "page_cache": json.loads((corpora.CACHE / "pages" / f"{source.name[:-4]}-{top}.done").read_text())
            if (corpora.CACHE / "pages" / f"{source.name[:-4]}-{top}.done").exists() else None}


def loose(cfg: dict[str, Any]) -> dict[str, Any]:
    """The second generator (:data:`corpora.LOOSE`: many background patches, loose topics; tokens pool
    badly), default and last round's stages against exact, at ``loose_pages``."""
    n = cfg["loose_pages"]
    corpus = corpora.SyntheticPages(mix=corpora.LOOSE)
    source = corpora.SyntheticSource(corpus, cached=n)
    queries = corpora.synthetic_queries(corpus, min(n, cfg["query_pages"]), cfg["queries"])
    vectors, known = [q.vectors for q in queries], [q.page for q in queries]
    scores, gt_cpu = corpora.exact_scores(source, queries[:cfg["gt_queries"]], n)
    exact = corpora.top_k(scores, 10)
    root = _build_root("two-stage", f"synthetic-loose-{n}", _engine_version())
    spec = {"engine": "two-stage", "corpus": "synthetic", "mix": "loose", "cached": n, "pages": n, "root": root,
            "marker": root + "/built.json"}
    kept_root = _build_root("two-stage", f"background-kept-synthetic-loose-{n}", _engine_version())
    rows = []
    for label, extra in ((DEFAULT_LABEL, {}),
                         (BACKGROUND_KEPT[0], {**BACKGROUND_KEPT[1], "root": kept_root,
                                               "marker": kept_root + "/built.json"}),
                         *((label, {"search": search}) for label, search in SIDE_ROWS),
                         ("last round's numpy stages (flat FDE, numpy popcounts, float32 copies)",
                          LAST_ROUND)):
        rows.append(_row(label, run_engine({**spec, **extra}, vectors, SCRATCH), n, corpora.PAGE_VECTORS, exact,
                         known))
        if label in (DEFAULT_LABEL, BACKGROUND_KEPT[0]):  # the share of the exact top 10 each stage kept
            rows[-1]["kept_at_10"] = _kept_by_stage(run_engine({**spec, **extra, "exact_top": exact.tolist()},
                                                               vectors[:len(exact)], SCRATCH))
        _print(rows[-1])
    rows.append(with_originals(spec, vectors, exact, known))
    _print(rows[-1])
    return {"rows": rows, "pages": n, "queries": len(queries), "ground_truth_cpu_seconds": gt_cpu,
            "mix": corpora.LOOSE.__dict__}


#: The million section's whole-query rows (stages 2-4 on the 100,000-page table's rows).
WHOLE_FLAT, WHOLE_PROBED = "whole query, flat scan (default)", "whole query, IVF: 32 lists probed"


def million(cfg: dict[str, Any]) -> dict[str, Any]:
    """The first stage at ``codes`` (1,000,000) FDE codes: the 100,000-page table's codes and copies of them
    with 1/32 of their bits flipped, an IVF trained and assigned at that size; p50, RSS, and how many of the
    flat scan's candidates the IVF keeps. Then whole queries: the same first stage followed by stages 2-4 on
    the 100,000-page table's rows, each copy standing for another page
    (:class:`~benchmarks.index_engines.FirstStageMillion`)."""
    corpus = corpora.SyntheticPages()
    top = max(cfg["sizes"])
    queries = corpora.synthetic_queries(corpus, cfg["query_pages"], cfg["queries"])
    source_root = _build_root("two-stage", f"synthetic-{top}", _engine_version())
    out = {}
    for label, extra in (("flat scan (default)", {}), ("IVF: 32 lists probed", {"search": IVF_PROBED}),
                         ("IVF: 128 lists probed", {"search": {"fde_probes": 128}}),
                         (WHOLE_FLAT, {"whole_query": True}),
                         (WHOLE_PROBED, {"whole_query": True, "search": IVF_PROBED})):
        result = run_engine({"engine": "fde-1m", "corpus": "synthetic", "pages": cfg["codes"], "from": source_root,
                             **extra}, [q.vectors for q in queries], SCRATCH)
        if "error" in result:
            out[label] = {"error": result["error"]}
        else:
            out[label] = {**_percentiles(result["seconds"]), "cpu_p50_ms": statistics.median(result["cpu_seconds"]) * 1000,
                          "rss_bytes_per_code": (result["rss_after"] - result["rss_before"]) / cfg["codes"],
                          "open_seconds": result["open_seconds"], **result["info"]}
        print(f"    first stage at {cfg['codes']:,} codes ({label}): {out[label]}", flush=True)
    return {"codes": cfg["codes"], "rows": out}


def table_sync(cfg: dict[str, Any]) -> dict[str, Any]:
    """An incremental sync of ``table_sync_pages`` changed pages in the 100,000-page table itself: the rows
    re-encoded from their vectors and upserted in one ``merge_insert`` (what ``sync_index`` writes for
    re-embedded pages; the same vectors, so the table keeps its content), its maintenance
    (:func:`~infinity_assets.index.compaction.compact`) and the IVF update."""
    import pyarrow as pa

    from infinity_assets import index
    from infinity_assets.index import background, ivf
    from infinity_assets.index.compaction import compact
    from infinity_assets.index.rows import encode_rows, vectors_table
    from infinity_assets.index.sync import DEFAULT_CLEANUP_OLDER_THAN
    from infinity_assets.storage.documents import DocumentStore

    top, changed = max(cfg["sizes"]), cfg["table_sync_pages"]
    root = _build_root("two-stage", f"synthetic-{top}", _engine_version())
    store = DocumentStore(root)
    source = corpora.SyntheticSource(corpora.SyntheticPages(), cached=top)
    table = index.open_table(store, "images")
    encoding = index.table_encoding(table)
    name = index.table_background(table)
    found = background.load(store, "images", name) if name else None
    schema = index.index_schema(corpora.DIM, "bench-synthetic", "images", encoding, name)
    pages = np.sort(np.random.default_rng(3).choice(top, changed, replace=False))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rows = encode_rows(vectors_table([corpora.doc_id(int(p)) for p in pages],
                                     [np.asarray(source.pages(int(p), int(p) + 1)[0], np.float32) for p in pages]),
                       "bench", schema, encoding, found)
    timings["encode"] = time.perf_counter() - started
    started = time.perf_counter()
    result = table.merge_insert(["partition", "doc_id"]).when_matched_update_all().when_not_matched_insert_all() \
        .execute(pa.RecordBatchReader.from_batches(schema, rows.to_batches()))
    timings["merge_insert"] = time.perf_counter() - started
    started = time.perf_counter()
    maintenance = compact(table, DEFAULT_CLEANUP_OLDER_THAN)  # what sync_index runs after its commit
    timings["compaction"] = time.perf_counter() - started
    started = time.perf_counter()
    first_stage = ivf.update(store, "images", table, encoding)
    timings["ivf_update"] = time.perf_counter() - started
    out = {"pages": top, "changed_pages": changed, "updated_rows": result.num_updated_rows,
           "seconds": timings, "seconds_per_1000_changed": {k: v / changed * 1000 for k, v in timings.items()},
           "compaction": maintenance, "ivf": first_stage}
    print(f"    sync of {changed:,} changed pages in the {top:,}-page table: {out}", flush=True)
    return out


def with_originals(spec: dict[str, Any], vectors: list[np.ndarray], exact: np.ndarray | None,
                   known: list[int]) -> dict[str, Any]:
    """The row of :data:`COPY_ORIGINALS` over the two-stage engine of ``spec`` (its copy removed after it),
    or an error row when the disk does not have room for that copy and as much to spare."""
    needed, free = dir_bytes(Path(spec["root"])), shutil.disk_usage(corpora.CACHE).free
    if free < 2 * needed:
        return {"engine": COPY_ORIGINALS[0], "pages": spec["pages"],
                "error": f"{free / 1e9:.1f} GB free on the disk, less than twice the copy's {needed / 1e9:.1f} GB"}
    try:
        result = run_engine({**spec, **COPY_ORIGINALS[1]}, vectors, SCRATCH)
    finally:
        shutil.rmtree(COPY_ORIGINALS[1]["local_copy"], ignore_errors=True)
    return _row(COPY_ORIGINALS[0], result, spec["pages"], corpora.PAGE_VECTORS, exact, known)


def _gt_cost(name: str, queries: list[corpora.KnownItem]) -> float | None:
    """CPU seconds per 1,000 pages of the cached ground truth, from the cost file ``exact_scores`` keeps."""
    folder = corpora.CACHE / "ground-truth" / f"{name}-{corpora._queries_key(queries)}"
    costs = [float(p.read_text()) for p in folder.glob("*.cpu")]
    return 1000 * sum(costs) / (len(costs) * corpora.GT_CHUNK) if costs else None


#: The synthetic table the S3 rows upload (one of the run's sizes; default: the smallest).
S3_PAGES_VARIABLE = "INFINITY_BENCH_INDEX_S3_PAGES"


def s3_pages(cfg: dict[str, Any]) -> int:
    """The pages of the table the S3 rows search: ``$INFINITY_BENCH_INDEX_S3_PAGES`` (one of ``cfg``'s sizes,
    ValueError otherwise), else the smallest."""
    pages = int(os.environ.get(S3_PAGES_VARIABLE) or min(cfg["sizes"]))
    if pages not in cfg["sizes"]:
        raise ValueError(f"${S3_PAGES_VARIABLE}={pages}: the S3 rows search one of the run's tables, "
                         f"{list(cfg['sizes'])} (--index-pages sets the largest)")
    return pages


#: Set to 1, the S3 rows move the local build to SeaweedFS instead of copying it (see :func:`s3_two_stage`).
S3_MOVE_BUILD_VARIABLE = "INFINITY_BENCH_INDEX_S3_MOVE_BUILD"


def s3_two_stage(pages: int, local_root: str, searches: list[tuple[str, dict[str, Any]]],
                 vectors: list[np.ndarray], exact: np.ndarray | None,
                 known: list[int], move_build: bool = False) -> list[dict[str, Any]]:
    """The local two-stage index of ``pages`` uploaded once, as it is, to SeaweedFS (S3), and searched there
    by each of ``searches`` (its label, more of the engine's spec), each reader making local copies of its
    own (removed after its row). With ``move_build`` the local build's index is removed after the upload and
    downloaded back after the rows, so the disk holds the table twice, not three times, while the readers
    copy it; its marker is removed meanwhile, so a run stopped before the build is back rebuilds it."""
    from infinity_assets.storage.documents import DocumentStore
    from infinity_assets_dev.seaweedfs import SeaweedFS

    shutil.rmtree(SCRATCH / "seaweedfs", ignore_errors=True)
    with SeaweedFS(SCRATCH / "seaweedfs") as s3:
        bucket = s3.create_bucket()
        options = {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key}
        store = DocumentStore(f"s3://{bucket}/bench", **options)
        started = time.perf_counter()
        index_dir = Path(local_root) / "index"
        for path in sorted(p for p in index_dir.rglob("*") if p.is_file()):  # s3fs's recursive put reads
            store.fs.put_file(str(path), store.path(f"index/{path.relative_to(index_dir)}"))  # files at once
        upload = time.perf_counter() - started
        marker = SCRATCH / f"s3-{bucket}.json"
        marker.write_text(json.dumps({"build_seconds": None, "upload_seconds": upload}))
        build_marker = Path(local_root) / "built.json"
        built = build_marker.read_text() if move_build else ""
        if move_build:
            build_marker.unlink()
            shutil.rmtree(index_dir)
            print("    the local build's index removed: SeaweedFS holds it until the rows are done",
                  flush=True)
        try:
            rows = _s3_rows(pages, bucket, options, marker, upload, searches, vectors, exact, known)
        finally:
            if move_build:
                started = time.perf_counter()
                for path in sorted(store.fs.find(store.path("index"))):
                    local = index_dir / Path(path).relative_to(store.path("index"))
                    local.parent.mkdir(parents=True, exist_ok=True)
                    store.fs.get_file(path, str(local))
                build_marker.write_text(built)
                print(f"    the local build's index downloaded back in {time.perf_counter() - started:.0f} s",
                      flush=True)
    shutil.rmtree(SCRATCH / "seaweedfs", ignore_errors=True)
    return rows


def _s3_rows(pages: int, bucket: str, options: dict[str, str], marker: Path, upload: float,
             searches: list[tuple[str, dict[str, Any]]], vectors: list[np.ndarray], exact: np.ndarray | None,
             known: list[int]) -> list[dict[str, Any]]:
    """One row per search of :func:`s3_two_stage`, on the table uploaded to ``bucket``."""
    rows = []
    for label, extra in searches:
        spec = {"engine": "two-stage", "corpus": "synthetic", "pages": pages,
                "root": f"s3://{bucket}/bench", "store_options": options, "marker": str(marker),
                "local_copy": str(SCRATCH / "seaweedfs-copies"), **extra}
        try:
            result = run_engine(spec, vectors, SCRATCH)
        finally:
            shutil.rmtree(SCRATCH / "seaweedfs-copies", ignore_errors=True)
        choice = result.get("info", {}).get("local_copy_originals")
        note = f"uploaded in {upload:.0f} s" + (f"; the rerank's rows: {choice}" if choice else "")
        rows.append(_row(label, result, pages, corpora.PAGE_VECTORS, exact, known, note=note))
        _print(rows[-1])
    return rows


def on_s3(cfg: dict[str, Any]) -> dict[str, Any]:
    """The S3 rows: the tight mix's two-stage table of :func:`s3_pages` pages (built first if the synthetic
    part has not) uploaded as it is to SeaweedFS and searched there, against exact at that size; the rerank's
    rows copied or not as ``copy_originals="auto"`` decides on the disk left."""
    corpus, top, pages = corpora.SyntheticPages(), max(cfg["sizes"]), s3_pages(cfg)
    queries = corpora.synthetic_queries(corpus, cfg["query_pages"], cfg["queries"])
    vectors, known = [q.vectors for q in queries], [q.page for q in queries]
    exact = None
    if pages <= cfg["gt_pages"]:  # (per 1,000 pages, cached: shared with the synthetic part's)
        source = corpora.SyntheticSource(corpus, cached=top)
        exact = corpora.top_k(corpora.exact_scores(source, queries[:cfg["gt_queries"]], pages)[0], 10)
    on_s3 = "two-stage (S3: SeaweedFS)"
    builds = {"synthetic": [(on_s3, {}), (f"{on_s3}, {RERANK_FROM_S3[0]}", RERANK_FROM_S3[1]),
                            (f"{on_s3}, {NO_COPY[0][11:]}", NO_COPY[1])]}
    if pages == min(cfg["sizes"]):  # the file format 2.0 build is of the smallest table only
        builds["lance-2.0-synthetic"] = [(f"{on_s3}, {FORMAT_2_0[0][11:]}", RERANK_FROM_S3[1])]
    rows: list[dict[str, Any]] = []
    for name, searches in builds.items():
        root = _build_root("two-stage", f"{name}-{pages}", _engine_version())
        spec = {"engine": "two-stage", "corpus": "synthetic", "mix": "tight", "cached": top, "pages": pages,
                "root": root, "marker": root + "/built.json",
                **({"file_version": "2.0"} if name.startswith("lance-2.0") else {})}
        built = {} if Path(spec["marker"]).exists() else run_engine({**spec, "build_only": True}, [], SCRATCH)
        # room for SeaweedFS's copy of the table and the reader's copies of stages 1-3's columns
        needed, free = 1.2 * dir_bytes(Path(root)), shutil.disk_usage(corpora.CACHE).free
        no_room = (f"{free / 1e9:.1f} GB free on the disk, less than the {needed / 1e9:.1f} GB the table's "
                   "upload and the reader's copies need")
        error = built.get("error") or (no_room if free < needed else "")
        if error:
            for label, _ in searches:
                rows.append({"engine": label, "pages": pages, "error": error})
                _print(rows[-1])
            continue
        rows += s3_two_stage(pages, root, searches, vectors, exact, known,
                             move_build=os.environ.get(S3_MOVE_BUILD_VARIABLE) == "1")
    return {"rows": rows, "pages": pages, "queries": len(queries)}


def needles(cfg: dict[str, Any]) -> dict[str, Any]:
    """Top-20 hit rate of the needle pages, exact against two-stage."""
    n_pages, count = cfg["needle"]
    source = corpora.NeedlePages(n_pages=n_pages, needles=count)
    queries = source.queries()
    scores, cpu = corpora.exact_scores(source, queries, n_pages)
    exact_top = corpora.top_k(scores, 20)
    exact_hit = float(np.mean([q.page in set(t) for q, t in zip(queries, exact_top)]))
    spec = {"engine": "two-stage", "corpus": "needle", "pages": n_pages, "needles": count, "k": 20,
            "root": _build_root("two-stage", f"needle-{n_pages}", _engine_version())}
    spec["marker"] = spec["root"] + "/built.json"
    result = run_engine(spec, [q.vectors for q in queries], SCRATCH)
    out = {"pages": n_pages, "needles": count, "exact_hit_at_20": exact_hit, "ground_truth_cpu_seconds": cpu}
    if "error" in result:
        out["error"] = result["error"]
    else:
        out["two_stage_hit_at_20"] = float(np.mean([q.page in set(t) for q, t in zip(queries, result["top"])]))
        out["two_stage_p50_ms"] = _percentiles(result["seconds"])["p50_ms"]
    print(f"    needles: exact hit@20 {exact_hit:.3f}, two-stage {out.get('two_stage_hit_at_20', float('nan')):.3f}",
          flush=True)
    return out


def real(cfg: dict[str, Any]) -> dict[str, Any]:
    """(a): real MiniLM vectors of texlive pages, every engine, known-item sentence queries. The first run
    downloads the PDFs and embeds them with the real server (about 5 minutes here), then reads its cache."""
    corpus = corpora.texlive_corpus()
    n = min(len(corpus.doc_ids), cfg["real_pages"] or len(corpus.doc_ids))
    asked = [q for q in corpus.queries if q.page < n]
    vectors, known = [q.vectors for q in asked], [q.page for q in asked]
    scores, cpu = corpora.exact_scores(corpus, asked, n)
    exact = corpora.top_k(scores, 10)
    tied = corpora.tied_top_k(scores, 10)  # duplicate pages: recall counts any page tied with the 10th
    exact_ndcg = _ndcg_known_item([list(t) for t in exact], known)
    per_page = float(np.mean([len(v) for v in corpus.vectors[:n]]))
    rows = []
    specs = [("numpy exact (float32 in RAM)", {"engine": "numpy"}, vectors),
             ("LanceDB multi-vector flat", {"engine": "lancedb", "ann": False, "build_ann": False},
              vectors[:cfg["texlive_lance_flat_queries"]]),
             ("two-stage (local disk)", {"engine": "two-stage"}, vectors),
             (MORE_POOLED[0], {"engine": "two-stage", "search": MORE_POOLED[1]}, vectors),
             (ORIGINALS_FLOAT32, {"engine": "two-stage", "encoding": {"originals": "float32"}}, vectors),
             (BACKGROUND_KEPT[0], {"engine": "two-stage", **BACKGROUND_KEPT[1]}, vectors),
             (MUVERA, {"engine": "muvera"}, vectors)]
    for label, spec, subset in specs:
        engine = spec["engine"]
        name = "-".join(["texlive", *(f"{k}-{v}" for k, v in spec.get("encoding", {}).items()), str(n)])
        spec = {**spec, "corpus": "texlive", "pages": n,
                "root": _build_root(engine, name, _engine_version() if engine == "two-stage" else "")}
        spec["marker"] = spec["root"] + "/built.json"
        result = run_engine(spec, subset, SCRATCH)
        row = _row(label, result, n, per_page, tied[:len(subset)], known[:len(subset)])
        if "error" not in row:
            row["ndcg_at_5"] = _ndcg_known_item(result["top"], known)
        if label in (DEFAULT_LABEL, ORIGINALS_FLOAT32, BACKGROUND_KEPT[0]) and "error" not in row:
            kept_run = run_engine({**spec, "exact_top": exact.tolist()}, vectors, SCRATCH)
            row["kept_at_10"] = _kept_by_stage(kept_run)
        rows.append(row)
        _print(row)
    rows.append({"engine": "fast-plaid (PLAID)", "pages": n, "error": FAST_PLAID})
    return {"rows": rows, "pages": n, "queries": len(vectors), "vectors_per_page": per_page,
            "exact_ndcg_at_5": exact_ndcg, "queries_with_ties_at_10": sum(len(t) > 10 for t in tied),
            "exact_known_hit_at_10": _quality(exact.tolist(), None, known)["known_hit_at_10"],
            "ground_truth_cpu_seconds": cpu}


def _ndcg_known_item(top: list[list[int]], known: list[int]) -> float:
    """nDCG@5 with the known page as the one relevant result (:func:`infinity_assets.index.evaluation.ndcg_at`)."""
    from infinity_assets.index.evaluation import ndcg_at

    return float(np.mean([ndcg_at(t, frozenset([p]), 5) for t, p in zip(top, known)]))


def sync_cost(cfg: dict[str, Any]) -> dict[str, Any]:
    """First sync, a re-embedded partition and a no-op sync of artifacts (``sync_index``), per 1,000 pages,
    for each token mix (:func:`mix_sync_cost`)."""
    return {mix: mix_sync_cost(cfg, mix) for mix in ("tight", "loose")}


def mix_sync_cost(cfg: dict[str, Any], mix: str) -> dict[str, Any]:
    """:func:`sync_cost` of synthetic pages of one token mix (the first sync learns the table's
    background)."""
    from infinity_assets import index
    from infinity_assets.artifacts import ArtifactWriter
    from infinity_assets.storage.documents import DocumentStore

    parts, per = cfg["sync"]
    corpus = corpora.SyntheticPages(mix=corpora.MIXES[mix])
    root = SCRATCH / f"sync-root-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    store = DocumentStore(str(root))
    store.ensure_artifact_dir("images")

    def publish(number: int) -> None:
        partition = f"p{number:03d}"
        with ArtifactWriter(store.fs, store.artifact_path("images", partition), hidden_dim=corpora.DIM,
                            metadata={"model": "bench-synthetic", "partition": partition}) as writer:
            for page in range(number * per, (number + 1) * per):
                writer.write(corpora.doc_id(page), f"synthetic://{page}", f"fp{page}", corpus.page(page))

    try:
        for number in range(parts):
            publish(number)
        timed = {}
        for name, before in (("first sync", None), ("one partition re-embedded", lambda: publish(0)),
                             ("no change", None)):
            if before:
                before()
            started = time.perf_counter()
            report = index.sync_index(store, "images")
            timed[name] = (time.perf_counter() - started, report)
        out = {"pages": parts * per, "changed_pages": per,
               "first_sync_seconds_per_1000_pages": timed["first sync"][0] / (parts * per) * 1000,
               "sync_seconds_per_1000_changed_pages": timed["one partition re-embedded"][0] / per * 1000,
               "changed_rows": timed["one partition re-embedded"][1].updated,
               "no_change_sync_seconds": timed["no change"][0]}
    except Exception as exc:  # the engine's sync may not exist yet: say so in the table
        out = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"    sync ({mix} mix): {out}", flush=True)
    return out


SECTIONS = {"synthetic": synthetic, "s3": on_s3, "loose": loose, "million": million, "needles": needles,
            "real": real, "sync": sync_cost, "table_sync": table_sync}


@functools.cache
def _reference_inputs() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (100_000, 1_280), np.uint8)                # 100,000 FDE codes of 10,240 bits
    tokens = rng.integers(0, 256, (1_500 * 64, 16), np.uint8)                # 1,500 pages of 64 sign tokens
    query = rng.standard_normal((20, 128)).astype(np.float32)
    return codes, tokens, np.arange(0, len(tokens) + 1, 64), query, rng.standard_normal((20_000, 128), np.float32)


def _cpu_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, in clock ticks: (stolen by the hypervisor for other guests, all)."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return ticks[7], sum(ticks)


def machine_reference(repeats: int = 40) -> dict[str, float]:
    """How fast the machine is right now, from fixed random inputs: p50 ms of the first stage's kernel (a masked
    hamming scan of 100,000 FDE codes: bound by memory bandwidth), of stage 2's (sign MaxSim of a 20-token
    query over 1,500 pages of 64 tokens: bound by the CPU's integer dot products) and of a float32 matrix
    product (BLAS), with the CPU ticks so far (``steal``: taken by the hypervisor for other guests). Taken
    before and after every part of the section: a neighbour that loads the VM moves them, where the code under
    test cannot."""
    from infinity_assets.index import kernels

    codes, tokens, offsets, query, floats = _reference_inputs()
    mask = np.full(codes.shape[1], 0xFF, np.uint8)
    runs = {"hamming scan": lambda: kernels.masked_hamming(codes, codes[0], mask),
            "sign MaxSim": lambda: kernels.sign_maxsim(query, tokens, offsets),
            "float32 matmul": lambda: floats @ floats[:1_000].T}
    out = {}
    for name, call in runs.items():
        for _ in range(5):  # warm-up: caches, the kernels' threads
            call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        out[name] = round(statistics.median(times) * 1000, 2)
    out["steal_ticks"], out["ticks"] = _cpu_ticks()
    return out


#: The parts that run one after the other in each process of a parallel run (``table_sync`` writes the
#: 100,000-page table, so it follows the part that searches it).
GROUPS = (("synthetic", "s3", "table_sync"), ("loose", "million", "needles", "real", "sync"))


def run(quick: bool = False, parallel: bool | None = None, pages: int | None = None,
        parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The whole section, or its ``parts`` of :data:`SECTIONS` (``quick``: small sizes; ``pages``:
    :func:`at_pages`). ``parallel`` (default:
    ``$INFINITY_BENCH_INDEX_PARALLEL`` set) runs the :data:`GROUPS` in two processes at once: their wall-clock
    latencies then include each other's load (the CPU ms column does not)."""
    import subprocess
    import sys

    cfg = QUICK if quick else at_pages(pages) if pages else FULL
    started = time.monotonic()
    results: dict[str, Any] = {"quick": quick, "load_before": [round(x, 2) for x in os.getloadavg()],
                               "reference": [{"when": "start", **machine_reference()}]}
    print(f"    machine reference: {results['reference'][0]}", flush=True)
    if parallel is None:
        parallel = bool(os.environ.get("INFINITY_BENCH_INDEX_PARALLEL"))
    if parts is not None:
        if set(parts) - set(SECTIONS):
            unknown = sorted(set(parts) - set(SECTIONS))
            raise ValueError(f"unknown parts {unknown}; choose from {list(SECTIONS)}")
        results["not_run"] = [name for name in SECTIONS if name not in parts]
    if "s3" not in results.get("not_run", ()):
        s3_pages(cfg)  # a bad S3 size stops the run before it builds anything
    if not parallel:
        for name, section in SECTIONS.items():
            if name in results.get("not_run", ()):
                continue
            if name in AT_FULL_SIZE and not cfg.get("full_size_sections", True):
                results[name] = {"error": f"not run: a run at {max(cfg['sizes']):,} pages (--index-pages)"}
                continue
            print(f"  index/{name}", flush=True)
            results[name] = section(cfg)
            results["reference"].append({"when": f"after {name}", **machine_reference()})
            print(f"    machine reference: {results['reference'][-1]}", flush=True)
    else:
        SCRATCH.mkdir(parents=True, exist_ok=True)
        if parts is not None:
            raise ValueError("a parallel run runs every part")
        children = [(group, subprocess.Popen([sys.executable, "-m", "benchmarks.index_scale", ",".join(group),
                                              str(quick), str(SCRATCH / f"part-{group[0]}.json"), str(pages or 0)],
                                             cwd=corpora.REPO))
                    for group in GROUPS if cfg.get("full_size_sections", True) or set(group) - set(AT_FULL_SIZE)]
        for group, child in children:
            if child.wait() != 0:
                raise RuntimeError(f"index/{','.join(group)} failed (exit {child.returncode})")
            results.update(json.loads((SCRATCH / f"part-{group[0]}.json").read_text()))
        results["reference"].append({"when": "end", **machine_reference()})
    results["parallel"] = parallel
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = time.monotonic() - started
    return results


if __name__ == "__main__":
    import sys

    parts, quick_run, out, pages_arg = sys.argv[1].split(","), sys.argv[2] == "True", sys.argv[3], int(sys.argv[4])
    part_cfg = QUICK if quick_run else at_pages(pages_arg) if pages_arg else FULL
    done = {}
    for part in parts:
        if part in AT_FULL_SIZE and not part_cfg.get("full_size_sections", True):
            continue
        print(f"  index/{part}", flush=True)
        done[part] = SECTIONS[part](part_cfg)
        Path(out).write_text(json.dumps(done, default=float))


# ------------------------------------------------------------------------------------------- the report
def _two_stage(rows: list[dict[str, Any]], pages: int, label: str = DEFAULT_LABEL) -> dict[str, Any]:
    return next((r for r in rows if r["engine"] == label and r["pages"] == pages and "error" not in r), {})


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """``(target, measured, met)`` for every target of issue 26 whose part of the section ran (met None: not
    measured)."""
    rows = results.get("synthetic", {}).get("rows", [])
    sizes = sorted({r["pages"] for r in rows if r["engine"] == DEFAULT_LABEL})
    top, small = (sizes[-1], sizes[0]) if sizes else (0, 0)
    big, little = _two_stage(rows, top), _two_stage(rows, small)
    s3_rows = results.get("s3", {}).get("rows", [])
    s3 = s3_rows[0] if s3_rows and "error" not in s3_rows[0] else {}  # the default's row
    s3_pages = results.get("s3", {}).get("pages", 0)
    loose_rows = results.get("loose", {}).get("rows", [])
    loose_default = next((r for r in loose_rows if r["engine"] == DEFAULT_LABEL and "error" not in r), {})
    out: list[tuple[str, str, bool | None]] = []
    not_run = set(results.get("not_run", ()))

    def add(part: str, name: str, value: float | None, limit: float, fmt: str, lower: bool = True) -> None:
        if part in not_run:
            return
        if value is None:
            out.append((name, "not measured", None))
        else:
            out.append((name, fmt.format(value), value <= limit if lower else value >= limit))

    cpu = f" wall (CPU {big['cpu_p50_ms']:.1f} ms)" if big else ""
    add("synthetic", f"{top:,} pages local p50 <= 50 ms", big.get("p50_ms"), 50, "{:.1f} ms" + cpu)
    add("synthetic", f"{top:,} pages local p95 <= 150 ms", big.get("p95_ms"), 150, "{:.1f} ms")
    add("synthetic", f"recall@10 >= 0.95 vs exact float32 at {top:,} pages", big.get("recall_at_10"), 0.95,
        "{:.3f}", lower=False)
    add("synthetic", f"{small:,} pages p50 <= 15 ms", little.get("p50_ms"), 15,
        "{:.1f} ms" + (f" wall (CPU {little['cpu_p50_ms']:.1f} ms)" if little else ""))
    add("s3", f"S3 p50 <= 150 ms ({s3_pages:,} pages)", s3.get("p50_ms"), 150, "{:.1f} ms")
    per_page, base = rss_above_base(little, big)
    bits = big.get("info", {}).get("bytes_per_page", {}).get("bits")
    cached = (f"; stage 2's codes read from the local copy in the OS page cache, {bits:,.0f} B per page"
              if bits and "bits" in big.get("info", {}).get("local_copy_warmed", []) else "")
    add("synthetic", f"RSS <= 3 KB per indexed page above a fixed base ({small:,} -> {top:,} pages)",
        per_page, 3_000,
        "{:,.0f} B" + (f" above a base of {base / 1e6:,.0f} MB ({big['rss_bytes_per_page']:,.0f} B per page "
                       f"with the base, at {top:,}){cached}" if base is not None else ""))
    n_loose = results.get("loose", {}).get("pages", 0)
    add("loose", f"second generator (loose mix), {n_loose:,} pages: recall@10 >= 0.95",
        loose_default.get("recall_at_10"), 0.95, "{:.3f}", lower=False)
    add("loose", f"second generator (loose mix), {n_loose:,} pages: p50 <= 50 ms",
        loose_default.get("p50_ms"), 50, "{:.1f} ms")
    needle = results.get("needles", {})
    gap = (needle["exact_hit_at_20"] - needle["two_stage_hit_at_20"]) if "two_stage_hit_at_20" in needle else None
    add("needles", "needle top-20 hit rate within 2 points of exact", None if gap is None else gap * 100, 2,
        "{:.1f} points below exact")
    real_rows = results.get("real", {}).get("rows", [])
    real_two = next((r for r in real_rows if r["engine"].startswith("two-stage") and "error" not in r), {})
    add("real", "real pages (texlive): recall@10 >= 0.98", real_two.get("recall_at_10"), 0.98, "{:.3f}",
        lower=False)
    return out


def rss_above_base(small: dict[str, Any], large: dict[str, Any]) -> tuple[float | None, float | None]:
    """The query process's resident memory per indexed page above a fixed base, and that base (bytes): the
    growth from the smaller table's engine row to the larger's, per page added (None without both)."""
    if not small.get("rss_bytes_per_page") or not large.get("rss_bytes_per_page") or small["pages"] == large["pages"]:
        return None, None
    grown = large["rss_bytes_per_page"] * large["pages"] - small["rss_bytes_per_page"] * small["pages"]
    per_page = grown / (large["pages"] - small["pages"])
    return per_page, small["rss_bytes_per_page"] * small["pages"] - per_page * small["pages"]


def capacity(results: dict[str, Any], sizes: tuple[int, ...] = (1_000_000, 10_000_000)) -> list[dict[str, Any]]:
    """1 and 10 million pages modelled from the measured per-page costs: the default first stage (the flat scan)
    linear in pages from its p50 at the measured 1,000,000 codes, the IVF-probed first stage (32 lists of
    ~sqrt(pages)) growing like sqrt(pages) from its p50 there, the other stages as at the largest measured
    table (they see fixed candidate counts), bytes and RSS per page times pages."""
    rows = results.get("synthetic", {}).get("rows", [])
    sizes_measured = sorted({r["pages"] for r in rows if r["engine"] == DEFAULT_LABEL})
    if not sizes_measured:
        return []
    large = _two_stage(rows, sizes_measured[-1])
    if not large.get("info", {}).get("stages_ms_p50"):
        return []
    million_rows = results.get("million", {}).get("rows", {})
    flat, probed = million_rows.get("flat scan (default)", {}), million_rows.get("IVF: 32 lists probed", {})
    codes = results.get("million", {}).get("codes", 0)
    out = []
    for pages in sizes:
        stages = {k: v for k, v in large["info"]["stages_ms_p50"].items() if k != "total"}
        if flat.get("p50_ms") and codes:
            stages["fde"] = flat["p50_ms"] * pages / codes
        if probed.get("p50_ms") and codes:
            stages["fde, IVF 32 probes"] = probed["p50_ms"] * (pages / codes) ** 0.5
        out.append({"pages": pages, "stages_ms_p50": stages,
                    "index_gb": (large.get("index_bytes_per_page") or 0) * pages / 1e9,
                    "stage12_gb": (large.get("stage12_bytes_per_page") or 0) * pages / 1e9,
                    "rss_gb": (flat.get("rss_bytes_per_code") or large["rss_bytes_per_page"]) * pages / 1e9})
    return out


def _fmt(value: Any, spec: str = "{:.1f}") -> str:
    return "" if value is None else spec.format(value)


def _table(rows: list[dict[str, Any]], baseline: dict[int, float]) -> list[str]:
    lines = ["| engine | pages | p50 ms | p95 ms | CPU ms p50 | x numpy p50 | recall@10 vs exact | known-item hit@10 "
             "| stage ms p50 | stages 1-2 B/page | index B/page | RSS B/page | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['pages']:,} | | | | | | | | | | | not run: {r['error'][:200]} |")
            continue
        note = r.get("note", "")
        if "extrapolated_from" in r:
            note = f"extrapolated from {r['extrapolated_from']:,} pages (linear in pages) {note}"
        if r.get("kept_at_10"):
            note = f"exact top 10 kept by stage (recall queries): {_kept_text(r['kept_at_10'])} {note}"
        ratio = baseline.get(r["pages"])
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.get("info", {}).get("stages_ms_p50", {}).items()
                           if k != "total") if "extrapolated_from" not in r else ""
        lines.append(
            f"| {r['engine']} | {r['pages']:,} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['cpu_p50_ms']:.1f} | "
            f"{_fmt(r['p50_ms'] / ratio if ratio else None, '{:.3f}')} | {_fmt(r.get('recall_at_10'), '{:.3f}')} | "
            f"{_fmt(r.get('known_hit_at_10'), '{:.3f}')} | {stages} | "
            f"{_fmt(r.get('stage12_bytes_per_page'), '{:,.0f}')} | "
            f"{_fmt(r.get('index_bytes_per_page'), '{:,.0f}')} | {r['rss_bytes_per_page']:,.0f} | {note} |")
    return lines


def reference_lines(reference: list[dict[str, Any]], tolerance: float = 0.10) -> list[str]:
    """The machine reference (:func:`machine_reference`) as taken through the run, and whether it moved by more
    than ``tolerance`` (then the run measured the machine as much as the code)."""
    if not reference:
        return []
    kernels = [k for k in reference[0] if k not in ("when", "steal_ticks", "ticks")]
    spread = {k: max(r[k] for r in reference) / min(r[k] for r in reference) - 1 for k in kernels}
    moved = [f"{k} by {spread[k]:.0%}" for k in kernels if spread[k] > tolerance]
    stolen = [(now["steal_ticks"] - before["steal_ticks"]) / max(1, now["ticks"] - before["ticks"])
              for before, now in itertools.pairwise(reference) if "ticks" in before and "ticks" in now]
    return ["", "Machine reference (fixed random inputs, p50 ms; `machine_reference` in `index_scale.py`): "
            + "; ".join(f"{r['when']}: " + ", ".join(f"{k} {r[k]:.1f}" for k in kernels) for r in reference) + ". "
            + (f"CPU time stolen by the hypervisor between them: {', '.join(f'{x:.1%}' for x in stolen)}. "
               if stolen else "")
            + (f"**The machine's speed moved during the run** ({', '.join(moved)}; the hypervisor's steal "
               "does not show a neighbour's use of the memory bandwidth): rows measured at different times may "
               "differ by as much for that reason alone." if moved else
               f"It stayed within {tolerance:.0%} throughout: the machine was as fast at the end as at the start.")]


def markdown(results: dict[str, Any]) -> list[str]:
    """The index section of results.md: the targets, then one table per corpus."""
    lines = ["", f"## Index and search: staged retrieval against exact MaxSim{' (--quick)' if results.get('quick') else ''}",
             "", "Query embedding excluded; each engine alone in a fresh process, 3 warm-up queries; RSS = resident "
             "memory after the queries minus before opening (the engine's libraries already imported), per indexed "
             "page. `x numpy` = p50 over the exact numpy MaxSim's p50 at the same size (<1 = faster). "
             f"Load average when the section started: {results.get('load_before', '?')}; when it ended: "
             f"{results.get('load_after', '?')}."]
    lines += reference_lines(results.get("reference", []))
    if results.get("not_run"):
        lines += ["", f"Parts of the section not run (`--index-parts`): {', '.join(results['not_run'])}."]
    dropped = {row.get("page_cache_dropped") for part in results.values() if isinstance(part, dict)
               for row in part.get("rows", []) if isinstance(row, dict) and "page_cache_dropped" in row}
    if dropped == {True}:
        lines += ["", "The OS page cache was emptied before each engine ran: every engine starts from a cold disk "
                  "(a table larger than memory stays mostly cold; a small one warms up during its queries). "
                  "Before the first engine on a build (and again after an engine on another build), the "
                  "same engine answered the same queries once, unmeasured, so the VM host's cache of the disk, "
                  "which the guest cannot empty, holds what those queries read for every engine on it."]
    elif dropped:
        lines += ["", "The OS page cache could not be emptied before every engine (not root): an engine may "
                  "find pages an earlier one read still in memory."]
    if results.get("parallel"):
        lines += ["", f"The parts ran in two processes at once ({', '.join('+'.join(g) for g in GROUPS)}; "
                  "`INFINITY_BENCH_INDEX_PARALLEL=1`): wall-clock figures include each other's load; `CPU ms` is "
                  "the query process's own."]
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for name, value, met in targets(results):
        lines.append(f"| {name} | {value} | {'not measured' if met is None else ('met' if met else '**missed**')} |")
    syn = results.get("synthetic")
    if syn:
        gt = syn["ground_truth"]
        base = {r["pages"]: r["p50_ms"] for r in syn["rows"] if r["engine"].startswith("numpy") and "error" not in r}
        cache = syn.get("page_cache") or {}
        lines += ["", f"### (c) synthetic ColPali-sized pages (1,031 x 128, tight token mix), {syn['queries']} "
                  f"known-item queries of {syn['vectors_per_query']} vectors", "",
                  (f"Distinct pages, generated once into a float16 memory map ({_fmt(cache.get('seconds'), '{:.0f}')} s "
                   f"with {cache.get('workers', '?')} processes). " if cache else
                   "Distinct pages, generated when read and rounded to float16 as the index keeps them. ") +
                  f"Exact float32 ground truth over {gt['pages']:,} pages: "
                  f"{_fmt(gt.get('cpu_seconds_per_1000_pages'), '{:.0f}')} s CPU per 1,000 pages "
                  f"(cached; {gt['cpu_seconds_this_run']:.0f} s CPU in this run); recall@10 over the first "
                  f"{gt.get('queries', syn['queries'])} queries, latency and known-item hits over all.", ""]
        lines += _table(syn["rows"], base)
    on_s3_results = results.get("s3")
    if on_s3_results:
        lines += ["", f"### (c) on S3: the tight mix's {on_s3_results['pages']:,}-page table in SeaweedFS",
                  "", "The local table uploaded as it is; the reader copies stages 1-3's columns to its "
                  "local disk, and the rerank's rows where `copy_originals=\"auto\"` finds room (the note "
                  "says what it chose); recall against exact at that size.", ""]
        lines += _table(on_s3_results["rows"], {})
    loose_results = results.get("loose")
    if loose_results:
        lines += ["", f"### (c') second generator: loose token mix, {loose_results['pages']:,} pages", "",
                  f"{loose_results['mix']}", ""]
        lines += _table(loose_results["rows"], {})
    million_results = results.get("million")
    if million_results and "error" in million_results:
        lines += ["", f"### First stage at 1,000,000 FDE codes: {million_results['error']}"]
    elif million_results:
        lines += ["", f"### First stage at {million_results['codes']:,} FDE codes", "",
                  "The 100,000-page table's codes and copies with 1/32 of their bits flipped; IVF trained and "
                  "assigned at that size. `flat overlap` = share of the flat scan's candidates the IVF keeps. "
                  "The whole-query rows run stages 2-4 after it on the 100,000-page table's rows (its local copy), "
                  "each copy of a code standing for another page, so the stages rank as many distinct pages as "
                  "at 1,000,000 (their cost, not their recall: a copy's rows are not its own).", "",
                  "| settings | p50 ms | p95 ms | RSS B/code | stage ms p50 | lists | train s | assign s "
                  "| flat overlap |", "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
        for label, r in million_results["rows"].items():
            if "error" in r:
                lines.append(f"| {label} | not run: {r['error'][:200]} | | | | | | | |")
                continue
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r.get("stages_ms_p50", {}).items())
            lines.append(f"| {label} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['rss_bytes_per_code']:,.0f} | "
                         f"{stages} | {r.get('lists', '')} | {_fmt(r.get('train_seconds'), '{:.0f}')} | "
                         f"{_fmt(r.get('assign_seconds'), '{:.0f}')} | {_fmt(r.get('flat_overlap'), '{:.3f}')} |")
    needle = results.get("needles")
    if needle:
        lines += ["", f"Needle in a haystack ({needle['pages']:,} near-duplicate pages, {needle['needles']} needles): "
                  f"top-20 hit rate exact {needle['exact_hit_at_20']:.3f}, two-stage "
                  f"{_fmt(needle.get('two_stage_hit_at_20'), '{:.3f}')}{' (' + needle['error'] + ')' if 'error' in needle else ''}."]
    real_results = results.get("real")
    if real_results and "error" in real_results:
        lines += ["", f"### (a) real pages: {real_results['error']}"]
    elif real_results:
        base = {r["pages"]: r["p50_ms"] for r in real_results["rows"] if r["engine"].startswith("numpy") and "error" not in r}
        lines += ["", f"### (a) real pages: texlive-latex-base-doc, {real_results['pages']:,} pages", ""]
        if "queries_with_ties_at_10" in real_results:
            lines += [f"The manuals repeat pages: {real_results['queries_with_ties_at_10']} of "
                      f"{real_results['queries']} queries have other pages tied with the 10th exact score. "
                      "Recall counts any of them as exact (the exact top 10 is not unique); the share each "
                      "stage kept counts only the ground truth's own 10.", ""]
        lines += _table(real_results["rows"], base)
    model = capacity(results) if "rows" in results.get("million", {}) else None  # (a run without the 1M codes)
    if model:
        lines += ["", "### Capacity model (first stage from the measured 1,000,000 codes: the flat scan linear in pages, "
                  "the IVF-probed one like sqrt(pages); the other stages see fixed candidate counts; query RSS: the "
                  "codes in memory)", "",
                  "| pages | modelled p50 ms (by stage) | index GB | first two stages' columns GB | query RSS GB |",
                  "|---:|---|---:|---:|---:|"]
        for m in model:
            stages = ", ".join(f"{k} {v:.0f}" for k, v in m["stages_ms_p50"].items())
            lines.append(f"| {m['pages']:,} | {stages} | {m['index_gb']:,.0f} | {m['stage12_gb']:,.1f} | {m['rss_gb']:,.1f} |")
    lines += ["", "### Build and sync", ""]
    for r in (results.get("synthetic", {}).get("rows", []) + results.get("loose", {}).get("rows", [])):
        info = r.get("info", {})
        if r["engine"] == DEFAULT_LABEL and info.get("build_seconds"):
            lines.append(f"- {r['pages']:,} pages: full build {info['build_seconds']:.0f} s with "
                         f"{info.get('workers', 1)} encoding processes ({info['build_seconds'] / r['pages'] * 1000:.1f} s "
                         f"per 1,000 pages); IVF {info.get('ivf_build', {})}")
    table = results.get("table_sync", {})
    if table and "error" not in table:
        per = table["seconds_per_1000_changed"]
        lines.append(f"- {table['changed_pages']:,} changed pages synced into the {table['pages']:,}-page table: "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in per.items()) + " per 1,000 changed pages "
                     f"({table['updated_rows']} rows updated; compaction: {table.get('compaction')}; IVF: {table['ivf']})")
    for mix, sync in results.get("sync", {}).items():
        if "error" in sync:
            lines.append(f"- incremental sync, {mix} mix: not run ({sync['error']})")
            continue
        lines.append(f"- artifacts -> index (`sync_index`, {sync['pages']:,} pages of the {mix} mix in "
                     "artifacts): first sync (learning the table's background) "
                     f"{sync['first_sync_seconds_per_1000_pages']:.1f} s per 1,000 pages; "
                     f"{sync['changed_pages']:,} re-embedded pages "
                     f"{sync['sync_seconds_per_1000_changed_pages']:.1f} s per 1,000 changed pages "
                     f"({sync['changed_rows']} rows updated); a sync with nothing changed "
                     f"{sync['no_change_sync_seconds']:.2f} s")
    return lines
