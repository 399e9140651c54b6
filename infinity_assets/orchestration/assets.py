"""The embedding asset of a corpus modality: one partition = one batch folder -> one Parquet multi-vector artifact."""

import warnings
from collections.abc import Iterator, Sequence

import dagster as dg

from infinity_assets.artifacts import artifact_schema
from infinity_assets.client import allocator
from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.client.errors import InfinityError
from infinity_assets.corpus import CorpusModality, CorpusSpec
from infinity_assets.orchestration.checks import artifact_verdicts, check_result
from infinity_assets.orchestration.keys import asset_key, batch_partitions
from infinity_assets.orchestration.provenance import materialization_tags
from infinity_assets.pipeline import PartitionReport, embed_partition
from infinity_assets.storage.documents import DocumentStore

#: Bump when the embedding logic changes in a way that should re-embed everything.
CODE_VERSION = "1"
FAILURE_CHECK = "failures_within_threshold"


class EmbeddingConfig(dg.Config):
    """Run config of an embedding asset: per-run overrides of the corpus's settings (unset: the corpus's)."""

    max_failure_ratio: float | None = None
    """Share of documents allowed to fail. Above it the blocking check fails (and so the run), after the
    others were embedded and published; the failed ones are retried by the next run."""
    row_group_size: int | None = None
    """At most this many documents per Parquet row group."""
    memory_budget_mb: int | None = None
    """MiB of vectors held at once while embedding and writing a partition, whatever the documents' sizes
    (see ``embed_partition``); a smaller budget means fewer requests in flight and smaller row groups."""


def build_embedding_asset(spec: CorpusSpec, modality: CorpusModality) -> dg.AssetsDefinition:
    """The embedding asset ``<corpus>/<stem>_embeddings`` of one modality: partitioned by batch, in the corpus's
    pool, with its blocking failure check; its client and store are the corpus's own (no resource keys)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in Dagster 1.13
        return _define_asset(spec, modality)


_DESCRIPTIONS = {
    "text": "Multi-vector embeddings of the text documents (.txt, .md, .jsonl lines) of one batch folder "
            "raw/text/<batch>/, one Parquet row per document at embeddings/text/<batch>.parquet. Unchanged "
            "documents are reused; failed ones are listed in the failures sidecar and metadata.",
    "images": "Multi-vector embeddings of the images and PDF pages of one batch folder raw/images/<batch>/, one "
              "Parquet row per image or page (doc_id <key>#page=<n>, columns page and page_text) at "
              "embeddings/images/<batch>.parquet. Unchanged files are reused (a PDF whole); failed ones are "
              "listed in the failures sidecar and metadata.",
}


def _define_asset(spec: CorpusSpec, modality: CorpusModality) -> dg.AssetsDefinition:
    key = asset_key(modality, "embeddings")
    raw_key = asset_key(modality, "raw")

    @dg.asset(
        key=key,
        deps=[raw_key],
        description=f"Corpus {spec.name!r} ({modality.client.model_name}). {_DESCRIPTIONS[modality.kind]}",
        partitions_def=batch_partitions(modality),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=spec.backfill_partitions_per_run),
        pool=spec.pool,
        code_version=CODE_VERSION,
        group_name=spec.name,
        kinds={"parquet", "python"},
        check_specs=[dg.AssetCheckSpec(FAILURE_CHECK, asset=key, blocking=True,
                                       description="The share of failed documents is within max_failure_ratio.")],
        metadata={"dagster/column_schema": _column_schema(), "modality": modality.kind.value, "corpus": spec.name,
                  "model": modality.client.model_name, "vector_encoding": spec.vector_encoding},
        # A backfill run of a range of batches reports one materialization per batch itself, not one output.
        output_required=False,
    )
    def _asset(context: dg.AssetExecutionContext, config: EmbeddingConfig) -> Iterator[object]:
        allocator.tune_if_enabled(default=True)  # this run process's malloc; $INFINITY_ASSETS_MALLOC_TUNING=off
        settings = _RunSettings(spec, config)
        store = spec.build_store()
        with modality.client.build_client() as client:
            partitions = context.partition_keys
            context.log.info(f"embedding {modality.kind} partition(s) {_describe(partitions)} of corpus "
                             f"{spec.name!r} from {store!r} with {client!r}")
            if context.has_partition_key:  # one batch: the sensor's and the schedule's runs
                report = _embed(context, store, client, modality, context.partition_key, settings)
                yield dg.MaterializeResult(
                    metadata=_metadata(report), data_version=dg.DataVersion(report.data_version),
                    check_results=[_failure_check(key, [report], settings.max_failure_ratio)])
                return
            yield from _embed_range(context, store, client, modality, partitions, settings, raw_key)

    return _asset


class _RunSettings:
    """The corpus's embedding settings with a run's overrides applied."""

    def __init__(self, spec: CorpusSpec, config: EmbeddingConfig) -> None:
        pick = lambda override, default: default if override is None else override  # noqa: E731
        self.max_failure_ratio: float = pick(config.max_failure_ratio, spec.max_failure_ratio)
        self.row_group_size: int = pick(config.row_group_size, spec.row_group_size)
        self.memory_budget: int = pick(config.memory_budget_mb, spec.memory_budget_mb) << 20
        self.vector_encoding = spec.vector_encoding


class BatchesFailedError(Exception):
    """Some batches of a backfill run could not be embedded; the others were embedded and published."""


def _embed(context: dg.AssetExecutionContext, store: DocumentStore, client: InfinityEmbeddings,
           modality: CorpusModality, partition: str, settings: _RunSettings) -> PartitionReport:
    """Embed one batch and log what failed in it."""
    report = embed_partition(store, client, modality.kind, partition, row_group_size=settings.row_group_size,
                             memory_budget=settings.memory_budget, vector_encoding=settings.vector_encoding)
    for doc_id, error in report.failures[:50]:
        context.log.warning(f"document {doc_id!r} of batch {partition!r} failed: {error}")
    if report.retries:
        context.log.warning(f"{report.retries} requests to {client.url} were retried (batch {partition!r})")
    return report


def _embed_range(context: dg.AssetExecutionContext, store: DocumentStore, client: InfinityEmbeddings,
                 modality: CorpusModality, partitions: Sequence[str], settings: _RunSettings,
                 raw_key: dg.AssetKey) -> Iterator[object]:
    """A backfill run: each batch is embedded, published, materialized and checked on its own, so one bad batch
    costs only itself. The run fails at the end, naming the batches that could not be embedded: the backfill
    marks exactly those failed (the others have their materialization)."""
    reports: list[PartitionReport] = []
    errors: dict[str, Exception] = {}
    for index, partition in enumerate(partitions):
        try:
            report = _embed(context, store, client, modality, partition, settings)
        except InfinityError as exc:
            # A document's own error is in the report; what reaches here is about the server or its settings
            # (unreachable, wrong hidden_dim, refused key): every later batch would fail the same way.
            left = partitions[index:]
            context.log.error(f"stopping after {index} of {len(partitions)} batches: {exc}")
            errors.update({p: exc for p in left})
            break
        except Exception as exc:  # this batch's storage or documents: the next batches are unaffected
            context.log.error(f"batch {partition!r} failed: {type(exc).__name__}: {exc}")
            errors[partition] = exc
            continue
        reports.append(report)
        yield dg.AssetMaterialization(
            asset_key=context.asset_key, partition=partition, metadata=_metadata(report),
            tags=materialization_tags(context.instance, raw_key, partition, report.data_version, CODE_VERSION))
        for check, verdict in artifact_verdicts(store, modality.kind, partition, client.hidden_dim,
                                                report.vector_encoding).items():
            result = check_result(verdict, report.artifact_uri)
            context.log_event(dg.AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=check, passed=result.passed, partition=partition,
                metadata=result.metadata, severity=result.severity, description=result.description))
    yield _failure_check(context.asset_key, reports, settings.max_failure_ratio)
    if errors:
        raise BatchesFailedError(
            f"{len(errors)} of {len(partitions)} batches could not be embedded (the other {len(reports)} were "
            "embedded and published; re-run the failed ones): "
            + "; ".join(f"{p}: {type(e).__name__}: {e}" for p, e in list(errors.items())[:10]))


def _describe(partitions: Sequence[str]) -> str:
    return repr(partitions[0]) if len(partitions) == 1 else f"{partitions[0]!r}...{partitions[-1]!r} ({len(partitions)})"


def _failure_check(asset: dg.AssetKey, reports: list[PartitionReport], max_ratio: float) -> dg.AssetCheckResult:
    """The blocking check: every batch's share of failed documents within ``max_ratio`` (one batch, or each of a
    backfill run's batches; those over it are named)."""
    over = [r for r in reports if r.total and r.failed / r.total > max_ratio]
    failed, total = sum(r.failed for r in reports), sum(r.total for r in reports)
    if len(reports) == 1:
        ratio = failed / total if total else 0.0
        description = f"{failed} of {total} documents failed ({ratio:.1%}; allowed {max_ratio:.1%})"
    else:
        description = (f"{failed} of {total} documents of {len(reports)} batches failed; {len(over)} batches over "
                       f"the allowed {max_ratio:.1%}" + (": " + ", ".join(r.partition for r in over[:20]) if over else ""))
    return dg.AssetCheckResult(
        asset_key=asset, check_name=FAILURE_CHECK, passed=not over, severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"failed": failed, "batches_over": len(over),
                  "failures": _failures_table([(f"{r.partition}/{d}" if len(reports) > 1 else d, e)
                                               for r in reports for d, e in r.failures])},
    )


