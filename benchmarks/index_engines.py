"""The engines the ``index`` benchmark compares, each measured alone in a fresh process (``python -m
benchmarks.index_engines SPEC.json``), so latency and resident memory are the engine's own.

An engine builds (or opens a cached build of) an index over a corpus of :mod:`benchmarks.corpora`, then
answers the same queries; the worker writes JSON: per-query seconds, the top-k page numbers, the resident
memory before opening and after warm-up (psutil RSS), build seconds and bytes on disk.

Engines: ``numpy`` (exact float32 MaxSim over the vectors in memory: the ground truth and the baseline),
``lancedb-flat`` / ``lancedb-ann`` (LanceDB's own multi-vector search: exact, and IVF-PQ with ``nprobes``,
``refine_factor`` and ``LANCE_XTR_OVERFETCH``), ``two-stage`` (the project's index, :mod:`infinity_assets.index`),
``fast-plaid`` and ``muvera`` (public engines; run with the interpreter of ``.cache/bench/venv-plaid``, which
has torch pinned, never the project's ``.venv``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import corpora  # noqa: E402

PLAID_PYTHON = corpora.CACHE / "venv-plaid" / "bin" / "python"
WARMUP = 3


def source_of(spec: dict[str, Any]) -> tuple[corpora.PageSource, list[str]]:
    """The page source and doc_ids a spec names (``corpus``: synthetic / needle / texlive)."""
    kind, n = spec["corpus"], spec["pages"]
    if spec.get("ids_only"):
        return None, ids_of(spec)  # type: ignore[return-value]
    if kind == "synthetic":
        corpus = corpora.SyntheticPages(mix=corpora.MIXES[spec.get("mix", "tight")])
        return corpora.SyntheticSource(corpus, spec.get("cached", 0)), [corpora.doc_id(i) for i in range(n)]
    if kind == "needle":
        source = corpora.NeedlePages(n_pages=n, needles=spec["needles"])
        return source, [corpora.doc_id(i) for i in range(n)]
    real = corpora.texlive_corpus()
    return real, real.doc_ids[:n]


def ids_of(spec: dict[str, Any]) -> list[str]:
    """The doc_ids of a spec's pages, without loading any vector."""
    if spec["corpus"] != "texlive":
        return [corpora.doc_id(i) for i in range(spec["pages"])]
    import pyarrow.parquet as pq

    path = corpora.TEXTLIVE / f"texlive-pages-{corpora.TEXT_MODEL}.parquet"
    return pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()[:spec["pages"]]


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is not there)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _blocks(source: corpora.PageSource, n: int, size: int = 200):
    for start in range(0, n, size):
        yield start, list(source.pages(start, min(n, start + size)))


# ---------------------------------------------------------------------------------------------- engines
class Numpy:
    """Exact MaxSim: all vectors float32 in memory, one matrix product per block of pages per query."""

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        pages = [v for _, block in _blocks(source, spec["pages"]) for v in block]
        self.vectors = np.ascontiguousarray(np.concatenate(pages), np.float32)
        self.offsets = np.concatenate([[0], np.cumsum([len(v) for v in pages])])
        self.bounds = [(i, min(len(pages), i + 256)) for i in range(0, len(pages), 256)]

    def search(self, query: np.ndarray, k: int) -> list[int]:
        from infinity_assets.index.maxsim import maxsim_scores

        scores = np.concatenate([
            maxsim_scores(query, self.vectors, self.offsets[a:b + 1]) for a, b in self.bounds])
        return [int(i) for i in corpora.top_k(scores[None, :], k)[0]]


class LanceMulti:
    """LanceDB's multi-vector column (cosine), flat or IVF-PQ (``spec["ann"]``), cached under ``spec["root"]``."""

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        import lancedb
        import pyarrow as pa

        root = Path(spec["root"])
        self.spec, self.info = spec, {}
        done = root / "built.json"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            db = lancedb.connect(str(root))
            started = time.perf_counter()
            schema = pa.schema([pa.field("page", pa.int64()),
                                pa.field("embedding", pa.list_(pa.list_(pa.float32(), corpora.DIM)))])
            table = db.create_table("t", schema=schema)
            for start, block in _blocks(source, spec["pages"]):
                table.add(corpora._table({"page": list(range(start, start + len(block)))}, block).cast(schema))
            write = time.perf_counter() - started
            started = time.perf_counter()
            if spec.get("build_ann") is False:
                done.write_text(json.dumps({"write_seconds": write, "ann_build_seconds": None}))
            else:
                table.create_index(metric="cosine", vector_column_name="embedding", index_type="IVF_PQ",
                                   num_partitions=spec.get("partitions", 256), num_sub_vectors=16)
                done.write_text(json.dumps({"write_seconds": write,
                                            "ann_build_seconds": time.perf_counter() - started}))
        self.info = json.loads(done.read_text())
        self.table = lancedb.connect(str(root)).open_table("t")
        self.info["index_bytes"] = dir_bytes(root)

    def search(self, query: np.ndarray, k: int) -> list[int]:
        search = self.table.search(query, vector_column_name="embedding").limit(k).select(["page"])
        if self.spec["ann"]:
            search = search.nprobes(self.spec["nprobes"])
            if self.spec.get("refine_factor"):
                search = search.refine_factor(self.spec["refine_factor"])
        else:
            search = search.bypass_vector_index()
        return search.to_arrow().column("page").to_pylist()


