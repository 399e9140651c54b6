"""The first stage's IVF: inverted lists over the FDE codes, kept beside the table, pinned to its version.

k-means in hamming space groups the documents' FDE codes into ``lists`` (faiss k-means on the codes' bits as
0/1 floats, where squared L2 is the hamming distance, on a sample and on every 4th repetition's bits to keep
training small). A query's expected masked hamming distance to a list's members is linear in the list's
bit means, so one small matrix product ranks the lists; the first stage then compares the query only with
the codes of the ``probes`` nearest lists, not with every page.

The IVF lives beside the table, in ``<index>/<table>.ivf/`` of the document store (local or S3): per table
version a Parquet file of every row's key and version (``partition, doc_id, fingerprint, embedded_at``) and
its list, in row order, plus the centroids it names. :func:`update` writes it after each commit, under the
writer lock: rows whose key and version are unchanged keep their list, new and changed rows are assigned to
the nearest centroid, deleted rows are gone; it trains anew when there is no IVF yet, when the encoding or
``fde_lists`` changed, or when the table has grown 4x since training. A reader loads the file of the version
it serves; a version without one (a sync killed between its commit and the IVF, an older index) is searched
by scanning every code, which gives the same candidates as before the IVF existed.
"""
from __future__ import annotations

import io
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infinity_assets.index.schema import INDEX_DIR, KEY_COLUMNS, TABLES, VERSION_COLUMNS, EncodingSettings
from infinity_assets.index.take import take_rows

logger = logging.getLogger(__name__)

#: Raised when the files below change meaning (an IVF of another format is retrained, never misread).
FORMAT = 1
#: Tables with fewer rows get no IVF unless ``fde_lists`` asks for one (a flat scan of a few thousand codes
#: costs well under a millisecond).
MIN_ROWS = 4096
#: Training samples per list (faiss asks for at least 39).
SAMPLE_PER_LIST = 64
#: Every this many FDE repetitions one is used to train and assign (the lists' means keep every bit).
TRAIN_STRIDE = 4
#: Retrain once the table holds this many times the rows the lists were trained on.
GROWTH = 4
META = b"infinity_assets.ivf"


