"""A corpus's index assets ``<corpus>/text_index`` / ``<corpus>/image_index`` (LanceDB, synced with the artifacts)
and their quality check.

Each index asset is unpartitioned and downstream of every partition of its embedding asset: one
materialization syncs all changed batches at once (``index.sync_index``), computing the compact columns of
the staged search with the corpus's index encoding, and reports the bytes per page, the stages'
parameters and a recall@10 of the default search against exact on known-item queries cut from the indexed
documents (``index.evaluation.self_recall``), so quality drift shows in the UI without a labelled set. One writer at a time is guaranteed
by the index's writer lock (flock locally, a conditional-PUT lease on S3), whoever launches the run; the
``index_writer`` pool and the automation condition (never while a run of the same index is in progress) keep
runs from queueing on that lock. The corpus's ``<corpus>_index_automation_sensor`` requests a sync after its
embedding partitions were materialized.
"""
from dataclasses import asdict
from datetime import timedelta

import dagster as dg

from infinity_assets.corpus import ClientSettings, CorpusModality, CorpusSpec
from infinity_assets.index import (
    IndexReader,
    SearchIndexError,
    SearchSettings,
    SyncReport,
    index_schema,
    open_table,
    sync_index,
)
from infinity_assets.index.evaluation import EvalSetError, SelfRecall, eval_set_key, evaluate, load_eval_set, self_recall
from infinity_assets.orchestration.keys import asset_key
from infinity_assets.storage.documents import DocumentStore

INDEX_POOL = "index_writer"
QUALITY_CHECK = "retrieval_quality"

#: Sync after any embedding partition was materialized, and once when the index was never built but some
#: embeddings exist (first deploy: ``since_last_handled`` alone ignores what happened before; with no
#: embeddings at all there is nothing to index, and an empty index would only fail its quality check), never
#: beside a running sync.
INDEX_AUTOMATION = (
    (dg.AutomationCondition.any_deps_updated().since_last_handled()
     | (dg.AutomationCondition.missing()
        & dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing())).newly_true())
    & ~dg.AutomationCondition.in_progress()
).with_label("embeddings updated, or index never built while embeddings exist; no sync in progress")


class IndexConfig(dg.Config):
    """Run config of the index assets (the encoding and search settings are the corpus's ``index`` block)."""

    drift_queries: int | None = None
    """Known-item queries cut from indexed documents after each sync (0: no drift measurement); default: the
    corpus's ``index.drift_queries``."""
    drift_seconds: float = 20.0
    """Time budget of the drift measurement's exact searches (each scans the whole index)."""
    cleanup_older_than_minutes: int = 60
    """Table versions older than this are removed by the maintenance after each sync."""
    lock_timeout_seconds: float = 600.0
    """How long to wait for another writer of the index before failing."""


class QualityConfig(dg.Config):
    """Thresholds of the retrieval quality check (averages over the labelled queries)."""

    k: int = 10
    min_recall_at_k: float = 0.8
    min_mrr_at_10: float = 0.5
    min_ndcg_at_5: float = 0.5


def build_index_assets(spec: CorpusSpec, modality: CorpusModality) -> tuple[dg.AssetsDefinition,
                                                                               dg.AssetChecksDefinition]:
    """The index asset ``<corpus>/<stem>_index`` of one modality and its retrieval quality check."""
    key, upstream = asset_key(modality, "index"), asset_key(modality, "embeddings")
    settings = spec.index

    @dg.asset(
        key=key,
        deps=[upstream],
        pool=INDEX_POOL,
        group_name=spec.name,
        kinds={"lancedb"},
        automation_condition=INDEX_AUTOMATION,
        metadata={"dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn(f.name, str(f.type).replace("384", "hidden_dim")) for f in index_schema(384, "", "")]),
                  "corpus": spec.name},
        description=f"LanceDB table {modality.kind!r} at <root>/index of corpus {spec.name!r}: one row per document "
                    f"of the current {upstream.to_user_string()} artifacts (upserts, deletes; unchanged rows "
                    "untouched), compacted, old versions removed; compact columns for the staged search of "
                    "`infinity-assets search`.",
    )
    def _index(context: dg.AssetExecutionContext, config: IndexConfig) -> dg.MaterializeResult:
        store = spec.build_store()
        report = sync_index(store, modality.kind, model=modality.client.model_name,
                            hidden_dim=modality.client.hidden_dim, encoding=settings.encoding,
                            cleanup_older_than=timedelta(minutes=config.cleanup_older_than_minutes),
                            lock_timeout=config.lock_timeout_seconds)
        for partition, reason in report.skipped[:50]:
            context.log.warning(f"partition {partition!r} not indexed: {reason}")
        drift = settings.drift_queries if config.drift_queries is None else config.drift_queries
        return dg.MaterializeResult(metadata={
            **_metadata(report), **_search_metadata(store, modality.kind, settings.search, drift, config.drift_seconds),
            "dagster/column_lineage": _lineage(upstream)})

    @dg.asset_check(asset=key, name=QUALITY_CHECK,
                    description=f"recall@k, MRR@10 and nDCG@5 of the index on the labelled queries of "
                                f"{eval_set_key(modality.kind)} in the store, against thresholds from config.")
    def _quality(context: dg.AssetCheckExecutionContext, config: QualityConfig) -> dg.AssetCheckResult:
        return quality_result(spec.build_store(), modality.client, modality.kind, config, settings.search)

    return _index, _quality