class TwoStage:
    """The project's index (:func:`infinity_assets.index.write_index`, ``IndexReader.search_staged``);
    ``spec["mode"]``: ``staged`` (default), ``exact`` (``exact=True``: the compiled exact scan) or
    ``last-round`` (:func:`last_round_search`: the previous release's numpy stages over the same table);
    ``spec["local_copy"]``: where the reader keeps its local copy of stage 3's column, as the search service
    does (default ``.cache/bench/copies``; made before the queries, its time in ``local_copy_seconds``), or
    False: none; ``spec["copy_originals"]``: whether that copy holds the rerank's rows too (default: the
    reader's, ``"auto"``; what it chose and why in ``local_copy_originals``);
    ``spec["hold_bits"]`` (default: the reader's, False): True holds stage 2's codes in memory
    instead of reading them from that copy; ``spec["exact_top"]``: the exact top 10 (page numbers) of the first
    queries, for which the share each stage kept is measured (``info["kept_at_10"]``; a run of its own, as
    the page number of every row it holds counts in the process's memory)."""

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        from infinity_assets import index
        from infinity_assets.client.allocator import limit_arenas
        from infinity_assets.index import ivf
        from infinity_assets.storage.documents import DocumentStore

        limit_arenas()  # as a search service's reader does before its first scan (the IVF update below scans)
        store = DocumentStore(spec["root"], **spec.get("store_options", {}))
        self.info: dict[str, Any] = {}
        marker = Path(spec["marker"])
        if not marker.exists() and spec.get("replicate"):
            self.info = _replicate(store, spec)
        elif not marker.exists():
            first, last = spec.get("page_range", (0, spec["pages"]))
            started = time.perf_counter()
            build_parallel(store, spec, ids, first, last, index.EncodingSettings(**spec.get("encoding", {})))
            self.info = {"build_seconds": time.perf_counter() - started, "workers": spec.get("workers", 2)}
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(self.info))
        self.info = json.loads(marker.read_text())
        if not spec.get("store_options"):  # as a sync does after its commit (a no-op when it is up to date)
            first_stage = ivf.update(store, "images", index.open_table(store, "images"),
                                     index.EncodingSettings(**spec.get("encoding", {})))
            if first_stage.get("trained") or first_stage.get("assigned"):
                self.info["ivf_build"] = first_stage
                marker.write_text(json.dumps(self.info))
            self.info.setdefault("ivf_build", first_stage)
        copies = spec.get("local_copy", str(corpora.CACHE / "copies")) or None
        held = {"hold_bits": spec["hold_bits"]} if "hold_bits" in spec else {}
        self.reader = index.IndexReader(store, "images", local_copy=copies,
                                        copy_originals=spec.get("copy_originals", "auto"), **held)
        if self.reader.staged.local_copy is not None:  # a service makes it in the background; measured once made
            if not self.reader.staged.local_copy.ready(timeout=None):
                raise RuntimeError(f"the local copy failed: {self.reader.staged.local_copy.error!r}")
            self.reader.staged.local_copy.originals_ready(timeout=None)  # its embedding, made after the rest
            if self.reader.staged.local_copy.originals_error is not None:
                raise RuntimeError(f"the local copy of embedding failed: "
                                   f"{self.reader.staged.local_copy.originals_error!r}")
            self.info["local_copy_seconds"] = self.reader.staged.local_copy.seconds
            self.info["local_copy_originals_seconds"] = self.reader.staged.local_copy.originals_seconds
            self.info["local_copy_warmed"] = list(self.reader.staged.local_copy.warmed)
            self.info["local_copy_originals"] = self.reader.staged.local_copy.originals_choice
        self.settings = index.SearchSettings(**spec.get("search", {}))
        self.mode = spec.get("mode", "staged")
        self.page_of = {doc: i for i, doc in enumerate(ids)}
        self.stage_seconds: list[dict[str, float]] = []
        self.candidates: dict[str, int] = {}
        self.exact_top = [set(top) for top in spec.get("exact_top", [])]
        self.kept: list[dict[str, float]] = []
        if self.exact_top:
            ids_by_position = self.reader.dataset.to_table(columns=["doc_id"]).column("doc_id").to_pylist()
            self.page_at = np.array([self.page_of[doc] for doc in ids_by_position], np.int64)

    def search(self, query: np.ndarray, k: int) -> list[int]:
        if self.mode == "last-round":
            positions, timings = last_round_search(self.reader.staged, query, k, self.settings)
            rows = self.reader.dataset.take(positions.tolist(), columns=["doc_id"]).column("doc_id").to_pylist()
            self.stage_seconds.append(timings)
            return [self.page_of[d] for d in rows]
        result = self.reader.search_staged(query, k=k, settings=self.settings, exact=self.mode == "exact")
        self.stage_seconds.append(dict(result.timings))
        self.candidates = {**result.candidates, "fde_scanned": result.scanned}
        if len(self.kept) < len(self.exact_top):
            truth = self.exact_top[len(self.kept)]
            self.kept.append({stage: len(truth.intersection(self.page_at[chosen].tolist())) / len(truth)
                              for stage, chosen in result.kept.items()})
        return [self.page_of[h.doc_id] for h in result.hits]

    def finish(self) -> None:
        self.info["bytes_per_page"] = self.reader.bytes_per_page()
        self.info["candidates_last_query"] = self.candidates
        if self.kept:
            self.info["kept_at_10"] = {stage: float(np.mean([shares[stage] for shares in self.kept]))
                                       for stage in self.kept[0]}
        lists = self.reader.staged.lists
        self.info["ivf_lists"] = lists.count if lists is not None else 0
        self.info["stages_ms_p50"] = {
            stage: float(np.median([t[stage] for t in self.stage_seconds[WARMUP:]]) * 1000)
            for stage in (self.stage_seconds[0] if self.stage_seconds else {})}


