"""The embedding assets: one partition = one batch folder of documents -> one Parquet multi-vector artifact."""

import os
import warnings
from collections.abc import Iterator, Sequence

import dagster as dg
from dagster._core.definitions.data_version import (  # the tags Dagster itself writes on a materialization
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    extract_data_version_from_entry,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

from infinity_assets.artifacts import artifact_schema
from infinity_assets.client import allocator
from infinity_assets.orchestration.checks import artifact_verdicts, check_result
from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.storage.documents import DocumentStore, PdfSettings
from infinity_assets.client.errors import InfinityError
from infinity_assets.orchestration.lineage import raw_image_documents, raw_text_documents
from infinity_assets.orchestration.partitions import image_partitions, text_partitions
from infinity_assets.pipeline import DEFAULT_MEMORY_BUDGET, PartitionReport, embed_partition
from infinity_assets.orchestration.resources import DocumentStoreResource, InfinityResource

#: Bump when the embedding logic changes in a way that should re-embed everything.
CODE_VERSION = "1"
FAILURE_CHECK = "failures_within_threshold"


class EmbeddingConfig(dg.Config):
    """Run config of the embedding assets."""

    max_failure_ratio: float = 0.0
    """Share of documents allowed to fail. Above it the blocking check fails (and so the run), after the
    others were embedded and published; the failed ones are retried by the next run."""
    row_group_size: int = 256
    """At most this many documents per Parquet row group."""
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET >> 20
    """MiB of vectors held at once while embedding and writing a partition, whatever the documents' sizes
    (see ``embed_partition``); a smaller budget means fewer requests in flight and smaller row groups."""
    pdf_max_side: int | None = None
    """Longest side of a rendered PDF page, in pixels; default $INFINITY_PDF_MAX_SIDE, else 1024 (README)."""
    pdf_dpi: float | None = None
    """Render resolution of PDF pages below that cap; default $INFINITY_PDF_DPI, else 144."""
    max_pages_per_document: int | None = None
    """A PDF with more pages fails whole (named in the failures); default $INFINITY_PDF_MAX_PAGES, else 2000."""
    pdf_page_timeout_seconds: float | None = None
    """Seconds one page may take to render before its PDF fails; default $INFINITY_PDF_PAGE_TIMEOUT, else 60."""
    vector_encoding: str | None = None
    """How the artifact stores the vectors: "float32" (lossless) or "float16" (half the bytes); default
    $INFINITY_ASSETS_VECTOR_ENCODING, else float32. A batch re-embedded with another encoding is rewritten whole.
    The schedule and the standalone checks use the environment's: set it there to change automation's."""

    def pdf_settings(self) -> PdfSettings:
        """The PDF rendering settings: this config, then ``INFINITY_PDF_*``, then the defaults."""
        return PdfSettings.from_env(max_side=self.pdf_max_side, dpi=self.pdf_dpi,
                                    max_pages=self.max_pages_per_document,
                                    page_timeout=self.pdf_page_timeout_seconds)


def _build_asset(name: str, modality: str, partitions_def: dg.PartitionsDefinition, infinity_key: str,
                 description: str, raw: dg.AssetSpec) -> dg.AssetsDefinition:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy is beta in Dagster 1.13
        return _define_asset(name, modality, partitions_def, infinity_key, description, raw)


def _define_asset(name: str, modality: str, partitions_def: dg.PartitionsDefinition, infinity_key: str,
                  description: str, raw: dg.AssetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        deps=[raw],
        description=description,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=partitions_per_backfill_run()),
        pool="infinity",
        code_version=CODE_VERSION,
        group_name="embeddings",
        kinds={"parquet", "python"},
        check_specs=[dg.AssetCheckSpec(FAILURE_CHECK, asset=name, blocking=True,
                                       description="The share of failed documents is within max_failure_ratio.")],
        metadata={"dagster/column_schema": _column_schema(), "modality": modality},
        required_resource_keys={infinity_key, "document_store"},
        # A backfill run of a range of batches reports one materialization per batch itself, not one output.
        output_required=False,
    )
    def _asset(context: dg.AssetExecutionContext, config: EmbeddingConfig) -> Iterator[object]:
        allocator.tune_if_enabled(default=True)  # this run process's malloc; $INFINITY_ASSETS_MALLOC_TUNING=off
        infinity: InfinityResource = getattr(context.resources, infinity_key)
        document_store: DocumentStoreResource = context.resources.document_store
        client = infinity.get_client()
        store = document_store.get_store(pdf=config.pdf_settings())
        partitions = context.partition_keys
        context.log.info(f"embedding {modality} partition(s) {_describe(partitions)} from {store!r} with {client!r}")
        if context.has_partition_key:  # one batch: the sensor's and the schedule's runs
            report = _embed(context, store, client, modality, context.partition_key, config)
            yield dg.MaterializeResult(metadata=_metadata(report), data_version=dg.DataVersion(report.data_version),
                                       check_results=[_failure_check(name, [report], config.max_failure_ratio)])
            return
        yield from _embed_range(context, store, client, modality, partitions, config, raw.key, name)

    return _asset