def build_index_automation_sensor(spec: CorpusSpec) -> dg.AutomationConditionSensorDefinition:
    """``<corpus>_index_automation_sensor``: syncs the corpus's indexes after its embeddings changed."""
    return dg.AutomationConditionSensorDefinition(
        f"{spec.name}_index_automation_sensor",
        target=dg.AssetSelection.assets(*(asset_key(m, "index") for m in spec.modalities)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=spec.index.sync_interval_seconds,
        description=f"Requests a sync of corpus {spec.name!r}'s indexes after its embedding partitions were "
                    "materialized.")


def quality_result(store: DocumentStore, client_settings: ClientSettings, kind: str, config: QualityConfig,
                   search: SearchSettings) -> dg.AssetCheckResult:
    """The retrieval quality check's result, searching with ``search`` (the corpus's ``index.search``, what its
    users search with); no labelled set: passed, saying there is nothing to measure."""
    where = store.uri_for(eval_set_key(kind))
    try:
        queries = load_eval_set(store, kind)
        if queries is None:
            return dg.AssetCheckResult(passed=True, description=f"no labelled queries at {where}: nothing measured")
        table = open_table(store, kind)
        if table is None or table.count_rows() == 0:  # nothing embedded yet: not a quality failure
            return dg.AssetCheckResult(passed=True, description=f"the {kind} index holds no documents yet "
                                       "(nothing embedded with its model): nothing measured")
        reader = IndexReader(store, kind)
        with client_settings.build_client() as client:
            # Another model with the same hidden_dim can still be measured: the metrics show what it costs.
            reader.check_settings(reader.model, client.hidden_dim)
            quality = evaluate(queries, lambda text, n: [
                hit.doc_id for hit in reader.search(client.embed_query(text), n, settings=search)], config.k)
    except (EvalSetError, SearchIndexError) as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc), severity=dg.AssetCheckSeverity.ERROR)
    below = [f"{name} {value:.3f} < {minimum}" for name, value, minimum in (
        (f"recall@{config.k}", quality.recall_at_k, config.min_recall_at_k),
        ("MRR@10", quality.mrr_at_10, config.min_mrr_at_10),
        ("nDCG@5", quality.ndcg_at_5, config.min_ndcg_at_5)) if value < minimum]
    problems = ([f"below thresholds: {', '.join(below)}"] if below else []) + (
        [f"the index was built with model {reader.model!r}, queries are embedded with {client_settings.model_name!r}"]
        if reader.model != client_settings.model_name else [])
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or f"{quality.queries} labelled queries: all metrics within thresholds",
        metadata={f"recall_at_{config.k}": dg.MetadataValue.float(quality.recall_at_k),
                  "mrr_at_10": dg.MetadataValue.float(quality.mrr_at_10),
                  "ndcg_at_5": dg.MetadataValue.float(quality.ndcg_at_5),
                  "queries": quality.queries, "eval_set": dg.MetadataValue.path(where),
                  "search_settings": dg.MetadataValue.json(asdict(search)),
                  "model": reader.model})


def _lineage(upstream: dg.AssetKey) -> dg.TableColumnLineage:
    """Each index column comes from the artifact column of the same name (``partition`` from its partition)."""
    columns = ["doc_id", "source_uri", "fingerprint", "embedded_at", "n_vectors", "embedding", "page", "page_text"]
    derived = {"fde": "embedding", "bits": "embedding"}
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=upstream, column_name=derived.get(column, column))]
        for column in [*columns, *derived]})


def _metadata(report: SyncReport) -> dict[str, object]:
    return {
        "dagster/row_count": report.rows,
        "inserted": report.inserted, "updated": report.updated, "deleted": report.deleted,
        "unchanged": report.unchanged, "partitions": report.partitions,
        "partitions_changed": dg.MetadataValue.json(report.partitions_changed[:200]),
        "partitions_removed": dg.MetadataValue.json(report.partitions_removed[:200]),
        "partitions_skipped": dg.MetadataValue.json([{"partition": p, "reason": r} for p, r in report.skipped[:100]]),
        "rebuilt": report.rebuilt, "model": report.model, "hidden_dim": report.hidden_dim,
        "table_version": report.version, "encoding": dg.MetadataValue.json(asdict(report.encoding)),
        "background_clusters": report.background.get("background_clusters", 0),
        "compaction": dg.MetadataValue.json(report.compaction), "lock_wait_seconds": round(report.lock_wait_seconds, 2),
        "lock_held_seconds": round(max(0.0, report.lock_held[1] - report.lock_held[0]), 2),
        "seconds": round(report.seconds, 2), "uri": dg.MetadataValue.path(report.uri),
    }


def _search_metadata(store: DocumentStore, kind: str, search: SearchSettings, drift_queries: int,
                     drift_seconds: float) -> dict[str, object]:
    """Bytes per page, the search stages' parameters and the drift measurement (empty if no table yet)."""
    try:
        reader = IndexReader(store, kind)
    except SearchIndexError:
        return {}
    sizes = reader.bytes_per_page()
    metadata: dict[str, object] = {
        "bytes_per_page": round(sizes["total"]), "bytes_per_page_stages_1_2": round(sizes["stages_1_2"]),
        "bytes_per_page_by_column": dg.MetadataValue.json({k: round(v) for k, v in sizes.items()}),
        "search_settings": dg.MetadataValue.json(asdict(search)),
    }
    if drift_queries > 0:
        drift: SelfRecall = self_recall(reader, drift_queries, settings=search, seconds=drift_seconds)
        metadata.update({
            "drift_recall_at_10": drift.recall_at_k, "drift_known_item_at_10": drift.known_item_at_k,
            "drift_queries": drift.queries, "drift_exact_queries": drift.exact_queries,
            "drift_seconds": round(drift.seconds, 2),
            **{f"drift_kept_by_{stage}_at_10": share for stage, share in drift.kept_at_k.items()}})
    return metadata
