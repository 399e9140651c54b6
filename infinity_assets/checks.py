"""Asset checks that re-read a partition's published artifact: schema, completeness, and vector sanity.

They run after each materialization (the asset jobs include them) and can be run on their own from the UI to
re-verify an artifact in storage.
"""

import warnings

import dagster as dg

from . import artifacts
from .partitions import image_partitions, text_partitions
from .resources import DocumentStoreResource, InfinityResource


def _build_checks(asset: str, modality: str, partitions_def: dg.PartitionsDefinition,
                  infinity_key: str) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=asset, name="artifact_schema", partitions_def=partitions_def, blocking=True,
                    required_resource_keys={infinity_key, "document_store"},
                    description="The artifact is readable Parquet with the expected schema and the configured "
                                "hidden_dim.")
    def artifact_schema(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        infinity: InfinityResource = getattr(context.resources, infinity_key)
        store = context.resources.document_store.get_store()
        path = store.artifact_path(modality, context.partition_key)
        verdict = artifacts.check_schema(store.fs, path, infinity.effective_settings()["hidden_dim"])
        return _result(verdict, store.uri(path))

    @dg.asset_check(asset=asset, name="documents_accounted_for", partitions_def=partitions_def,
                    description="Every listed document is in the artifact or in its failures; no deleted ones.")
    def documents_accounted_for(context: dg.AssetCheckExecutionContext,
                                document_store: DocumentStoreResource) -> dg.AssetCheckResult:
        store = document_store.get_store()
        path = store.artifact_path(modality, context.partition_key)
        listing = store.list_sources(modality, context.partition_key)
        artifact = artifacts.read_artifact(store.fs, path)
        verdict = artifacts.check_completeness(artifact, artifacts.read_failures(store.fs, path),
                                               [s.uri for s in listing.sources])
        return _result(verdict, store.uri(path))

    @dg.asset_check(asset=asset, name="vectors_valid", partitions_def=partitions_def,
                    description="No NaN or infinite values, at least one vector per document, n_vectors consistent.")
    def vectors_valid(context: dg.AssetCheckExecutionContext,
                      document_store: DocumentStoreResource) -> dg.AssetCheckResult:
        store = document_store.get_store()
        path = store.artifact_path(modality, context.partition_key)
        return _result(artifacts.check_vectors(artifacts.read_artifact(store.fs, path)), store.uri(path))

    return [artifact_schema, documents_accounted_for, vectors_valid]


def _result(verdict: artifacts.Verdict, path: str) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {"artifact": dg.MetadataValue.path(path)}
    if verdict.details:
        metadata["details"] = dg.MetadataValue.json(verdict.details)
    return dg.AssetCheckResult(passed=verdict.passed, description=verdict.description, metadata=metadata,
                               severity=dg.AssetCheckSeverity.ERROR)


with warnings.catch_warnings():
    # Partitioned asset checks are a preview feature in Dagster 1.13; they are what makes a check per batch.
    warnings.simplefilter("ignore")
    text_checks = _build_checks("text_embeddings", "text", text_partitions, "infinity")
    image_checks = _build_checks("image_embeddings", "images", image_partitions, "infinity_images")
