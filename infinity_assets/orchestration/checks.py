"""Asset checks that re-read a partition's published artifact: schema, completeness, and vector sanity.

They run after each materialization (the asset jobs include them) and can be run on their own from the UI to
re-verify an artifact in storage. A backfill run that embeds a range of batches evaluates the same three per
batch itself (:func:`artifact_verdicts`), since a check step of a range has no single partition to check.

The schema check knows the vector encoding: the artifact must store what it records (float32 or float16), and
what the corpus asks for (``vector_encoding``, the one setting the asset, the schedule and these checks share);
the vector check scans the stored floats.
"""
import warnings

import dagster as dg

from infinity_assets import artifacts
from infinity_assets.corpus import CorpusModality, CorpusSpec
from infinity_assets.orchestration.keys import asset_key, batch_partitions
from infinity_assets.storage.documents import DocumentStore

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


def check_result(verdict: artifacts.Verdict, artifact_uri: str) -> dg.AssetCheckResult:
    """A check result (severity ERROR) from a verdict, with the artifact's URI and the verdict's details."""
    metadata: dict[str, object] = {"artifact": dg.MetadataValue.path(artifact_uri)}
    if verdict.details:
        metadata["details"] = dg.MetadataValue.json(verdict.details)
    return dg.AssetCheckResult(passed=verdict.passed, description=verdict.description, metadata=metadata,
                               severity=dg.AssetCheckSeverity.ERROR)


def build_artifact_checks(spec: CorpusSpec, modality: CorpusModality) -> list[dg.AssetChecksDefinition]:
    """The three per-batch checks of ``<corpus>/<stem>_embeddings`` (schema blocking), on the corpus's store."""
    with warnings.catch_warnings():
        # Partitioned asset checks are a preview feature in Dagster 1.13; they are what makes a check per batch.
        warnings.simplefilter("ignore")
        return _build_checks(spec, modality)


def _build_checks(spec: CorpusSpec, modality: CorpusModality) -> list[dg.AssetChecksDefinition]:
    asset = asset_key(modality, "embeddings")
    partitions_def = batch_partitions(modality)
    kind = modality.kind

    def verdict_result(partition: str, judge) -> dg.AssetCheckResult:
        store = spec.build_store()
        return check_result(judge(store, partition), store.uri(store.artifact_path(kind, partition)))

    @dg.asset_check(asset=asset, name=SCHEMA_CHECK, partitions_def=partitions_def, blocking=True,
                    description="The artifact is readable Parquet with the expected schema and the corpus's "
                                "hidden_dim and vector_encoding.")
    def artifact_schema(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return verdict_result(context.partition_key, lambda store, partition: schema_verdict(
            store, kind, partition, modality.client.hidden_dim, spec.vector_encoding))

    @dg.asset_check(asset=asset, name=COMPLETENESS_CHECK, partitions_def=partitions_def,
                    description="Every listed document is in the artifact or in its failures; no deleted ones.")
    def documents_accounted_for(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return verdict_result(context.partition_key, lambda store, partition: completeness_verdict(
            store, kind, partition))

    @dg.asset_check(asset=asset, name=VECTORS_CHECK, partitions_def=partitions_def,
                    description="No NaN or infinite values, at least one vector per document, n_vectors consistent.")
    def vectors_valid(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return verdict_result(context.partition_key, lambda store, partition: vectors_verdict(store, kind, partition))

    return [artifact_schema, documents_accounted_for, vectors_valid]