def last_round_search(staged: Any, query: np.ndarray, k: int, settings: Any) -> tuple[np.ndarray, dict[str, float]]:
    """The previous release's stages in numpy over the same table (the baseline the kernels replace): a flat
    masked-hamming scan of every FDE code, hamming MaxSim by numpy popcounts on the ``bits`` rows read per
    query, float16 -> float32 copies and a matrix product for the rerank. Rows are read as the default reads
    them (fragment by fragment, :mod:`infinity_assets.index.take`), so Lance's slow dataset-level ``take`` on
    a fragment with deletions does not hide the difference. Returns row positions, best first, and seconds
    per stage."""
    from infinity_assets.index.binary import hamming_distances, hamming_maxsim, pack_signs
    from infinity_assets.index.fde import query_code
    from infinity_assets.index.maxsim import maxsim_scores
    from infinity_assets.index.staged import _largest, _within, query_vectors

    def vectors(column: Any) -> tuple[np.ndarray, np.ndarray]:
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.flatten().flatten().to_numpy(zero_copy_only=False)
        return values.reshape(-1, column.type.value_type.list_size).astype(np.float32), offsets - offsets[0]

    def take(positions: np.ndarray, column: str) -> Any:  # rows read as the default reads them (index/take.py)
        return staged.taker.take(positions, [column]).column(column).combine_chunks()

    unit = query_vectors(query, staged.hidden_dim)
    timings, started = {}, time.perf_counter()
    codes = staged.codes  # read once per version, as the reader does
    signs, mask = query_code(staged.fde, unit)
    mask = staged.informative(signs, mask, settings.fde_agreement)
    positions = _within(hamming_distances(codes, signs, mask), settings.fde_candidates)
    timings["fde"], started = time.perf_counter() - started, time.perf_counter()
    codes, offsets = vectors(take(positions, "bits"))
    codes = codes.astype(np.uint8)
    scores = hamming_maxsim(pack_signs(unit), codes, offsets, staged.hidden_dim)
    positions = positions[_within(-scores, max(settings.hamming_candidates, k))]
    timings["hamming"], started = time.perf_counter() - started, time.perf_counter()
    positions = np.sort(positions)
    floats, offsets = vectors(take(positions, "embedding"))
    scores = maxsim_scores(unit, floats, offsets)
    best = _largest(scores, k)
    timings["rerank"] = time.perf_counter() - started
    return positions[best], timings


