"""Asset checks that re-read a partition's published artifact: schema, completeness, and vector sanity.

They run after each materialization (the asset jobs include them) and can be run on their own from the UI to
re-verify an artifact in storage. A backfill run that embeds a range of batches evaluates the same three per
batch itself (:func:`artifact_verdicts`), since a check step of a range has no single partition to check.

The schema check knows the vector encoding: the artifact must store what it records (float32 or float16), and
what the run's config of the asset asks for (``vector_encoding``), else the environment's
(``INFINITY_ASSETS_VECTOR_ENCODING``, what the schedule's runs use); the vector check scans the stored floats.
"""
import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from infinity_assets import artifacts
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.orchestration.partitions import image_partitions, text_partitions
from infinity_assets.orchestration.resources import DocumentStoreResource, InfinityResource

SCHEMA_CHECK, COMPLETENESS_CHECK, VECTORS_CHECK = "artifact_schema", "documents_accounted_for", "vectors_valid"


def schema_verdict(store: DocumentStore, modality: str, partition: str, hidden_dim: int | None,
                   vector_encoding: str | None = None) -> artifacts.Verdict:
    """The artifact is readable Parquet with the expected schema, ``hidden_dim`` and ``vector_encoding``."""
    return artifacts.check_schema(store.fs, store.artifact_path(modality, partition), hidden_dim, vector_encoding)


def completeness_verdict(store: DocumentStore, modality: str, partition: str) -> artifacts.Verdict:
    """Every listed document is in the artifact or in its failures; no row of a deleted one."""
    path = store.artifact_path(modality, partition)
    listing = store.list_sources(modality, partition)
    return artifacts.check_completeness(artifacts.read_artifact(store.fs, path, stored_dtype=True),
                                        artifacts.read_failures(store.fs, path), [s.uri for s in listing.sources])


def vectors_verdict(store: DocumentStore, modality: str, partition: str) -> artifacts.Verdict:
    """No NaN or infinite values, at least one vector per document, n_vectors consistent."""
    return artifacts.check_vectors(
        artifacts.read_artifact(store.fs, store.artifact_path(modality, partition), stored_dtype=True))


def artifact_verdicts(store: DocumentStore, modality: str, partition: str, hidden_dim: int | None,
                      vector_encoding: str | None = None) -> dict[str, artifacts.Verdict]:
    """The three checks' verdicts on one partition's artifact, by check name."""
    return {SCHEMA_CHECK: schema_verdict(store, modality, partition, hidden_dim, vector_encoding),
            COMPLETENESS_CHECK: completeness_verdict(store, modality, partition),
            VECTORS_CHECK: vectors_verdict(store, modality, partition)}


def configured_vector_encoding(run_config: Mapping[str, Any], asset: str) -> str:
    """The vector encoding a run's config gives ``asset``, else ``$INFINITY_ASSETS_VECTOR_ENCODING``, else
    float32 (raises ``ValueError`` naming the setting if it is not an encoding)."""
    config = ((run_config.get("ops") or {}).get(asset) or {}).get("config") or {}
    return artifacts.vector_encoding(config.get("vector_encoding"))


def check_result(verdict: artifacts.Verdict, artifact_uri: str) -> dg.AssetCheckResult:
    """A check result (severity ERROR) from a verdict, with the artifact's URI and the verdict's details."""
    metadata: dict[str, object] = {"artifact": dg.MetadataValue.path(artifact_uri)}
    if verdict.details:
        metadata["details"] = dg.MetadataValue.json(verdict.details)
    return dg.AssetCheckResult(passed=verdict.passed, description=verdict.description, metadata=metadata,
                               severity=dg.AssetCheckSeverity.ERROR)


def _build_checks(asset: str, modality: str, partitions_def: dg.PartitionsDefinition,
                  infinity_key: str) -> list[dg.AssetChecksDefinition]:
    def uri(store: DocumentStore, partition: str) -> str:
        return store.uri(store.artifact_path(modality, partition))

    @dg.asset_check(asset=asset, name=SCHEMA_CHECK, partitions_def=partitions_def, blocking=True,
                    required_resource_keys={infinity_key, "document_store"},
                    description="The artifact is readable Parquet with the expected schema and the configured "
                                "hidden_dim and vector_encoding.")
    def artifact_schema(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        infinity: InfinityResource = getattr(context.resources, infinity_key)
        store = context.resources.document_store.get_store()
        verdict = schema_verdict(store, modality, context.partition_key, infinity.effective_settings()["hidden_dim"],
                                 configured_vector_encoding(context.run.run_config, asset))
        return check_result(verdict, uri(store, context.partition_key))

    @dg.asset_check(asset=asset, name=COMPLETENESS_CHECK, partitions_def=partitions_def,
                    description="Every listed document is in the artifact or in its failures; no deleted ones.")
    def documents_accounted_for(context: dg.AssetCheckExecutionContext,
                                document_store: DocumentStoreResource) -> dg.AssetCheckResult:
        store = document_store.get_store()
        return check_result(completeness_verdict(store, modality, context.partition_key),
                            uri(store, context.partition_key))

    @dg.asset_check(asset=asset, name=VECTORS_CHECK, partitions_def=partitions_def,
                    description="No NaN or infinite values, at least one vector per document, n_vectors consistent.")
    def vectors_valid(context: dg.AssetCheckExecutionContext,
                      document_store: DocumentStoreResource) -> dg.AssetCheckResult:
        store = document_store.get_store()
        return check_result(vectors_verdict(store, modality, context.partition_key), uri(store, context.partition_key))

    return [artifact_schema, documents_accounted_for, vectors_valid]


with warnings.catch_warnings():
    # Partitioned asset checks are a preview feature in Dagster 1.13; they are what makes a check per batch.
    warnings.simplefilter("ignore")
    text_checks = _build_checks("text_embeddings", "text", text_partitions, "infinity")
    image_checks = _build_checks("image_embeddings", "images", image_partitions, "infinity_images")
