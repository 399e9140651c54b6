"""Incremental schedules: every hour, re-embed exactly the batches whose sources no longer match their embeddings.

Why a schedule and not a declarative ``AutomationCondition``: the documents live in object storage, outside
Dagster's asset graph, so no condition can see that a file changed (conditions react to materializations,
code versions and time, not to bytes in a bucket). The schedule lists the sources, computes the data version
each batch would get now (``artifacts.data_version`` of the same ``{key relative to the batch folder:
fingerprint}`` the asset reports, with the model and hidden_dim of the same resource and the vector encoding of
``INFINITY_ASSETS_VECTOR_ENCODING``), and compares it with the data version of the batch's last materialization.
That catches what the sensor cannot: deleted documents, a changed model, hidden_dim or vector encoding, batches
never materialized, and anything a sensor tick missed. Unchanged batches,
and batches with a run already in progress, are never requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import dagster as dg

from infinity_assets.artifacts import data_version, vector_encoding
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.orchestration.jobs import ASSET_BY_MODALITY, JOBS_BY_MODALITY
from infinity_assets.orchestration.partitions import PARTITIONS_BY_MODALITY
from infinity_assets.orchestration.resources import InfinityResource

INFINITY_KEY_BY_MODALITY = {"text": "infinity", "images": "infinity_images"}
#: The tag Dagster stores a materialization's data version under (indexed per partition by the event log).
DATA_VERSION_TAG = "dagster/data_version"
PARTITION_TAG = "dagster/partition"
#: The tags of a backfill run that embeds a range of batches (first and last, in the partitions' order).
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
#: Tag on each requested run: the data version the run is expected to produce.
EXPECTED_DATA_VERSION_TAG = "infinity_assets/expected_data_version"
_ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def current_data_versions(store: DocumentStore, modality: str, infinity: InfinityResource) -> dict[str, str]:
    """``{partition: data version}`` each batch folder of ``modality`` would get if it were embedded now.

    Computed exactly as the asset computes it (``pipeline.embed_partition``): the fingerprints of the batch's
    supported files keyed relative to the batch folder, the resource's effective model and hidden_dim, and the
    vector encoding the schedule's runs use (``$INFINITY_ASSETS_VECTOR_ENCODING``, else float32).
    """
    settings = infinity.effective_settings()
    encoding = vector_encoding()
    return {
        partition: data_version(listing.fingerprints, settings["model_name"], settings["hidden_dim"], encoding)
        for partition, listing in store.scan(modality).items()
    }


def materialized_data_versions(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: Iterable[str]
) -> dict[str, str]:
    """``{partition: data version of its latest materialization}``; partitions never materialized are absent.

    One indexed query for all partitions (``get_latest_tags_by_partition``, what Dagster's own staleness
    logic uses) instead of one query per partition; a partition it does not answer for (e.g. an instance
    whose event-tag index predates the migration) is looked up on its own.
    """
    wanted = list(partitions)
    versions = {
        partition: tags[DATA_VERSION_TAG]
        for partition, tags in instance.event_log_storage.get_latest_tags_by_partition(
            asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG], asset_partitions=wanted
        ).items()
        if DATA_VERSION_TAG in tags
    }
    for partition in wanted:
        if partition in versions:
            continue
        record = instance.get_latest_data_version_record(asset_key, is_source=False, partition_key=partition)
        materialization = record.asset_materialization if record else None
        tag = (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization else None
        if tag is not None:
            versions[partition] = tag
    return versions


def partitions_in_progress(instance: dg.DagsterInstance, job_name: str, asset_key: dg.AssetKey,
                           partitions_name: str) -> set[str]:
    """The batches with a queued or running run of ``job_name`` or of a backfill of ``asset_key`` (one batch,
    or a range of them): requesting them again would double work."""
    busy: set[str] = set()
    ordered: list[str] | None = None
    for record in instance.get_run_records(dg.RunsFilter(statuses=_ACTIVE_RUN_STATUSES)):
        run = record.dagster_run
        if run.job_name != job_name and asset_key not in (run.asset_selection or ()):
            continue
        tags = run.tags
        if PARTITION_TAG in tags:
            busy.add(tags[PARTITION_TAG])
        elif RANGE_START_TAG in tags and RANGE_END_TAG in tags:  # a backfill run's range of batches
            ordered = ordered if ordered is not None else list(instance.get_dynamic_partitions(partitions_name))
            if tags[RANGE_START_TAG] in ordered and tags[RANGE_END_TAG] in ordered:
                busy.update(ordered[ordered.index(tags[RANGE_START_TAG]):ordered.index(tags[RANGE_END_TAG]) + 1])
    return busy


def stale_partitions(context: dg.ScheduleEvaluationContext, modality: str) -> list[tuple[str, str]]:
    """``(partition, current data version)`` of the registered batches whose last materialization differs
    (or which were never materialized), sorted by partition, leaving out those with a run in progress."""
    store = context.resources.document_store.get_store()
    infinity: InfinityResource = getattr(context.resources, INFINITY_KEY_BY_MODALITY[modality])
    # Only registered partitions: a schedule cannot add dynamic partitions; the sensor adds new batches.
    known = set(context.instance.get_dynamic_partitions(PARTITIONS_BY_MODALITY[modality].name))
    current = {p: v for p, v in current_data_versions(store, modality, infinity).items() if p in known}
    materialized = materialized_data_versions(
        context.instance, dg.AssetKey(ASSET_BY_MODALITY[modality]), current
    )
    busy = partitions_in_progress(context.instance, JOBS_BY_MODALITY[modality].name,
                                  dg.AssetKey(ASSET_BY_MODALITY[modality]), PARTITIONS_BY_MODALITY[modality].name)
    return [(p, v) for p, v in sorted(current.items()) if materialized.get(p) != v and p not in busy]


def build_incremental_schedule(
    modality: str,
    *,
    cron_schedule: str = "0 * * * *",
    max_runs_per_tick: int = 500,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.RUNNING,
) -> dg.ScheduleDefinition:
    """The incremental schedule of one modality (``"text"`` or ``"images"``): hourly by default.

    ``max_runs_per_tick`` bounds the runs one tick queues (a model change makes every batch stale); the rest
    are requested by the next ticks. Running by default, like the sensor: it is the safety net that
    re-embeds what the sensor cannot see (deletions, a new model).
    """
    if modality not in JOBS_BY_MODALITY:
        raise ValueError(f"modality must be one of {sorted(JOBS_BY_MODALITY)}, got {modality!r}")
    if max_runs_per_tick < 1:
        raise ValueError(f"max_runs_per_tick must be >= 1, got {max_runs_per_tick}")

    @dg.schedule(
        name=f"{modality}_incremental_schedule",
        cron_schedule=cron_schedule,
        job=JOBS_BY_MODALITY[modality],
        default_status=default_status,
        required_resource_keys={"document_store", INFINITY_KEY_BY_MODALITY[modality]},
        description=f"Re-embeds the {modality} batches whose sources changed since their last "
        "materialization (added, changed or deleted documents, a new model or a new vector encoding).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        stale = stale_partitions(context, modality)
        if not stale:
            return dg.SkipReason(f"every {modality} batch matches its last materialization")
        if len(stale) > max_runs_per_tick:
            context.log.info(
                f"{len(stale) - max_runs_per_tick} stale {modality} batches left for later ticks"
            )
        # The tick's time is in the run key, so a batch whose run failed is requested again next tick.
        tick = _tick_time(context).strftime("%Y%m%dT%H%M")
        return [
            dg.RunRequest(
                run_key=f"{modality}:{partition}:{version}:{tick}",
                partition_key=partition,
                tags={EXPECTED_DATA_VERSION_TAG: version},
            )
            for partition, version in stale[:max_runs_per_tick]
        ]

    return _schedule


def _tick_time(context: dg.ScheduleEvaluationContext) -> datetime:
    """The tick's scheduled time; now when evaluated by hand (a context built without one)."""
    try:
        return context.scheduled_execution_time
    except dg.DagsterInvariantViolationError:
        return datetime.now(timezone.utc)


text_incremental_schedule = build_incremental_schedule("text")
images_incremental_schedule = build_incremental_schedule("images")