class QdrantEdge:
    """Qdrant Edge (``qdrant-edge-py``, Qdrant's in-process engine): one multi-vector (MaxSim) named vector
    per page with binary quantization kept in RAM and no HNSW graph, searched with oversampling and rescoring
    from the original vectors (Qdrant's recipe for ColPali); ``spec["quantization"]`` False searches the float
    vectors."""

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        import qdrant_edge as q

        self.q, self.spec = q, spec
        root = Path(spec["root"])
        done = root / "built.json"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            (root / "shard").mkdir(parents=True)
            # no HNSW graph (m=0): a graph over every token vector of every page is what makes multi-vector
            # indexing slow; the search scans the binary-quantized multi-vectors, then rescores
            config = q.EdgeConfig(vectors={"v": q.EdgeVectorParams(
                size=corpora.DIM, distance=q.Distance.Cosine,
                multivector_config=q.MultiVectorConfig(q.MultiVectorComparator.MaxSim),
                quantization_config=q.BinaryQuantizationConfig(always_ram=True),
                hnsw_config=q.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10))})
            shard = q.EdgeShard.create(str(root / "shard"), config)
            started = time.perf_counter()
            for start, block in _blocks(source, spec["pages"], 100):
                points = [q.Point(start + i, {"v": v.astype(np.float32).tolist()}) for i, v in enumerate(block)]
                shard.update(q.UpdateOperation.upsert_points(points))
            shard.optimize()
            shard.flush()
            shard.close()
            done.write_text(json.dumps({"build_seconds": time.perf_counter() - started}))
        self.info = json.loads(done.read_text())
        self.info["index_bytes"] = dir_bytes(root)
        self.shard = q.EdgeShard.load(str(root / "shard"))
        quantized = spec.get("quantization", True)
        self.params = q.SearchParams(quantization=q.QuantizationSearchParams(
            ignore=not quantized, rescore=True, oversampling=spec.get("oversampling", 4.0)))

    def search(self, query: np.ndarray, k: int) -> list[int]:
        q = self.q
        points = self.shard.query(q.QueryRequest(limit=k, query=q.Query.Nearest(query.tolist(), using="v"),
                                                 params=self.params))
        return [int(p.id) for p in points]