def _metadata(report: PartitionReport) -> dict[str, object]:
    return {
        "documents_total": report.total,
        "documents_embedded": report.embedded,
        "documents_reused": report.reused,
        "documents_failed": report.failed,
        "files_skipped": report.skipped,
        "dagster/row_count": report.total - report.failed,
        "vectors": report.vectors,
        "vector_encoding": report.vector_encoding,
        "artifact_bytes": dg.MetadataValue.int(report.artifact_bytes),
        "artifact_uri": dg.MetadataValue.path(report.artifact_uri),
        "docs_per_second": round(report.docs_per_second, 2),
        "seconds": round(report.seconds, 2),
        "requests": report.requests,
        "retries": report.retries,
        **({"failovers": report.failovers, "requests_by_replica": dg.MetadataValue.json(report.replicas)}
           if report.replicas else {}),
        "preview": dg.MetadataValue.table(
            records=[dg.TableRecord(row) for row in report.preview],
            schema=dg.TableSchema(columns=[dg.TableColumn("doc_id", "string"), dg.TableColumn("n_vectors", "int"),
                                           dg.TableColumn("norm_first", "float"), dg.TableColumn("source_uri", "string")])),
        "failures": _failures_table(report.failures),
        "skipped_files": dg.MetadataValue.json(report.skipped_keys[:100]),
    }


def _failures_table(failures: list[tuple[str, str]]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"document": doc_id, "error": error}) for doc_id, error in failures[:200]],
        schema=dg.TableSchema(columns=[dg.TableColumn("document", "string"), dg.TableColumn("error", "string")]))


def _column_schema() -> dg.TableSchema:
    schema = artifact_schema(128)
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, "list<fixed_size_list<float32 | float16 (vector_encoding), hidden_dim>>"
                       if f.name == "embedding" else str(f.type))
        for f in schema])

