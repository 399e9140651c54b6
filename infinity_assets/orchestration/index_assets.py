"""The index assets ``text_index`` / ``image_index`` (LanceDB, synced with the artifacts) and their quality check.

Each index asset is unpartitioned and downstream of every partition of its embedding asset: one
materialization syncs all changed batches at once (``index.sync_index``). One writer at a time is guaranteed
by the index's writer lock (flock locally, a conditional-PUT lease on S3), whoever launches the run; the
``index_writer`` pool and the automation condition (never while a run of the same index is in progress) keep
runs from queueing on that lock. ``index_automation_sensor`` requests a sync after embedding partitions were
materialized.
"""
from datetime import timedelta

import dagster as dg

from infinity_assets.index.evaluation import EvalSetError, eval_set_key, evaluate, load_eval_set
from infinity_assets.index import (
    DEFAULT_ANN_THRESHOLD_VECTORS,
    IndexReader,
    SearchIndexError,
    SyncReport,
    index_schema,
    sync_index,
)
from infinity_assets.orchestration.resources import DocumentStoreResource, InfinityResource

INDEX_POOL = "index_writer"
QUALITY_CHECK = "retrieval_quality"

#: Sync after any embedding partition was materialized, and once when the index was never built (first
#: deploy: ``since_last_handled`` alone ignores what happened before), never beside a running sync.
INDEX_AUTOMATION = (
    (dg.AutomationCondition.any_deps_updated().since_last_handled() | dg.AutomationCondition.missing().newly_true())
    & ~dg.AutomationCondition.in_progress()
).with_label("embeddings updated or index never built, no sync in progress")


class IndexConfig(dg.Config):
    """Run config of the index assets."""

    ann_threshold_vectors: int = DEFAULT_ANN_THRESHOLD_VECTORS
    """Build the ANN (IVF-PQ) index on the embedding column once the table holds this many token vectors
    (documents x vectors per document); 0 never."""
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


def _build(name: str, modality: str, upstream: str, infinity_key: str) -> tuple[dg.AssetsDefinition,
                                                                              dg.AssetChecksDefinition]:
    @dg.asset(
        name=name,
        deps=[upstream],
        pool=INDEX_POOL,
        group_name="index",
        kinds={"lancedb"},
        automation_condition=INDEX_AUTOMATION,
        required_resource_keys={infinity_key, "document_store"},
        metadata={"dagster/column_schema": dg.TableSchema(columns=[
            dg.TableColumn(f.name, str(f.type).replace("384", "hidden_dim")) for f in index_schema(384, "", "")])},
        description=f"LanceDB table {modality!r} at <root>/index: one row per document of the current "
                    f"{upstream} artifacts (upserts, deletes; unchanged rows untouched), compacted, old versions "
                    "removed, an ANN index past ann_threshold_vectors. Searched by `infinity-assets search`.",
    )
    def _index(context: dg.AssetExecutionContext, config: IndexConfig) -> dg.MaterializeResult:
        infinity: InfinityResource = getattr(context.resources, infinity_key)
        store = context.resources.document_store.get_store()
        settings = infinity.effective_settings()
        report = sync_index(store, modality, model=settings["model_name"], hidden_dim=settings["hidden_dim"],
                            ann_threshold_vectors=config.ann_threshold_vectors,
                            cleanup_older_than=timedelta(minutes=config.cleanup_older_than_minutes),
                            lock_timeout=config.lock_timeout_seconds)
        for partition, reason in report.skipped[:50]:
            context.log.warning(f"partition {partition!r} not indexed: {reason}")
        return dg.MaterializeResult(metadata={**_metadata(report), "dagster/column_lineage": _lineage(upstream)})

    @dg.asset_check(asset=name, name=QUALITY_CHECK, required_resource_keys={infinity_key, "document_store"},
                    description=f"recall@k, MRR@10 and nDCG@5 of the index on the labelled queries of "
                                f"{eval_set_key(modality)} in the store, against thresholds from config.")
    def _quality(context: dg.AssetCheckExecutionContext, config: QualityConfig) -> dg.AssetCheckResult:
        infinity: InfinityResource = getattr(context.resources, infinity_key)
        document_store: DocumentStoreResource = context.resources.document_store
        return quality_result(document_store, infinity, modality, config)

    return _index, _quality