class FirstStageMillion:
    """The first stage over ``spec["pages"]`` FDE codes (1,000,000): the 100,000-page table's codes
    (``spec["from"]``) and copies of them with 1/32 of their bits flipped at random (distinct codes with the
    same cluster structure), an IVF trained and assigned as :func:`ivf.update` does, then per query the
    reader's own first stage (:func:`~infinity_assets.index.staged.fde_stage`). ``top`` holds the kept
    candidates' code numbers; ``info["flat_overlap"]`` the share of the flat scan's candidates the IVF kept
    (measured on the first queries). With ``spec["whole_query"]`` stages 2-4 follow on the 100,000-page
    table's rows (its reader with its local copy, as the service opens it): copy ``j`` of page ``i`` stands
    for page ``(i + j * COPY_STRIDE) % 100,000``, so the candidates stay as many distinct pages as the codes
    chosen, and ``top`` holds the rerank's best rows (a cost measurement: a copy's rows are another page's)."""

    #: How far apart the pages that the copies of one code stand for lie (prime: every copy a different page).
    COPY_STRIDE = 7_919

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        from infinity_assets import index
        from infinity_assets.index import ivf
        from infinity_assets.index.staged import bit_shares
        from infinity_assets.storage.documents import DocumentStore

        reader = index.IndexReader(DocumentStore(spec["from"]), "images",
                                   local_copy=str(corpora.CACHE / "copies") if spec.get("whole_query") else None)
        base = reader.staged.codes
        self.encoding, self.fde, self.base_rows = reader.encoding, reader.staged.fde, len(base)
        self.reader = reader if spec.get("whole_query") else None
        if self.reader is not None and not self.reader.staged.local_copy.ready(timeout=None):
            raise RuntimeError(f"the local copy failed: {self.reader.staged.local_copy.error!r}")
        del reader
        rng = np.random.default_rng(5)
        codes = np.empty((spec["pages"], base.shape[1]), np.uint8)
        codes[:len(base)] = base
        for start in range(len(base), spec["pages"], len(base)):
            stop = min(spec["pages"], start + len(base))
            flips = np.full((stop - start, base.shape[1]), 255, np.uint8)
            for _ in range(5):  # the AND of 5 random bytes: each bit set with probability 1/32 (3.1 %)
                flips &= rng.integers(0, 256, flips.shape, dtype=np.uint8)
            codes[start:stop] = base[:stop - start] ^ flips
        self.settings = index.SearchSettings(**spec.get("search", {}))
        self.ones, self.codes, self.lists = bit_shares(codes), codes, None
        self.info: dict[str, Any] = {"code_bytes_per_page": base.shape[1], "overlaps": []}
        self.stage_seconds: list[dict[str, float]] = []
        if self.settings.fde_probes:  # the IVF, trained and assigned as ivf.update does
            started = time.perf_counter()
            count = ivf.lists_for(len(codes), self.encoding)
            bytes_per_rep = ivf.rep_bytes(self.encoding)
            centroids = ivf.train(codes, count, bytes_per_rep, self.encoding.fde_seed)
            trained = time.perf_counter() - started
            lists = ivf.assign(codes, centroids, bytes_per_rep)
            assigned = time.perf_counter() - started - trained
            self.lists = ivf.Lists(lists, ivf.bit_means(codes, lists, count), centroids, 0)
            self.info.update(lists=count, train_seconds=trained, assign_seconds=assigned,
                             means_seconds=time.perf_counter() - started - trained - assigned)

    def search(self, query: np.ndarray, k: int) -> list[int]:
        from infinity_assets.index.staged import fde_stage, query_vectors

        started = time.perf_counter()
        unit = query_vectors(query, self.fde.hidden_dim)
        kept, shortlist, scanned = fde_stage(self.fde, self.codes, self.ones, unit, self.settings, self.lists)
        if len(self.info["overlaps"]) < 30:  # compared with the flat scan after the timed queries
            self.info["overlaps"].append((unit, kept))
        if self.reader is None:
            return kept[:k].tolist()
        copy, page = np.divmod(kept, self.base_rows)
        pages = np.unique((page + copy * self.COPY_STRIDE) % self.base_rows)
        ranking = self.reader.staged.ranked(unit, pages, k, self.settings, {"fde": time.perf_counter() - started},
                                            shortlist, scanned)
        self.stage_seconds.append(ranking.timings)
        self.info["pages_ranked_last_query"] = len(pages)
        return ranking.positions.tolist()

    def finish(self) -> None:
        from dataclasses import replace

        from infinity_assets.index.staged import fde_stage

        flat_settings = replace(self.settings, fde_probes=0)
        shares = []
        for unit, kept in self.info.pop("overlaps"):
            flat, _, _ = fde_stage(self.fde, self.codes, self.ones, unit, flat_settings)
            shares.append(len(np.intersect1d(kept, flat)) / len(flat))
        self.info["flat_overlap"] = float(np.mean(shares)) if shares else None
        if self.stage_seconds:
            self.info["stages_ms_p50"] = {stage: float(np.median([t[stage] for t in self.stage_seconds[WARMUP:]]))
                                          * 1000 for stage in self.stage_seconds[0]}


#: The table's background in a build's worker process (set by :func:`_set_background`).
_WORKER_BACKGROUND: list[Any] = [None]


def _set_background(data: bytes | None) -> None:
    from infinity_assets.index.background import Background

    _WORKER_BACKGROUND[0] = Background.from_bytes(data) if data else None


def _encode_block(job: tuple[dict[str, Any], list[str], int, int, dict[str, Any]]) -> bytes:
    """Encoded index rows of pages ``start..stop-1`` of a spec's corpus, as Arrow IPC bytes (a worker process)."""
    import pyarrow as pa

    from infinity_assets import index
    from infinity_assets.index.rows import encode_rows, vectors_table

    spec, ids, start, stop, encoding_fields = job
    source, _ = source_of({**spec, "ids_only": False})
    encoding = index.EncodingSettings(**encoding_fields)
    schema = index.index_schema(corpora.DIM, f"bench-{spec['corpus']}", "images", encoding)
    rows = encode_rows(vectors_table(ids, list(source.pages(start, stop))), "bench", schema, encoding,
                       _WORKER_BACKGROUND[0])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


#: Bytes on disk a bench page of the index can take at most: ColPali-sized tokens in float16 (``embedding``),
#: int8 (``pooled``, every token when none pool) and 1-bit (``bits``), and the FDE code.
BUILD_BYTES_PER_PAGE = corpora.PAGE_VECTORS * corpora.DIM * (2 + 1 + 1 / 8) + 1280
#: Bytes a build leaves free on the disk at least (the page cache, the readers' copies, the system).
BUILD_SPARE_BYTES = 5 << 30


