"""Where an index lives, its table schema, and the settings recorded in the table (model, hidden_dim, encoding).

The index lives at ``<store root>/index`` (``lancedb.connect``; a local folder or ``s3://...`` with the
document store's endpoint and credentials), one table per modality (``text``, ``images``), one row per
document of the current artifacts::

    doc_id, partition, source_uri, fingerprint string, embedded_at timestamp(us, UTC), n_vectors int32,
    page int32 (null unless the artifact has pages), page_text string (idem),
    fde        fixed_size_list<uint8, fde_bits / 8>          stage 1: the sign-binarized MUVERA code
    bits       list<fixed_size_list<uint8, hidden_dim / 8>>  stage 2: the signs of the pooled token vectors
    embedding  list<fixed_size_list<float16, hidden_dim>>    stage 4 and exact search: unit token vectors
    pooled     list<fixed_size_list<int8, hidden_dim>>       stage 3: the pooled token vectors, int8 per token

``embedding`` holds the artifact's vectors L2-normalised (the index scores cosine MaxSim) in the
``originals`` dtype of the encoding (float16 by default: half the bytes of float32, scores within ~1e-3 of
float32; float32 keeps them bit-exact). The table's schema metadata records the model, hidden_dim and the
:class:`EncodingSettings` (with the FDE's seed); a search with other settings is refused, a sync with other
settings rebuilds the table.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa

from infinity_assets import __version__
from infinity_assets.index.fde import FdeParams
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.storage.modality import MODALITIES

INDEX_DIR = "index"
#: The Lance file format index tables are written in: pylance 14's default, pinned so that a new default is
#: weighed before tables move to it (2.0 was: see "Designs weighed" in docs/search-at-scale.md). A table keeps
#: the format it was created in until it is rebuilt.
FILE_VERSION = "2.2"
#: The largest data file a write of an index table starts (Lance's default, 90 GB, put a 100,000-page table of
#: ColPali pages in one 30 GB file). Smaller files make more, smaller fragments: an object store that keeps a
#: large object as a list of chunks (SeaweedFS) pays for each range read in the object's size, and the
#: reader's local copy proceeds fragment by fragment.
DATA_FILE_BYTES = 2 * 1024**3
#: The table of each modality (``TABLES["images"] == "images"``).
TABLES: dict[str, str] = {modality.value: modality.table for modality in MODALITIES}
META_MODEL = b"infinity_assets.model"
META_HIDDEN_DIM = b"infinity_assets.hidden_dim"
META_ENCODING = b"infinity_assets.encoding"
#: The table's background clusters (:mod:`infinity_assets.index.background`), empty until learned.
META_BACKGROUND = b"infinity_assets.background"
KEY_COLUMNS = ["partition", "doc_id"]
VERSION_COLUMNS = ["fingerprint", "embedded_at"]
PAGE_COLUMNS = ["page", "page_text"]
#: The columns a hit is made of (no vectors).
HIT_COLUMNS = ["doc_id", "partition", "source_uri", "page", "page_text"]
ORIGINALS = {"float16": pa.float16(), "float32": pa.float32()}
#: Encoding fields that shape only the first stage's IVF beside the table, not its rows.
IVF_FIELDS = ("fde_lists",)
#: What the FDE may encode (:class:`EncodingSettings` ``fde_source``).
FDE_SOURCES = ("pooled", "tokens")


class SearchIndexError(Exception):
    """The index cannot answer: missing, empty, or made for another model, hidden_dim or encoding; says what
    to do."""


@dataclass(frozen=True)
class EncodingSettings:
    """What the index stores for the search stages; recorded in the table, a change rebuilds it.

    ``fde_*``: the MUVERA code of stage 1 (:mod:`infinity_assets.index.fde`); ``bits_pool_threshold``: the
    cosine above which a document's tokens are pooled into one 1-bit code for stage 2
    (:mod:`infinity_assets.index.pooling`; 1.0: every token keeps its own); ``fde_source``: which vectors the
    FDE encodes, ``pooled`` (each pooled token once, as the unit direction of its int8 ``pooled`` row: a
    page's near-duplicate background tokens then weigh as one in their bucket's average, not hundreds) or
    ``tokens`` (every token vector; tables written before the setting existed); ``originals``: the dtype of the
    unit token vectors kept for the final rerank and exact search (``float16`` or ``float32``);
    ``fde_lists``: the inverted lists of the first stage's IVF over the FDE codes
    (:mod:`infinity_assets.index.ivf`; 0: chosen from the number of rows). ``fde_lists`` shapes only the IVF
    beside the table: changing it rebuilds the IVF, not the rows. ``background_share``: a cluster of pooled
    tokens on more than this share of a table's pages is background, left out of ``fde`` and ``bits``
    (:mod:`infinity_assets.index.background`; 1.0: nothing is); ``background_pages``: the pages a table holds
    before its background is learned.
    """

    fde_repetitions: int = 20
    fde_simhash_bits: int = 5
    fde_projection_dim: int = 16
    fde_seed: int = 0
    bits_pool_threshold: float = 0.85
    fde_source: str = "pooled"
    originals: str = "float16"
    fde_lists: int = 0
    background_share: float = 0.2
    background_pages: int = 1000

    ENV_PREFIX = "INFINITY_ASSETS_INDEX_"

    def __post_init__(self) -> None:
        if self.fde_source not in FDE_SOURCES:
            raise ValueError(f"index encoding fde_source={self.fde_source!r}: expected one of {list(FDE_SOURCES)}")
        if self.originals not in ORIGINALS:
            raise ValueError(f"index encoding originals={self.originals!r}: expected one of {sorted(ORIGINALS)}")
        for name in ("fde_repetitions", "fde_simhash_bits", "fde_projection_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"index encoding {name}={getattr(self, name)}: must be at least 1")
        if not 0.0 < self.bits_pool_threshold <= 1.0:
            raise ValueError(f"index encoding bits_pool_threshold={self.bits_pool_threshold}: a cosine in (0, 1]")
        if not 0.0 < self.background_share <= 1.0:
            raise ValueError(f"index encoding background_share={self.background_share}: "
                             "a share of pages in (0, 1]")
        if self.background_pages < 1:
            raise ValueError(f"index encoding background_pages={self.background_pages}: must be at least 1")
        if self.fde_lists < 0 or self.fde_lists > 65_536:
            raise ValueError(f"index encoding fde_lists={self.fde_lists}: 0 (automatic) or 1-65,536 lists")
        if self.fde_simhash_bits > 12:
            raise ValueError(f"index encoding fde_simhash_bits={self.fde_simhash_bits}: at most 12 (4,096 buckets)")

    @classmethod
    def from_env(cls, **overrides: Any) -> EncodingSettings:
        """Defaults, replaced by ``INFINITY_ASSETS_INDEX_<FIELD>`` variables (read now), then by ``overrides``
        that are not None (run config)."""
        return cls(**_from_env(cls, cls.ENV_PREFIX, overrides))

    def fde(self, hidden_dim: int) -> FdeParams:
        """The FDE parameters for vectors of ``hidden_dim``."""
        return FdeParams(hidden_dim, self.fde_repetitions, self.fde_simhash_bits, self.fde_projection_dim,
                         self.fde_seed)

    def to_json(self) -> str:
        """The form recorded in the table metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    def rows_json(self) -> str:
        """The settings that decide what a row holds (all but the IVF's): a table whose rows were written with
        other ones is rebuilt."""
        return json.dumps({k: v for k, v in asdict(self).items() if k not in IVF_FIELDS}, sort_keys=True)

    def same_rows(self, other: EncodingSettings | None) -> bool:
        """True if rows written with ``other`` are what these settings write."""
        return other is not None and self.rows_json() == other.rows_json()

    @classmethod
    def from_json(cls, text: str) -> EncodingSettings:
        """Parse :meth:`to_json`'s output (a table written before token pooling pooled nothing: 1.0; one written
        before ``fde_source`` encoded every token; one written before the background left none out: 1.0; one
        written before the IVF had the default ``fde_lists``)."""
        return cls(**{"bits_pool_threshold": 1.0, "fde_source": "tokens", "background_share": 1.0,
                      **json.loads(text)})