def partitions_per_backfill_run() -> int:
    """Batches one backfill run embeds (``$INFINITY_BACKFILL_PARTITIONS_PER_RUN``, default 100): a backfill
    of 5,000 batches is 50 runs, each a Python start-up and one client reused for all its batches."""
    value = os.environ.get("INFINITY_BACKFILL_PARTITIONS_PER_RUN", "100")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"INFINITY_BACKFILL_PARTITIONS_PER_RUN must be a whole number >= 1, got {value!r}")
    return int(value)


class BatchesFailedError(Exception):
    """Some batches of a backfill run could not be embedded; the others were embedded and published."""


def _embed(context: dg.AssetExecutionContext, store: DocumentStore, client: InfinityEmbeddings, modality: str,
           partition: str, config: EmbeddingConfig) -> PartitionReport:
    """Embed one batch and log what failed in it."""
    report = embed_partition(store, client, modality, partition, row_group_size=config.row_group_size,
                             memory_budget=config.memory_budget_mb << 20, vector_encoding=config.vector_encoding)
    for doc_id, error in report.failures[:50]:
        context.log.warning(f"document {doc_id!r} of batch {partition!r} failed: {error}")
    if report.retries:
        context.log.warning(f"{report.retries} requests to {client.url} were retried (batch {partition!r})")
    return report


def _embed_range(context: dg.AssetExecutionContext, store: DocumentStore, client: InfinityEmbeddings,
                 modality: str, partitions: Sequence[str], config: EmbeddingConfig, raw_key: dg.AssetKey,
                 name: str) -> Iterator[object]:
    """A backfill run: each batch is embedded, published, materialized and checked on its own, so one bad batch
    costs only itself. The run fails at the end, naming the batches that could not be embedded: the backfill
    marks exactly those failed (the others have their materialization)."""
    reports: list[PartitionReport] = []
    errors: dict[str, Exception] = {}
    hidden_dim = client.hidden_dim
    for index, partition in enumerate(partitions):
        try:
            report = _embed(context, store, client, modality, partition, config)
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
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=partition, metadata=_metadata(report),
                                      tags=_version_tags(context.instance, raw_key, partition, report.data_version))
        for check, verdict in artifact_verdicts(store, modality, partition, hidden_dim or client.hidden_dim,
                                                report.vector_encoding).items():
            result = check_result(verdict, report.artifact_uri)
            context.log_event(dg.AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=check, passed=result.passed, partition=partition,
                metadata=result.metadata, severity=result.severity, description=result.description))
    yield _failure_check(name, reports, config.max_failure_ratio)
    if errors:
        raise BatchesFailedError(
            f"{len(errors)} of {len(partitions)} batches could not be embedded (the other {len(reports)} were "
            "embedded and published; re-run the failed ones): "
            + "; ".join(f"{p}: {type(e).__name__}: {e}" for p, e in list(errors.items())[:10]))


def _version_tags(instance: dg.DagsterInstance, raw_key: dg.AssetKey, partition: str,
                  data_version: str) -> dict[str, str]:
    """The data-version tags Dagster writes on a materialization it makes from an output (its data version, code
    version, and the raw batch's observed data version it was made from), so that a batch embedded by a
    backfill run has the same staleness and provenance as one embedded by a single-batch run."""
    record = instance.get_latest_data_version_record(raw_key, partition_key=partition)
    observed = (extract_data_version_from_entry(record.event_log_entry) if record else None) or DEFAULT_DATA_VERSION
    return {DATA_VERSION_TAG: data_version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true", CODE_VERSION_TAG: CODE_VERSION,
            get_input_data_version_tag(raw_key): observed.value,
            get_input_event_pointer_tag(raw_key): str(record.storage_id) if record else NULL_EVENT_POINTER}


def _describe(partitions: Sequence[str]) -> str:
    return repr(partitions[0]) if len(partitions) == 1 else f"{partitions[0]!r}...{partitions[-1]!r} ({len(partitions)})"


def _failure_check(asset: str, reports: list[PartitionReport], max_ratio: float) -> dg.AssetCheckResult:
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


text_embeddings = _build_asset(
    "text_embeddings", "text", text_partitions, "infinity",
    "Multi-vector embeddings of the text documents (.txt, .md, .jsonl lines) of one batch folder "
    "raw/text/<batch>/, one Parquet row per document at embeddings/text/<batch>.parquet. Unchanged documents "
    "are reused; failed ones are listed in the failures sidecar and metadata.", raw_text_documents)
image_embeddings = _build_asset(
    "image_embeddings", "images", image_partitions, "infinity_images",
    "Multi-vector embeddings of the images and PDF pages of one batch folder raw/images/<batch>/, one Parquet "
    "row per image or page (doc_id <key>#page=<n>, columns page and page_text) at "
    "embeddings/images/<batch>.parquet. Unchanged files are reused (a PDF whole); failed ones are listed in the "
    "failures sidecar and metadata.", raw_image_documents)