def quality_result(document_store: DocumentStoreResource, infinity: InfinityResource, modality: str,
                   config: QualityConfig) -> dg.AssetCheckResult:
    """The retrieval quality check's result (no labelled set: passed, saying there is nothing to measure)."""
    store = document_store.get_store()
    where = store.uri_for(eval_set_key(modality))
    try:
        queries = load_eval_set(store, modality)
        if queries is None:
            return dg.AssetCheckResult(passed=True, description=f"no labelled queries at {where}: nothing measured")
        reader = IndexReader(store, modality)
        client = infinity.get_client()
        # Another model with the same hidden_dim can still be measured: the metrics show what it costs.
        reader.check_settings(reader.model, client.hidden_dim)
        quality = evaluate(queries, lambda text, n: [h.doc_id for h in reader.search(client.embed_query(text), n)],
                           config.k)
    except (EvalSetError, SearchIndexError) as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc), severity=dg.AssetCheckSeverity.ERROR)
    below = [f"{name} {value:.3f} < {minimum}" for name, value, minimum in (
        (f"recall@{config.k}", quality.recall_at_k, config.min_recall_at_k),
        ("MRR@10", quality.mrr_at_10, config.min_mrr_at_10),
        ("nDCG@5", quality.ndcg_at_5, config.min_ndcg_at_5)) if value < minimum]
    problems = ([f"below thresholds: {', '.join(below)}"] if below else []) + (
        [f"the index was built with model {reader.model!r}, queries are embedded with {client.model_name!r}"]
        if reader.model != client.model_name else [])
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or f"{quality.queries} labelled queries: all metrics within thresholds",
        metadata={f"recall_at_{config.k}": dg.MetadataValue.float(quality.recall_at_k),
                  "mrr_at_10": dg.MetadataValue.float(quality.mrr_at_10),
                  "ndcg_at_5": dg.MetadataValue.float(quality.ndcg_at_5),
                  "queries": quality.queries, "eval_set": dg.MetadataValue.path(where),
                  "model": reader.model})


def _lineage(upstream: str) -> dg.TableColumnLineage:
    """Each index column comes from the artifact column of the same name (``partition`` from its partition)."""
    columns = ["doc_id", "source_uri", "fingerprint", "embedded_at", "n_vectors", "embedding", "page", "page_text"]
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=dg.AssetKey(upstream), column_name=column)] for column in columns})


def _metadata(report: SyncReport) -> dict[str, object]:
    return {
        "dagster/row_count": report.rows,
        "inserted": report.inserted, "updated": report.updated, "deleted": report.deleted,
        "unchanged": report.unchanged, "partitions": report.partitions,
        "partitions_changed": dg.MetadataValue.json(report.partitions_changed[:200]),
        "partitions_removed": dg.MetadataValue.json(report.partitions_removed[:200]),
        "partitions_skipped": dg.MetadataValue.json([{"partition": p, "reason": r} for p, r in report.skipped[:100]]),
        "rebuilt": report.rebuilt, "model": report.model, "hidden_dim": report.hidden_dim,
        "table_version": report.version, "ann_index": report.ann_index, "ann_index_built": report.ann_index_built,
        "optimized": report.optimized, "lock_wait_seconds": round(report.lock_wait_seconds, 2),
        "lock_held_seconds": round(max(0.0, report.lock_held[1] - report.lock_held[0]), 2),
        "seconds": round(report.seconds, 2), "uri": dg.MetadataValue.path(report.uri),
    }


text_index, text_quality = _build("text_index", "text", "text_embeddings", "infinity")
image_index, image_quality = _build("image_index", "images", "image_embeddings", "infinity_images")

index_automation_sensor = dg.AutomationConditionSensorDefinition(
    "index_automation_sensor", target=dg.AssetSelection.assets(text_index, image_index),
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Requests a sync of text_index / image_index after embedding partitions were materialized.")
