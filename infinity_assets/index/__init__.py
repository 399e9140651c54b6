"""The LanceDB multi-vector index of the artifacts: exact incremental sync, compact encodings, staged search.

Plain Python (no Dagster). One table per modality at ``<store root>/index`` (:mod:`.schema`), made equal to
the artifacts by :func:`sync_index` (:mod:`.sync`, one commit per sync, one writer under
:mod:`.lock`), searched by :class:`IndexReader` / :func:`search_text` (:mod:`.reader`): MUVERA codes
(:mod:`.fde`, all of them, or those in the nearest lists of an IVF kept beside the table, :mod:`.ivf`; the
corpus's background tokens left out, :mod:`.background`) pick candidates, sign MaxSim on 1-bit token vectors (:mod:`.binary`) narrows them, float MaxSim on the few
orders them (:mod:`.staged`), all on compiled kernels (:mod:`.kernels`), the rows read by position
fragment by fragment (:mod:`.take`); ``exact=True`` scans everything.
:mod:`.bulk` writes an index straight from vectors (benchmarks); :mod:`.reference` holds the exact
references tests compare with.
"""
from infinity_assets.index.bulk import write_index
from infinity_assets.index.hits import Hit, add_snippets
from infinity_assets.index.reader import IndexReader, SearchResult, search_text, search_text_timed
from infinity_assets.index.reference import artifact_rows, exact_hits, index_rows
from infinity_assets.index.schema import (
    FILE_VERSION,
    INDEX_DIR,
    TABLES,
    EncodingSettings,
    SearchIndexError,
    connect,
    create_table,
    index_schema,
    index_uri,
    open_table,
    storage_options,
    table_background,
    table_encoding,
    table_settings,
)
from infinity_assets.index.sync import DEFAULT_CLEANUP_OLDER_THAN, SyncReport, sync_index
from infinity_assets.index.staged import SearchSettings

__all__ = [
    "DEFAULT_CLEANUP_OLDER_THAN", "FILE_VERSION", "INDEX_DIR", "TABLES", "EncodingSettings", "Hit",
    "IndexReader", "SearchIndexError", "SearchResult", "SearchSettings", "SyncReport", "add_snippets",
    "artifact_rows", "connect", "create_table", "exact_hits", "index_rows", "index_schema", "index_uri",
    "open_table", "search_text", "search_text_timed", "storage_options", "sync_index", "table_background",
    "table_encoding", "table_settings", "write_index",
]