def _from_env(cls: type, prefix: str, overrides: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in fields(cls):
        if field.name.isupper():
            continue
        raw = os.environ.get(f"{prefix}{field.name.upper()}")
        if raw not in (None, ""):
            kind = type(field.default)
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{prefix}{field.name.upper()}={raw!r}: expected {kind.__name__}") from None
        if overrides.get(field.name) is not None:
            values[field.name] = overrides[field.name]
    unknown = set(overrides) - {f.name for f in fields(cls)}
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return values


def index_schema(hidden_dim: int, model: str, modality: str, encoding: EncodingSettings | None = None,
                 background: str = "") -> pa.Schema:
    """The Arrow schema of an index table, with the model, hidden_dim, encoding and the name of its
    background clusters (empty: none learned) in its metadata."""
    encoding = encoding or EncodingSettings()
    code_bytes = encoding.fde(hidden_dim).dimension // 8
    return pa.schema([
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("n_vectors", pa.int32(), nullable=False),
        pa.field("page", pa.int32()),
        pa.field("page_text", pa.string()),
        pa.field("fde", pa.list_(pa.uint8(), code_bytes), nullable=False),
        pa.field("bits", pa.list_(pa.list_(pa.uint8(), (hidden_dim + 7) // 8)), nullable=False),
        pa.field("embedding", pa.list_(pa.list_(ORIGINALS[encoding.originals], hidden_dim)), nullable=False),
        pa.field("pooled", pa.list_(pa.list_(pa.int8(), hidden_dim)), nullable=False),
    ], metadata={META_MODEL: model, META_HIDDEN_DIM: str(hidden_dim), META_ENCODING: encoding.to_json(),
                 META_BACKGROUND: background,
                 b"infinity_assets.modality": modality, b"infinity_assets.package_version": __version__})


def index_uri(store: DocumentStore) -> str:
    """``<root>/index``: where the LanceDB database of a document store lives."""
    return f"{store.root_uri}/{INDEX_DIR}"


def table_uri(store: DocumentStore, modality: str) -> str:
    """``<root>/index/<table>.lance``: where the index table of ``modality`` lives."""
    return f"{index_uri(store)}/{TABLES[modality]}.lance"


def storage_options(store: DocumentStore) -> dict[str, str]:
    """LanceDB ``storage_options`` for the store's S3 endpoint and credentials (empty for a local root)."""
    if not store.is_s3:
        return {}
    fs: Any = store.fs
    options = {
        "aws_access_key_id": fs.key or os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "aws_secret_access_key": fs.secret or os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        "aws_region": store.region or "us-east-1",
    }
    if store.endpoint_url:
        options["aws_endpoint"] = store.endpoint_url
        # S3-compatible stores (SeaweedFS, MinIO) are addressed by path, often over plain HTTP inside a cluster.
        options["aws_virtual_hosted_style_request"] = "false"
        if store.endpoint_url.startswith("http://"):
            options["allow_http"] = "true"
    return {k: v for k, v in options.items() if v}


def connect(store: DocumentStore) -> Any:
    """The LanceDB connection of the store's index."""
    import lancedb

    return lancedb.connect(index_uri(store), storage_options=storage_options(store) or None)


def create_table(store: DocumentStore, modality: str, rows: Any, schema: pa.Schema,
                 file_version: str = FILE_VERSION) -> Any:
    """Create, or replace in one commit, the index table of ``modality`` from ``rows``, in
    ``file_version``, in data files of at most about :data:`DATA_FILE_BYTES`."""
    return write_rows(store, modality, rows, schema, "overwrite", file_version)


def write_rows(store: DocumentStore, modality: str, rows: Any, schema: pa.Schema, mode: str,
               file_version: str = FILE_VERSION) -> Any:
    """Write ``rows`` to the index table of ``modality`` in one commit (``mode``: Lance's ``"overwrite"`` or
    ``"append"``, which keeps the table's format) in data files of at most about :data:`DATA_FILE_BYTES`
    (LanceDB's ``create_table`` and ``add`` do not take the bound; the table is Lance's either way); the
    table, opened again."""
    import lance

    batches = rows.to_batches() if isinstance(rows, pa.Table) else rows
    # Lance checks the bound between the batches it is given: none is larger than a 16th of it
    pieces = pa.RecordBatchReader.from_batches(schema, _sliced(batches, DATA_FILE_BYTES // 16))
    lance.write_dataset(pieces, table_uri(store, modality), schema, mode=mode,
                        max_bytes_per_file=DATA_FILE_BYTES, data_storage_version=file_version,
                        storage_options=storage_options(store) or None)
    return connect(store).open_table(TABLES[modality])


def _sliced(batches: Any, limit: int) -> Any:
    """``batches`` sliced (no copy) into pieces of about ``limit`` bytes at most (a row at least)."""
    for batch in batches:
        rows = max(1, limit * batch.num_rows // max(1, batch.nbytes))
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def open_table(store: DocumentStore, modality: str) -> Any | None:
    """The index table of ``modality``, or None if it was never built."""
    try:
        return connect(store).open_table(TABLES[modality])
    except (ValueError, FileNotFoundError):
        return None


def table_settings(table: Any) -> tuple[str, int]:
    """``(model, hidden_dim)`` recorded in an index table's metadata."""
    metadata = table.schema.metadata or {}
    return metadata.get(META_MODEL, b"").decode(), int(metadata.get(META_HIDDEN_DIM, b"0"))


def table_encoding(table: Any) -> EncodingSettings | None:
    """The :class:`EncodingSettings` an index table was built with (None: a table without them, from before
    the two-stage search; the next sync rebuilds it)."""
    raw = (table.schema.metadata or {}).get(META_ENCODING)
    try:
        return EncodingSettings.from_json(raw.decode()) if raw else None
    except (ValueError, TypeError):
        return None


def table_background(table: Any) -> str:
    """The name of an index table's background clusters, "" if it has none (too small when built, from
    before they existed, or ``background_share=1.0``)."""
    return (table.schema.metadata or {}).get(META_BACKGROUND, b"").decode()


def column_bytes(dataset: Any) -> dict[str, int]:
    """Bytes on disk of each column of a pinned dataset version (``table.to_lance()``), from Lance's data
    statistics (a list column's child fields counted with it)."""
    by_id = {field.id: field.bytes_on_disk for field in dataset.stats.data_stats().fields}
    sizes, next_id = {}, 0
    for column in dataset.schema:
        count = _lance_field_count(column.type)
        sizes[column.name] = sum(by_id.get(i, 0) for i in range(next_id, next_id + count))
        next_id += count
    return sizes


def _lance_field_count(kind: pa.DataType) -> int:
    """Field ids Lance gives a column of type ``kind`` (depth first: lists and structs have child fields, a
    fixed-size list of numbers is one leaf)."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return 1 + _lance_field_count(kind.value_type)
    if pa.types.is_struct(kind):
        return 1 + sum(_lance_field_count(kind.field(i).type) for i in range(kind.num_fields))
    return 1
