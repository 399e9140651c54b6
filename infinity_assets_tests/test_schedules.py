"""The incremental schedules request exactly the batches whose sources changed since their materialization."""
from __future__ import annotations

import time

import dagster as dg

from infinity_assets import DocumentStoreResource, InfinityResource
from infinity_assets.artifacts import data_version
from infinity_assets.definitions import defs
from infinity_assets.schedules import images_incremental_schedule, text_incremental_schedule


def report_materialization(instance, store, partition: str, model: str) -> None:
    listing = store.list_sources("text", partition)
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "text_embeddings", partition=partition,
        tags={"dagster/data_version": data_version(listing.fingerprints, model, 128)}))


def evaluate(schedule, instance, resources):
    with dg.build_schedule_context(instance=instance, resources=resources,
                                   repository_def=defs.get_repository_def()) as context:
        return schedule.evaluate_tick(context)


def test_schedule_requests_exactly_the_changed_partitions(store_root):
    for batch in ("same", "changed", "deleted-from", "never-run"):
        store_root.put(f"raw/text/{batch}/a.txt", "alpha")
        store_root.put(f"raw/text/{batch}/b.txt", "beta")
    store = store_root.store()
    resources = {"document_store": DocumentStoreResource(
                     root=store_root.url, endpoint_url=store_root.options.get("endpoint_url"),
                     access_key_id=store_root.options.get("key"), secret_access_key=store_root.options.get("secret")),
                 "infinity": InfinityResource(model_name="m", hidden_dim=128)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("text_batches", ["same", "changed", "deleted-from", "never-run"])
        for batch in ("same", "changed", "deleted-from"):
            report_materialization(instance, store, batch, "m")
        assert sorted(r.partition_key for r in evaluate(text_incremental_schedule, instance, resources).run_requests) \
            == ["never-run"]

        time.sleep(1.05)  # a rewrite must change the fingerprint (mtime or ETag)
        store_root.put("raw/text/changed/a.txt", "alpha, edited")
        store_root.delete("raw/text/deleted-from/b.txt")
        requests = evaluate(text_incremental_schedule, instance, resources).run_requests
        assert sorted(r.partition_key for r in requests) == ["changed", "deleted-from", "never-run"]

        for batch in ("changed", "deleted-from", "never-run"):
            report_materialization(instance, store, batch, "m")
        result = evaluate(text_incremental_schedule, instance, resources)
        assert not result.run_requests and "matches" in result.skip_message

        other_model = {**resources, "infinity": InfinityResource(model_name="other", hidden_dim=128)}
        assert len(evaluate(text_incremental_schedule, instance, other_model).run_requests) == 4


def test_images_schedule_skips_without_images(tmp_path):
    resources = {"document_store": DocumentStoreResource(root=str(tmp_path)),
                 "infinity_images": InfinityResource(model_name="m")}
    with dg.instance_for_test() as instance:
        result = evaluate(images_incremental_schedule, instance, resources)
    assert not result.run_requests and result.skip_message
