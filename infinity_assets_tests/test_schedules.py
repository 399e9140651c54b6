"""The incremental schedules request exactly the batches whose sources changed since their materialization."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import dagster as dg
import pytest
from PIL import Image

from infinity_assets import DocumentStoreResource, InfinityResource
from infinity_assets.artifacts import data_version
from infinity_assets.orchestration.assets import image_embeddings, text_embeddings
from infinity_assets.definitions import defs
from infinity_assets.orchestration.schedules import (
    build_incremental_schedule,
    images_incremental_schedule,
    text_incremental_schedule,
)

TICK = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)


def report_materialization(instance, store, partition: str, model: str, hidden_dim: int = 128) -> None:
    """Record a materialization carrying the data version the asset would report for the batch now."""
    listing = store.list_sources("text", partition)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "text_embeddings",
            partition=partition,
            tags={"dagster/data_version": data_version(listing.fingerprints, model, hidden_dim)},
        )
    )


def evaluate(schedule, instance, resources, when: datetime = TICK) -> dg.ScheduleExecutionData:
    with dg.build_schedule_context(
        instance=instance,
        resources=resources,
        scheduled_execution_time=when,
        repository_def=defs.get_repository_def(),
    ) as context:
        return schedule.evaluate_tick(context)


def requested(result: dg.ScheduleExecutionData) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests or [])


@pytest.fixture
def four_batches(store_root):
    """Batches same / changed / deleted-from / never-run, all registered, the first three materialized."""
    for batch in ("same", "changed", "deleted-from", "never-run"):
        store_root.put(f"raw/text/{batch}/a.txt", "alpha")
        store_root.put(f"raw/text/{batch}/b.txt", "beta")
    store_root.put("raw/text/unregistered/a.txt", "the sensor has not added this batch yet")
    resources = {
        "document_store": store_root.resource(),
        "infinity": InfinityResource(model_name="m", hidden_dim=128),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("text_batches", ["same", "changed", "deleted-from", "never-run"])
        for batch in ("same", "changed", "deleted-from"):
            report_materialization(instance, store_root.store(), batch, "m")
        yield store_root, instance, resources


def test_only_never_materialized_batches_are_requested_when_nothing_changed(four_batches):
    _, instance, resources = four_batches
    assert requested(evaluate(text_incremental_schedule, instance, resources)) == ["never-run"]


def test_changed_and_deleted_documents_make_their_batches_stale(four_batches):
    store_root, instance, resources = four_batches
    # No wait for the next second: the new ETag (S3) or size and mtime_ns (local) change the fingerprint.
    store_root.put("raw/text/changed/a.txt", "alpha, edited")
    store_root.delete("raw/text/deleted-from/b.txt")
    result = evaluate(text_incremental_schedule, instance, resources)
    assert requested(result) == ["changed", "deleted-from", "never-run"]
    assert {r.job_name for r in result.run_requests} <= {None, "embed_text_job"}


def test_nothing_is_requested_once_every_batch_matches(four_batches):
    store_root, instance, resources = four_batches
    report_materialization(instance, store_root.store(), "never-run", "m")
    result = evaluate(text_incremental_schedule, instance, resources)
    assert not result.run_requests and "matches its last materialization" in result.skip_message


def test_a_new_model_makes_every_batch_stale(four_batches):
    _, instance, resources = four_batches
    other = {**resources, "infinity": InfinityResource(model_name="other", hidden_dim=128)}
    assert requested(evaluate(text_incremental_schedule, instance, other)) == [
        "changed",
        "deleted-from",
        "never-run",
        "same",
    ]


def test_a_new_hidden_dim_makes_every_batch_stale(four_batches):
    _, instance, resources = four_batches
    wider = {**resources, "infinity": InfinityResource(model_name="m", hidden_dim=384)}
    assert len(requested(evaluate(text_incremental_schedule, instance, wider))) == 4


def test_a_new_vector_encoding_makes_every_batch_stale(four_batches, monkeypatch):
    _, instance, resources = four_batches
    monkeypatch.setenv("INFINITY_ASSETS_VECTOR_ENCODING", "float16")
    assert len(requested(evaluate(text_incremental_schedule, instance, resources))) == 4
    monkeypatch.setenv("INFINITY_ASSETS_VECTOR_ENCODING", "float32")  # the default: back to matching
    assert requested(evaluate(text_incremental_schedule, instance, resources)) == ["never-run"]


def test_a_batch_with_a_run_in_progress_is_not_requested_again(four_batches):
    _, instance, resources = four_batches
    job = defs.resolve_job_def("embed_text_job")
    instance.create_run_for_job(
        job, tags={"dagster/partition": "never-run"}, status=dg.DagsterRunStatus.STARTED
    )
    result = evaluate(text_incremental_schedule, instance, resources)
    assert not result.run_requests and result.skip_message


def test_a_batch_in_a_running_backfill_range_is_not_requested_again(four_batches):
    _, instance, resources = four_batches
    registered = instance.get_dynamic_partitions("text_batches")
    assert registered.index("changed") < registered.index("never-run")
    instance.create_run_for_job(  # a backfill run of the asset job over a range that includes never-run
        defs.resolve_implicit_global_asset_job_def(), asset_selection=frozenset({text_embeddings.key}),
        tags={"dagster/asset_partition_range_start": "changed", "dagster/asset_partition_range_end": "never-run"},
        status=dg.DagsterRunStatus.STARTED)
    result = evaluate(text_incremental_schedule, instance, resources)
    assert not result.run_requests and result.skip_message


def test_a_failed_batch_is_requested_again_on_the_next_tick(four_batches):
    _, instance, resources = four_batches
    first = evaluate(text_incremental_schedule, instance, resources)
    later = evaluate(text_incremental_schedule, instance, resources, when=TICK.replace(hour=10))
    assert requested(first) == requested(later) == ["never-run"]
    assert first.run_requests[0].run_key != later.run_requests[0].run_key  # not deduplicated away


def test_the_cap_bounds_the_runs_of_one_tick(four_batches):
    _, instance, resources = four_batches
    schedule = build_incremental_schedule("text", max_runs_per_tick=2)
    other = {**resources, "infinity": InfinityResource(model_name="other", hidden_dim=128)}
    assert requested(evaluate(schedule, instance, other)) == ["changed", "deleted-from"]


def test_cron_is_configurable():
    assert build_incremental_schedule("images", cron_schedule="*/15 * * * *").cron_schedule == "*/15 * * * *"
    with pytest.raises(ValueError, match="modality"):
        build_incremental_schedule("audio")


def test_images_schedule_skips_without_images(tmp_path):
    resources = {
        "document_store": DocumentStoreResource(root=str(tmp_path)),
        "infinity_images": InfinityResource(model_name="m"),
    }
    with dg.instance_for_test() as instance:
        result = evaluate(images_incremental_schedule, instance, resources)
    assert not result.run_requests and result.skip_message


# --- with the real asset and the real Infinity server: the schedule computes the asset's own data version
@pytest.mark.parametrize(
    ("asset", "schedule", "modality", "model", "resource_key", "data"),
    [
        (
            text_embeddings,
            text_incremental_schedule,
            "text",
            "minilm-colbert-128",
            "infinity",
            b"hello world",
        ),
        (image_embeddings, images_incremental_schedule, "images", "colqwen2-tiny", "infinity_images", None),
    ],
    ids=["text", "images"],
)
def test_a_batch_just_materialized_by_the_asset_is_not_stale(
    infinity_server, store_root, asset, schedule, modality, model, resource_key, data
):
    if data is None:
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), "white").save(buffer, format="PNG")
        data = buffer.getvalue()
    name = "page.png" if modality == "images" else "doc.txt"
    store_root.put(f"raw/{modality}/b/{name}", data)
    store_root.put(f"raw/{modality}/b/notes.csv", "an unsupported file: skipped by both")
    resources = {
        "document_store": store_root.resource(),
        resource_key: InfinityResource(url=infinity_server.url, model_name=model, hidden_dim=128),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(asset.partitions_def.name, ["b"])
        assert requested(evaluate(schedule, instance, resources)) == ["b"]
        dg.materialize([asset], partition_key="b", resources=resources, instance=instance)
        result = evaluate(schedule, instance, resources)
    assert not result.run_requests, "the schedule's data version differs from the one the asset reported"


def test_a_batch_materialized_as_float16_is_not_stale_while_float16_is_configured(
        infinity_server, store_root, monkeypatch):
    """The asset and the schedule read the encoding from the same setting: no re-embedding loop."""
    monkeypatch.setenv("INFINITY_ASSETS_VECTOR_ENCODING", "float16")
    store_root.put("raw/text/b/doc.txt", b"hello world")
    resources = {"document_store": store_root.resource(),
                 "infinity": InfinityResource(url=infinity_server.url, model_name="minilm-colbert-128", hidden_dim=128)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(text_embeddings.partitions_def.name, ["b"])
        result = dg.materialize([text_embeddings], partition_key="b", resources=resources, instance=instance)
        assert result.asset_materializations_for_node("text_embeddings")[0].metadata[
            "vector_encoding"].value == "float16"
        assert not evaluate(text_incremental_schedule, instance, resources).run_requests
        monkeypatch.setenv("INFINITY_ASSETS_VECTOR_ENCODING", "float32")
        assert requested(evaluate(text_incremental_schedule, instance, resources)) == ["b"]
