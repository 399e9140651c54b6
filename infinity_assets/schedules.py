"""Incremental schedules: every hour, re-embed exactly the batches whose sources no longer match their embeddings.

Why a schedule and not a declarative ``AutomationCondition``: the documents live in object storage, outside
Dagster's asset graph, so no condition can see that a file changed. The schedule lists the sources, computes
the data version each batch would get now (fingerprints + model + hidden_dim, exactly what the asset reports),
and compares it with the data version of the batch's last materialization. That also catches what the sensor
cannot: deleted documents and a changed model. Unchanged batches are never requested.
"""
from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from .artifacts import data_version
from .jobs import JOBS_BY_MODALITY
from .partitions import PARTITIONS_BY_MODALITY
from .resources import InfinityResource

ASSET_BY_MODALITY = {"text": "text_embeddings", "images": "image_embeddings"}
INFINITY_KEY_BY_MODALITY = {"text": "infinity", "images": "infinity_images"}


def stale_partitions(context: dg.ScheduleEvaluationContext, modality: str) -> list[tuple[str, str]]:
    """``(partition, current data version)`` of the registered batches whose last materialization differs."""
    store = context.resources.document_store.get_store()
    infinity: InfinityResource = getattr(context.resources, INFINITY_KEY_BY_MODALITY[modality])
    settings = infinity.effective_settings()
    asset_key = dg.AssetKey(ASSET_BY_MODALITY[modality])
    known = set(context.instance.get_dynamic_partitions(PARTITIONS_BY_MODALITY[modality].name))
    stale = []
    for partition, listing in store.scan(modality).items():
        if partition not in known:
            continue  # the sensor adds new batches (a schedule cannot add partitions)
        current = data_version(listing.fingerprints, settings["model_name"], settings["hidden_dim"])
        record = context.instance.get_latest_data_version_record(asset_key, partition_key=partition)
        materialization = record.asset_materialization if record else None
        last = materialization.tags.get("dagster/data_version") if materialization and materialization.tags else None
        if last != current:
            stale.append((partition, current))
    return stale


def build_incremental_schedule(modality: str, cron_schedule: str = "0 * * * *",
                               default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING
                               ) -> dg.ScheduleDefinition:
    """The incremental schedule of one modality ("text" or "images"), hourly by default."""
    job = JOBS_BY_MODALITY[modality]

    @dg.schedule(name=f"{modality}_incremental_schedule", cron_schedule=cron_schedule, job=job,
                 default_status=default_status,
                 required_resource_keys={"document_store", INFINITY_KEY_BY_MODALITY[modality]},
                 description=f"Re-embeds the {modality} batches whose sources changed since their last "
                             "materialization (added, changed or deleted documents, or a new model).")
    def _schedule(context: dg.ScheduleEvaluationContext):
        stale = stale_partitions(context, modality)
        if not stale:
            return dg.SkipReason(f"every {modality} batch matches its last materialization")
        # The tick's minute is in the run key, so a batch whose run failed is requested again next tick.
        minute = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M")
        return [dg.RunRequest(run_key=f"{modality}:{partition}:{version}:{minute}", partition_key=partition,
                              tags={"infinity_assets/expected_data_version": version})
                for partition, version in stale]

    return _schedule


text_incremental_schedule = build_incremental_schedule("text")
images_incremental_schedule = build_incremental_schedule("images")
