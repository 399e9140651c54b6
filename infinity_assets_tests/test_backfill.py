"""Backfill runs: one run embeds a range of batches, each materialized, checked and versioned on its own.

Real Infinity server, a real Dagster instance; the run is started with the partition-range tags a backfill's
run gets (the daemon's part is in test_deployment.py).
"""
from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._utils.test.data_versions import get_stale_status_resolver

from infinity_assets import InfinityResource, artifacts
from infinity_assets.orchestration.assets import partitions_per_backfill_run, text_embeddings
from infinity_assets.orchestration.checks import text_checks
from infinity_assets.orchestration.lineage import observation, raw_text_documents
from infinity_assets.orchestration.resources import DocumentStoreResource
from infinity_assets.orchestration.schedules import current_data_versions, materialized_data_versions

MODEL = "minilm-colbert-128"
BATCHES = [f"batch-{i}" for i in range(6)]
BROKEN = "batch-3"
ASSETS = [raw_text_documents, text_embeddings]


@pytest.fixture
def setup(tmp_path, infinity_server):
    root = tmp_path / "store"
    for batch in BATCHES:
        folder = root / "raw" / "text" / batch
        folder.mkdir(parents=True)
        for name in ("one", "two"):
            (folder / f"{name}.txt").write_text(f"{name} document of {batch}")
    # A real fault for one batch only: its artifact cannot be published (a folder holds its place).
    (root / "embeddings" / "text" / f"{BROKEN}.parquet").mkdir(parents=True)
    (root / "embeddings" / "text" / f"{BROKEN}.parquet" / "keep").write_text("")
    resources = {"infinity": InfinityResource(url=infinity_server.url, model_name=MODEL, hidden_dim=128),
                 "infinity_images": InfinityResource(url=infinity_server.url, model_name=MODEL, hidden_dim=128),
                 "document_store": DocumentStoreResource(root=str(root))}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("text_batches", BATCHES)
    store = resources["document_store"].get_store()
    for batch, version in current_data_versions(store, "text", resources["infinity"]).items():
        instance.report_runless_asset_event(observation("text", batch, version, 2))  # what the sensor reports
    yield instance, resources, store, root
    instance.dispose()


def backfill_run(instance, resources, first: str, last: str) -> dg.ExecuteInProcessResult:
    return dg.materialize([*ASSETS, *text_checks], instance=instance, resources=resources, raise_on_error=False,
                          selection=dg.AssetSelection.assets(text_embeddings),
                          tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last})


def test_a_range_run_materializes_each_batch_once_and_fails_only_the_broken_one(setup):
    instance, resources, store, _ = setup
    result = backfill_run(instance, resources, BATCHES[0], BATCHES[-1])

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.cause.message  # the asset's own error, under Dagster's wrapper
    assert "1 of 6 batches could not be embedded" in message and BROKEN in message
    materialized = {m.partition: m for m in result.asset_materializations_for_node("text_embeddings")}
    good = [b for b in BATCHES if b != BROKEN]
    assert sorted(materialized) == good  # one event per batch, none for the broken one
    for batch in good:
        metadata = materialized[batch].metadata
        assert metadata["documents_embedded"].value == 2 and metadata["documents_failed"].value == 0
        assert metadata["artifact_uri"].value.endswith(f"embeddings/text/{batch}.parquet")
        assert sorted(artifacts.read_artifact(store.fs, store.artifact_path("text", batch)).doc_ids) == [
            "one.txt", "two.txt"]
    assert not store.fs.exists(store.artifact_path("text", BROKEN) + "/one.txt")

    # Each batch's own data version: the incremental schedule sees the five as done and only the broken one stale.
    current = current_data_versions(store, "text", resources["infinity"])
    recorded = materialized_data_versions(instance, text_embeddings.key, BATCHES)
    assert {b for b in BATCHES if recorded.get(b) != current[b]} == {BROKEN}

    # The artifact checks were evaluated per batch by the run (their own steps have no single partition).
    evaluations = [e for e in result.get_asset_check_evaluations() if e.partition is not None]
    assert {(e.check_name, e.partition) for e in evaluations} == {
        (c, b) for c in ("artifact_schema", "documents_accounted_for", "vectors_valid") for b in good}
    assert all(e.passed for e in evaluations)
    [blocking] = [e for e in result.get_asset_check_evaluations() if e.check_name == "failures_within_threshold"]
    assert blocking.passed and "0 of 10 documents of 5 batches failed" in blocking.description


def test_a_batch_embedded_by_a_range_run_goes_stale_like_one_embedded_alone(setup):
    instance, resources, store, root = setup
    (root / "embeddings" / "text" / f"{BROKEN}.parquet" / "keep").unlink()
    (root / "embeddings" / "text" / f"{BROKEN}.parquet").rmdir()
    assert backfill_run(instance, resources, BATCHES[0], BATCHES[2]).success
    assert dg.materialize([*ASSETS, *text_checks], instance=instance, resources=resources, partition_key=BATCHES[3],
                          selection=dg.AssetSelection.assets(text_embeddings)).success
    graph = [dg.AssetsDefinition(specs=[raw_text_documents]), text_embeddings]

    def status(batch: str) -> StaleStatus:  # what the UI shows
        return get_stale_status_resolver(instance, graph).get_status(text_embeddings.key, batch)

    assert [status(b) for b in BATCHES[:4]] == [StaleStatus.FRESH] * 4
    (root / "raw" / "text" / BATCHES[1] / "one.txt").write_text("changed")
    (root / "raw" / "text" / BATCHES[3] / "one.txt").write_text("changed")
    for batch, version in current_data_versions(store, "text", resources["infinity"]).items():
        if batch in (BATCHES[1], BATCHES[3]):
            instance.report_runless_asset_event(observation("text", batch, version, 2))
    assert [status(b) for b in BATCHES[:4]] == [StaleStatus.FRESH, StaleStatus.STALE, StaleStatus.FRESH,
                                                StaleStatus.STALE]


def test_partitions_per_backfill_run_comes_from_the_environment(monkeypatch):
    assert text_embeddings.backfill_policy == dg.BackfillPolicy.multi_run(partitions_per_backfill_run())
    monkeypatch.setenv("INFINITY_BACKFILL_PARTITIONS_PER_RUN", "25")
    assert partitions_per_backfill_run() == 25
    monkeypatch.setenv("INFINITY_BACKFILL_PARTITIONS_PER_RUN", "0")
    with pytest.raises(ValueError, match="INFINITY_BACKFILL_PARTITIONS_PER_RUN must be a whole number >= 1"):
        partitions_per_backfill_run()