@dataclass
class Lists:
    """One table version's IVF: each row's list, the lists' bit means (``(lists, bits)`` float32, to rank
    lists for a query) and the k-means centroids over the training bits (to assign new rows)."""

    lists: np.ndarray
    means: np.ndarray
    centroids: np.ndarray
    version: int
    _members: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """Number of lists."""
        return len(self.means)

    def members(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, starts)``: row positions grouped by list; list ``l`` owns ``order[starts[l]:starts[l+1]]``."""
        if self._members is None:
            order = np.argsort(self.lists, kind="stable")
            starts = np.zeros(self.count + 1, np.int64)
            np.cumsum(np.bincount(self.lists, minlength=self.count), out=starts[1:])
            self._members = (order, starts)
        return self._members

    def probe(self, signs: np.ndarray, mask: np.ndarray, probes: int, candidates: int) -> np.ndarray:
        """Row positions (sorted) of the ``probes`` lists nearest a query code (``signs``, ``mask``: packed
        bits), more lists taken until they hold ``candidates`` rows. Lists are ranked by their members'
        expected masked hamming distance to the query, ``sum over masked bits of |query bit - bit mean|``,
        i.e. (up to a constant) ``means @ (mask * (1 - 2 * query bits))``."""
        order, starts = self.members()
        weights = np.unpackbits(mask).astype(np.float32) * (1.0 - 2.0 * np.unpackbits(signs))
        ranked = np.argsort(self.means @ weights, kind="stable")
        sizes = np.diff(starts)[ranked]
        enough = int(np.searchsorted(np.cumsum(sizes), candidates)) + 1
        chosen = ranked[:max(probes, enough)]
        lengths = np.diff(starts)[chosen]
        offsets = np.zeros(len(chosen) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        members = np.repeat(starts[chosen] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return np.sort(order[members])


def lists_for(rows: int, encoding: EncodingSettings) -> int:
    """The number of lists for a table of ``rows`` (``fde_lists``, or about ``sqrt(rows)``; 0: no IVF)."""
    if encoding.fde_lists:
        return min(encoding.fde_lists, rows)
    if rows < MIN_ROWS:
        return 0
    return int(2 ** round(np.log2(np.sqrt(rows))))


def rep_bytes(encoding: EncodingSettings) -> int:
    """Bytes of one FDE repetition in a code."""
    return (1 << encoding.fde_simhash_bits) * encoding.fde_projection_dim // 8


def folder(store: Any, modality: str) -> str:
    """Where the IVF files of a table live (a path of ``store.fs``)."""
    return store.path(f"{INDEX_DIR}/{TABLES[modality]}.ivf")


def _training_bits(codes: np.ndarray, bytes_per_rep: int) -> np.ndarray:
    """The bits of every :data:`TRAIN_STRIDE`-th repetition of ``codes`` as 0/1 float32."""
    reps = codes.shape[1] // bytes_per_rep
    picked = codes.reshape(len(codes), reps, bytes_per_rep)[:, ::TRAIN_STRIDE].reshape(len(codes), -1)
    return np.unpackbits(picked, axis=1).astype(np.float32)


def train(codes: np.ndarray, lists: int, bytes_per_rep: int, seed: int = 0) -> np.ndarray:
    """k-means centroids of ``(n, nbytes)`` codes in hamming space over the training bits:
    ``(lists, training bits)`` float32 (faiss k-means on 0/1 vectors)."""
    import faiss

    rng = np.random.default_rng(seed)
    sample = codes if len(codes) <= lists * SAMPLE_PER_LIST else codes[
        np.sort(rng.choice(len(codes), lists * SAMPLE_PER_LIST, replace=False))]
    bits = _training_bits(sample, bytes_per_rep)
    kmeans = faiss.Kmeans(bits.shape[1], lists, niter=12, seed=seed, verbose=False,
                          max_points_per_centroid=SAMPLE_PER_LIST * 4)
    kmeans.train(bits)
    return np.asarray(kmeans.centroids, np.float32)


def assign(codes: np.ndarray, centroids: np.ndarray, bytes_per_rep: int, block: int = 8192) -> np.ndarray:
    """The nearest centroid of each code (squared L2 on the training bits: their hamming distance to the
    centroid's bits): ``(n,)`` int32, computed ``block`` codes at a time (bounded memory)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    out = np.empty(len(codes), np.int32)
    for start in range(0, len(codes), block):
        _, nearest = index.search(_training_bits(codes[start:start + block], bytes_per_rep), 1)
        out[start:start + block] = nearest[:, 0]
    return out


def bit_means(codes: np.ndarray, lists: np.ndarray, count: int, block: int = 4096) -> np.ndarray:
    """Each list's share of members with each bit of the code set: ``(count, bits)`` float32. Rows are taken
    grouped by list, ``block`` at a time, and each block's few lists summed by one small matrix product."""
    order = np.argsort(lists, kind="stable")
    sums = np.zeros((count, codes.shape[1] * 8), np.float32)
    for start in range(0, len(order), block):
        rows = order[start:start + block]
        present, owner = np.unique(lists[rows], return_inverse=True)
        onehot = np.zeros((len(present), len(rows)), np.float32)
        onehot[owner, np.arange(len(rows))] = 1.0
        sums[present] += onehot @ np.unpackbits(codes[rows], axis=1).astype(np.float32)
    sizes = np.bincount(lists, minlength=count).astype(np.float32)
    return sums / np.maximum(sizes, 1.0)[:, None]


def update(store: Any, modality: str, table: Any, encoding: EncodingSettings) -> dict[str, Any]:
    """Bring the IVF beside ``table`` to its current version (see the module docstring); call it under the
    writer lock after a commit. Returns what it did (``lists``, ``trained``, ``assigned``, ``seconds``)."""
    started = time.perf_counter()
    fs, base = store.fs, folder(store, modality)
    dataset = table.to_lance()
    rows = dataset.count_rows()
    count = lists_for(rows, encoding)
    keys = dataset.to_table(columns=[*KEY_COLUMNS, *VERSION_COLUMNS])
    previous = _latest(fs, base, encoding, dataset.version)
    report = {"lists": count, "trained": False, "assigned": 0, "rows": rows}
    if previous is not None and previous["meta"]["version"] == dataset.version and previous["meta"]["lists"] == count:
        report["seconds"] = time.perf_counter() - started
        return report  # already up to date
    if count < 2:
        _prune(fs, base, keep=None)
        report["seconds"] = time.perf_counter() - started
        return report
    bytes_per_rep = rep_bytes(encoding)
    lists = np.full(rows, -1, np.int32)
    centroids_name, trained_rows = None, 0
    if previous is not None and previous["meta"]["lists"] == count and rows < GROWTH * previous["meta"]["trained_rows"]:
        centroids_name, trained_rows = previous["meta"]["centroids"], previous["meta"]["trained_rows"]
        lists = _carry(keys, previous["table"])
    todo = np.flatnonzero(lists < 0)
    if centroids_name is None:
        codes = _codes(dataset, None)
        centroids = train(codes, count, bytes_per_rep, encoding.fde_seed)
        lists = assign(codes, centroids, bytes_per_rep)
        means = bit_means(codes, lists, count)
        centroids_name, trained_rows = f"centroids-{uuid.uuid4().hex}.npz", rows
        write_whole(fs, f"{base}/{centroids_name}", _npz(centroids=centroids, means=means.astype(np.float16)))
        report.update(trained=True, assigned=rows)
    elif len(todo):
        centroids = _load_npz(fs, f"{base}/{centroids_name}")["centroids"]
        lists[todo] = assign(_codes(dataset, todo), centroids, bytes_per_rep)
        report["assigned"] = len(todo)
    meta = {"format": FORMAT, "rows_encoding": encoding.rows_json(), "lists": count, "centroids": centroids_name,
            "trained_rows": trained_rows, "version": dataset.version}
    out = keys.append_column("list", pa.array(lists, pa.int32()))
    out = out.replace_schema_metadata({META: json.dumps(meta).encode()})
    sink = io.BytesIO()
    pq.write_table(out, sink)
    write_whole(fs, f"{base}/v{dataset.version:012d}.parquet", sink.getvalue())
    _prune(fs, base, keep=(dataset.version, centroids_name))
    report["seconds"] = time.perf_counter() - started
    return report


def load(store: Any, modality: str, dataset: Any, encoding: EncodingSettings) -> Lists | None:
    """The IVF of ``dataset``'s version (a pinned Lance dataset), or None if there is none for it, or it was
    written for other rows or in another format (then the first stage scans every code)."""
    fs, base = store.fs, folder(store, modality)
    path = f"{base}/v{dataset.version:012d}.parquet"
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            meta = json.loads((parquet.schema_arrow.metadata or {}).get(META, b"{}"))
            table = parquet.read(columns=["list"])
    except FileNotFoundError:
        return None
    if meta.get("format") != FORMAT or meta.get("rows_encoding") != encoding.rows_json() or \
            table.num_rows != dataset.count_rows():
        logger.warning("IVF %s was written for other rows; the first stage scans every code", path)
        return None
    arrays = _load_npz(fs, f"{base}/{meta['centroids']}")
    return Lists(table.column("list").to_numpy(), arrays["means"].astype(np.float32), arrays["centroids"],
                 dataset.version)


def _latest(fs: Any, base: str, encoding: EncodingSettings, below: int) -> dict[str, Any] | None:
    """The newest IVF file of a version before ``below`` written for these rows and format, with its meta."""
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
    except FileNotFoundError:
        return None
    for name in reversed([n for n in names if n.startswith("v") and n.endswith(".parquet")]):
        if int(name[1:-8]) > below:
            continue
        with fs.open(f"{base}/{name}", "rb") as handle:
            table = pq.read_table(handle)
        meta = json.loads((table.schema.metadata or {}).get(META, b"{}"))
        if meta.get("format") == FORMAT and meta.get("rows_encoding") == encoding.rows_json():
            return {"meta": meta, "table": table}
        return None
    return None


def _carry(keys: pa.Table, previous: pa.Table) -> np.ndarray:
    """Each row's list from ``previous`` where its key and version are unchanged, else -1 (row order)."""
    columns = [*KEY_COLUMNS, *VERSION_COLUMNS]
    left = keys.select(columns).append_column("position", pa.array(np.arange(keys.num_rows), pa.int64()))
    joined = left.join(previous.select([*columns, "list"]), keys=columns, join_type="inner")
    out = np.full(keys.num_rows, -1, np.int32)
    out[joined.column("position").to_numpy()] = joined.column("list").to_numpy()
    return out


def _codes(dataset: Any, positions: np.ndarray | None) -> np.ndarray:
    """The ``fde`` codes of ``positions`` (None: every row), ``(n, nbytes)`` uint8."""
    if positions is None:
        column = dataset.to_table(columns=["fde"]).column("fde").combine_chunks()
    else:
        column = take_rows(dataset, positions, ["fde"]).column("fde").combine_chunks()
    return column.flatten().to_numpy().reshape(-1, column.type.list_size)


def _npz(**arrays: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


def _load_npz(fs: Any, path: str) -> dict[str, np.ndarray]:
    with fs.open(path, "rb") as handle:
        return dict(np.load(io.BytesIO(handle.read())))


def write_whole(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` whole or not at all (a temporary name, then a rename; one PUT on S3)."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if getattr(fs, "protocol", None) in ("s3", ("s3", "s3a")) or "s3" in str(getattr(fs, "protocol", "")):
        fs.pipe_file(path, data)
        return
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    fs.pipe_file(temporary, data)
    fs.mv(temporary, path)


def _prune(fs: Any, base: str, keep: tuple[int, str] | None) -> None:
    """Remove IVF files but the newest two versions' and the centroids they name (all of them: ``keep`` None)."""
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
    except FileNotFoundError:
        return
    versions = [n for n in names if n.startswith("v") and n.endswith(".parquet")]
    kept = set(versions[-2:]) if keep else set()
    named = set()
    for name in kept:
        with fs.open(f"{base}/{name}", "rb") as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        named.add(json.loads((schema.metadata or {}).get(META, b"{}")).get("centroids"))
    for name in names:
        if name not in kept and name not in named:
            fs.rm(f"{base}/{name}")
