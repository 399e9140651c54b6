"""The embedding assets: one partition = one batch folder of documents -> one Parquet multi-vector artifact."""

import dagster as dg

from .artifacts import artifact_schema
from .documents import PdfSettings
from .lineage import raw_image_documents, raw_text_documents
from .partitions import image_partitions, text_partitions
from .pipeline import DEFAULT_MEMORY_BUDGET, PartitionReport, embed_partition
from .resources import DocumentStoreResource, InfinityResource

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

    def pdf_settings(self) -> PdfSettings:
        """The PDF rendering settings: this config, then ``INFINITY_PDF_*``, then the defaults."""
        return PdfSettings.from_env(max_side=self.pdf_max_side, dpi=self.pdf_dpi,
                                    max_pages=self.max_pages_per_document,
                                    page_timeout=self.pdf_page_timeout_seconds)


def _build_asset(name: str, modality: str, partitions_def: dg.PartitionsDefinition, infinity_key: str,
                 description: str, raw: dg.AssetSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        deps=[raw],
        description=description,
        partitions_def=partitions_def,
        pool="infinity",
        code_version=CODE_VERSION,
        group_name="embeddings",
        kinds={"parquet", "python"},
        check_specs=[dg.AssetCheckSpec(FAILURE_CHECK, asset=name, blocking=True,
                                       description="The share of failed documents is within max_failure_ratio.")],
        metadata={"dagster/column_schema": _column_schema(), "modality": modality},
        required_resource_keys={infinity_key, "document_store"},
    )
    def _asset(context: dg.AssetExecutionContext, config: EmbeddingConfig) -> dg.MaterializeResult:
        infinity: InfinityResource = getattr(context.resources, infinity_key)
        document_store: DocumentStoreResource = context.resources.document_store
        client = infinity.get_client()
        store = document_store.get_store(pdf=config.pdf_settings())
        context.log.info(f"embedding {modality} partition {context.partition_key!r} from {store!r} with "
                         f"{client!r}")
        report = embed_partition(store, client, modality, context.partition_key,
                                 row_group_size=config.row_group_size,
                                 memory_budget=config.memory_budget_mb << 20)
        for doc_id, error in report.failures[:50]:
            context.log.warning(f"document {doc_id!r} failed: {error}")
        if report.retries:
            context.log.warning(f"{report.retries} requests to {client.url} were retried")
        return dg.MaterializeResult(
            metadata=_metadata(report),
            data_version=dg.DataVersion(report.data_version),
            check_results=[_failure_check(name, report, config.max_failure_ratio)],
        )

    return _asset


def _failure_check(asset: str, report: PartitionReport, max_ratio: float) -> dg.AssetCheckResult:
    ratio = report.failed / report.total if report.total else 0.0
    return dg.AssetCheckResult(
        asset_key=asset, check_name=FAILURE_CHECK, passed=ratio <= max_ratio,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{report.failed} of {report.total} documents failed ({ratio:.1%}; allowed {max_ratio:.1%})",
        metadata={"failed": report.failed, "failures": _failures_table(report)},
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
        "failures": _failures_table(report),
        "skipped_files": dg.MetadataValue.json(report.skipped_keys[:100]),
    }


def _failures_table(report: PartitionReport) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"document": doc_id, "error": error}) for doc_id, error in report.failures[:200]],
        schema=dg.TableSchema(columns=[dg.TableColumn("document", "string"), dg.TableColumn("error", "string")]))


def _column_schema() -> dg.TableSchema:
    schema = artifact_schema(128)
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, "list<fixed_size_list<float32, hidden_dim>>" if f.name == "embedding" else str(f.type))
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