def check_room(pages: int, root: str) -> None:
    """Raise before a build of ``pages`` at ``root`` (a local folder) that the disk may not hold, with what it
    needs, what is free and the largest cached builds; a full disk would fail the run later, and whatever else
    needs the disk."""
    if "://" in root:
        return
    needed = pages * BUILD_BYTES_PER_PAGE + BUILD_SPARE_BYTES
    folder = Path(root).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return
    builds = sorted(((dir_bytes(b), b.name) for b in (corpora.CACHE / "builds").glob("*") if b.is_dir()),
                    reverse=True)
    largest = ", ".join(f"{name} {size / 1e9:.1f} GB" for size, name in builds[:3]) or "none"
    raise RuntimeError(f"a build of {pages:,} pages needs up to {needed / 1e9:.1f} GB free (with "
                       f"{BUILD_SPARE_BYTES / 1e9:.0f} GB to spare) and {free / 1e9:.1f} GB are: remove cached builds "
                       f"under {corpora.CACHE / 'builds'} (largest: {largest}) or run fewer --index-parts")


def build_parallel(store: Any, spec: dict[str, Any], ids: list[str], first: int, last: int, encoding: Any,
                   block: int = 250) -> None:
    """The index of pages ``first..last-1`` written as :func:`infinity_assets.index.write_index` writes it (the
    same row encoding, the background learned from the first pages, one commit, then the first stage's IVF),
    the rows encoded by ``spec["workers"]`` processes (default 2) while this one writes."""
    import multiprocessing
    from dataclasses import asdict

    import pyarrow as pa

    from infinity_assets import index
    from infinity_assets.index import background
    from infinity_assets.index.rows import vectors_table
    from infinity_assets.index.sync import learn_background

    check_room(last - first, spec["root"])
    found = None
    if encoding.background_share < 1.0 and last - first >= encoding.background_pages:
        source, _ = source_of({**spec, "ids_only": False})
        started = time.perf_counter()
        sample = list(source.pages(first, min(last, first + background.TRAIN_PAGES)))
        found = learn_background(store, "images", [vectors_table(ids[first:first + len(sample)], sample)], encoding)
        print(f"    background learned in {time.perf_counter() - started:.0f} s: {found.clusters} clusters",
              flush=True)
    schema = index.index_schema(corpora.DIM, f"bench-{spec['corpus']}", "images", encoding,
                                found.name if found else "")
    jobs = [({k: v for k, v in spec.items() if k in ("corpus", "pages", "mix", "cached", "needles")},
             ids[a:min(last, a + block)], a, min(last, a + block), asdict(encoding)) for a in range(first, last, block)]

    def batches():
        # one BLAS thread per worker: the workers are the parallelism (two BLAS threads each spin on 2 cores)
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
        with multiprocessing.get_context("spawn").Pool(spec.get("workers", 2), _set_background,
                                                       (found.to_bytes() if found else None,)) as pool:
            for done, payload in enumerate(pool.imap(_encode_block, jobs)):
                yield from pa.ipc.open_stream(payload).read_all().to_batches()
                if done % 40 == 0:
                    print(f"    built {min(last, first + (done + 1) * block) - first:,}/{last - first:,} pages",
                          flush=True)

    index.create_table(store, "images", pa.RecordBatchReader.from_batches(schema, batches()), schema,
                       spec.get("file_version", index.FILE_VERSION))


def _replicate(store: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """An index of ``copies`` x the rows of the built index at ``spec["replicate"]["from"]``, doc_ids renamed
    (``page-{i + copy * pages}``): the size of a larger index without encoding its pages (latency, memory and
    bytes only; its answers hold copies, so no recall is measured on it)."""
    import lancedb
    import pyarrow as pa

    source_root, copies = Path(spec["replicate"]["from"]), spec["replicate"].get("copies", 1)
    target = Path(spec["root"]) / "index"
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    shutil.copytree(source_root / "index", target)
    table = lancedb.connect(str(target)).open_table("images")
    dataset = table.to_lance()
    rows = dataset.count_rows()
    limit = spec["replicate"].get("limit")
    if limit:  # the first ``limit`` pages: the rows a build of those pages writes (rows are encoded one by one)
        from datetime import timedelta

        table.delete(f"doc_id >= '{corpora.doc_id(limit)}'")
        table.optimize(cleanup_older_than=timedelta(0))
        return {"build_seconds": None, "derived_seconds": time.perf_counter() - started,
                "derived_from_pages": rows, "pages": limit}
    for copy in range(1, copies):
        def renamed(copy: int = copy):
            for batch in dataset.to_batches(batch_size=256):
                numbers = [int(d.split("-")[1]) + copy * rows for d in batch.column("doc_id").to_pylist()]
                yield batch.set_column(batch.schema.get_field_index("doc_id"), "doc_id",
                                       pa.array([corpora.doc_id(n) for n in numbers]))
        table.add(pa.RecordBatchReader.from_batches(dataset.schema, renamed()))
    return {"build_seconds": None, "replicated_seconds": time.perf_counter() - started,
            "replicated_from_pages": rows, "copies": copies}


class FastPlaid:
    """fast-plaid (PLAID: centroid candidates + compressed residuals), CPU, ``nbits`` 4."""

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        import torch
        from fast_plaid import search

        torch.set_num_threads(2)
        root = Path(spec["root"])
        done = root / "built.json"
        self.engine = None
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            docs = [torch.from_numpy(np.ascontiguousarray(v)) for _, b in _blocks(source, spec["pages"]) for v in b]
            started = time.perf_counter()
            self.engine = search.FastPlaid(index=str(root / "index"), device="cpu")
            self.engine.create(documents_embeddings=docs, nbits=4)
            done.write_text(json.dumps({"build_seconds": time.perf_counter() - started}))
            del docs
        self.info = json.loads(done.read_text())
        self.info["index_bytes"] = dir_bytes(root / "index")
        self.engine = self.engine or search.FastPlaid(index=str(root / "index"), device="cpu")
        self.torch = torch

    def search(self, query: np.ndarray, k: int) -> list[int]:
        hits = self.engine.search(queries_embeddings=self.torch.from_numpy(query[None]), top_k=k,
                                  show_progress=False)
        return [int(doc) for doc, _ in hits[0]]


class Muvera:
    """muvera-python FDEs (public defaults: 20 repetitions, 5 SimHash bits, d_proj 16: 10,240 floats per page) searched by a
    flat dot product over all pages' FDEs, then exact MaxSim on the top ``rerank`` from float16 vectors."""

    def __init__(self, spec: dict[str, Any], source: corpora.PageSource, ids: list[str]) -> None:
        import muvera

        root = Path(spec["root"])
        self.encoder = muvera.Muvera(num_repetitions=20, num_simhash_projections=5, dimension=corpora.DIM,
                                     projection_type="ams_sketch", projection_dimension=16)
        self.rerank = spec.get("rerank", 100)
        cache = getattr(source, "cache", None)  # the float16 page cache: read in place, not copied
        if not (root / "built.json").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            started = time.perf_counter()
            codes, halves, lengths = [], [], []
            for _, block in _blocks(source, spec["pages"]):
                codes.append(np.asarray(self.encoder.encode_documents(block), np.float32))
                if cache is None:
                    halves += [v.astype(np.float16) for v in block]
                lengths += [len(v) for v in block]
            np.save(root / "fde.npy", np.concatenate(codes))
            np.save(root / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
            if cache is None:
                np.save(root / "vectors.npy", np.concatenate(halves))
            (root / "built.json").write_text(json.dumps({"build_seconds": time.perf_counter() - started}))
        self.info = json.loads((root / "built.json").read_text())
        self.info["index_bytes"] = dir_bytes(root) + (spec["pages"] * corpora.PAGE_VECTORS * corpora.DIM * 2
                                                       if cache is not None else 0)
        self.fde = np.load(root / "fde.npy", mmap_mode="r")
        self.offsets = np.load(root / "offsets.npy")
        self.vectors = (cache.reshape(-1, corpora.DIM) if cache is not None
                        else np.load(root / "vectors.npy", mmap_mode="r"))

    def search(self, query: np.ndarray, k: int) -> list[int]:
        code = np.asarray(self.encoder.encode_queries(query), np.float32).reshape(-1)
        candidates = corpora.top_k((np.asarray(self.fde) @ code)[None, :], self.rerank)[0]
        scores = [float((query @ self.vectors[self.offsets[c]:self.offsets[c + 1]].astype(np.float32).T)
                        .max(axis=1).sum()) for c in candidates]
        order = np.argsort(scores)[::-1][:k]
        return [int(candidates[i]) for i in order]


#: What each engine imports, loaded before the "before opening" RSS is taken.
MODULES = {"numpy": ("infinity_assets.index.maxsim",), "fde-1m": ("infinity_assets.index", "faiss", "numkong"), "lancedb": ("lancedb", "pyarrow"),
           "two-stage": ("infinity_assets.index", "infinity_assets.storage.documents", "lancedb", "lance",
                         "faiss", "numkong"),
           "fast-plaid": ("torch", "fast_plaid.search"), "muvera": ("muvera",), "qdrant-edge": ("qdrant_edge",)}
ENGINES = {"numpy": Numpy, "lancedb": LanceMulti, "two-stage": TwoStage, "fast-plaid": FastPlaid,
           "muvera": Muvera, "qdrant-edge": QdrantEdge, "fde-1m": FirstStageMillion}


def work(spec: dict[str, Any]) -> dict[str, Any]:
    """Open (building if needed) the engine of ``spec``, answer its queries, return the measurements."""
    queries = list(np.load(spec["queries"], allow_pickle=True)) if spec.get("queries") else []
    source, ids = source_of(spec)
    import importlib

    for module in MODULES.get(spec["engine"], ()):  # imported before: a library's own size is not the index's
        importlib.import_module(module)
    rss_before = _rss()
    started = time.perf_counter()
    engine = ENGINES[spec["engine"]](spec, source, ids)
    open_seconds = time.perf_counter() - started
    if spec.get("build_only"):
        return {"info": getattr(engine, "info", {})}
    seconds, cpu, results = [], [], []
    k = spec.get("k", 10)
    for n, query in enumerate(queries):
        began, began_cpu = time.perf_counter(), time.process_time()
        results.append(engine.search(np.ascontiguousarray(query, np.float32), k))
        if n >= WARMUP or len(queries) <= WARMUP:
            seconds.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
    if hasattr(engine, "finish"):
        engine.finish()
    return {"seconds": seconds, "cpu_seconds": cpu, "top": results, "rss_before": rss_before, "rss_after": _rss(),
            "open_seconds": open_seconds, "info": getattr(engine, "info", {})}


def run_engine(spec: dict[str, Any], queries: list[np.ndarray], scratch: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run one engine in a fresh process (the plaid venv's Python for fast-plaid/muvera), the page cache
    emptied first (:func:`drop_page_cache`); its JSON result, or ``{"error": ...}`` naming why it did not run.
    When the engine before it ran on another build (or none did), the same engine first answers the same
    queries once, unmeasured (``warmed_up``): the VM host's cache of the disk, which the guest cannot empty,
    then holds what those queries read (and the reader's local copy is made and written back) for the first
    engine on a build as for the ones after it, which read the same pages."""
    scratch.mkdir(parents=True, exist_ok=True)
    python = str(PLAID_PYTHON) if spec["engine"] == "fast-plaid" else sys.executable
    if not Path(python).exists():
        return {"error": f"{python} missing: python3 -m venv {PLAID_PYTHON.parents[1]} && "
                         f"{PLAID_PYTHON.parent}/pip install torch==2.13.0 fast-plaid muvera-python pyarrow psutil"}
    scratch.mkdir(parents=True, exist_ok=True)
    marker = Path(spec.get("marker") or Path(spec.get("root", "")) / "built.json")
    if spec["engine"] not in ("numpy", "fde-1m") and not marker.exists():  # build in its own process: RSS is the query's alone
        built = _subprocess(python, {**spec, "build_only": True}, scratch, timeout)
        if "error" in built or spec.get("build_only"):
            return built
    queries_path = scratch / f"queries-{os.getpid()}-{len(queries)}.npy"
    array = np.empty(len(queries), dtype=object)
    array[:] = [np.asarray(q, np.float32) for q in queries]
    np.save(queries_path, array, allow_pickle=True)
    measured = {**spec, "queries": str(queries_path), "ids_only": spec["engine"] in ("two-stage", "fde-1m")}
    warmed = spec.get("root") is not None and spec["root"] != _LAST_ROOT[0]
    if warmed:  # the first engine on this build since another one ran
        _LAST_ROOT[0] = spec["root"]
        warm_up = _subprocess(python, measured, scratch, timeout)
        if "error" in warm_up:
            return warm_up
    cold = drop_page_cache()
    result = _subprocess(python, measured, scratch, timeout)
    return {**result, "page_cache_dropped": cold, "warmed_up": warmed}


#: The build root of the last engine run (:func:`run_engine`).
_LAST_ROOT: list[str | None] = [None]


def drop_page_cache() -> bool:
    """Empty the OS page cache (Linux, as root) so that every engine starts from a cold disk, whatever ran
    before it; True if it was emptied."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def _subprocess(python: str, spec: dict[str, Any], scratch: Path, timeout: float) -> dict[str, Any]:
    out = scratch / f"result-{os.getpid()}.json"
    env = {**os.environ, "LANCE_LOG": "error"}
    if spec.get("xtr_overfetch"):
        env["LANCE_XTR_OVERFETCH"] = str(spec["xtr_overfetch"])
    try:
        done = subprocess.run([python, "-m", "benchmarks.index_engines", json.dumps(spec), str(out)],
                              cwd=corpora.REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return {"error": last if done.returncode > 0 else f"crashed (signal {-done.returncode})",
                "stderr": done.stderr[-3000:]}
    return json.loads(out.read_text())


if __name__ == "__main__":
    result = work(json.loads(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(result, default=float))
