"""Incremental schedules: every hour, re-embed exactly the batches whose sources no longer match their embeddings.

Why a schedule and not a declarative ``AutomationCondition``: the documents live in object storage, outside
Dagster's asset graph, so no condition can see that a file changed (conditions react to materializations,
code versions and time, not to bytes in a bucket). The schedule lists the sources, computes the data version
each batch would get now (``artifacts.data_version`` of the same ``{key relative to the batch folder:
fingerprint}`` the asset reports, with the corpus's model, hidden_dim and vector encoding), and compares it with the data version of the batch's last materialization.
That catches what the sensor cannot: deleted documents, a changed model, hidden_dim or vector encoding, batches
never materialized, and anything a sensor tick missed. Unchanged batches,
and batches with a run already in progress, are never requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import dagster as dg

from infinity_assets.artifacts import data_version
from infinity_assets.corpus import ClientSettings, CorpusModality, CorpusSpec
from infinity_assets.orchestration.keys import asset_key, embed_job
from infinity_assets.storage.documents import DocumentStore

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


def current_data_versions(store: DocumentStore, kind: str, client: ClientSettings,
                          vector_encoding: str) -> dict[str, str]:
    """``{partition: data version}`` each batch folder of ``kind`` would get if it were embedded now.

    Computed exactly as the asset computes it (``pipeline.embed_partition``): the fingerprints of the batch's
    supported files keyed relative to the batch folder, the model and hidden_dim of ``client`` and the
    corpus's ``vector_encoding``.
    """
    return {
        partition: data_version(listing.fingerprints, client.model_name, client.hidden_dim, vector_encoding)
        for partition, listing in store.scan(kind).items()
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


def stale_partitions(context: dg.ScheduleEvaluationContext, spec: CorpusSpec,
                     modality: CorpusModality) -> list[tuple[str, str]]:
    """``(partition, current data version)`` of the registered batches whose last materialization differs
    (or which were never materialized), sorted by partition, leaving out those with a run in progress."""
    store = spec.build_store()
    key = asset_key(modality, "embeddings")
    # Only registered partitions: a schedule cannot add dynamic partitions; the sensor adds new batches.
    known = set(context.instance.get_dynamic_partitions(modality.partitions_name))
    current = {p: v for p, v in current_data_versions(store, modality.kind, modality.client,
                                                      spec.vector_encoding).items() if p in known}
    materialized = materialized_data_versions(context.instance, key, current)
    busy = partitions_in_progress(context.instance, modality.job_name, key, modality.partitions_name)
    return [(p, v) for p, v in sorted(current.items()) if materialized.get(p) != v and p not in busy]


def build_incremental_schedule(spec: CorpusSpec, modality: CorpusModality) -> dg.ScheduleDefinition:
    """The incremental schedule of one corpus modality (``<corpus>_text_incremental_schedule``).

    ``spec.schedule.max_runs_per_tick`` bounds the runs one tick queues (a model change makes every batch
    stale); the rest are requested by the next ticks. Running by default (``spec.schedule.enabled``), like the
    sensor: it is the safety net that re-embeds what the sensor cannot see (deletions, a new model).
    """
    settings = spec.schedule

    @dg.schedule(
        name=modality.schedule_name,
        cron_schedule=settings.cron,
        job=embed_job(modality),
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.enabled else dg.DefaultScheduleStatus.STOPPED,
        description=f"Re-embeds the {modality.kind} batches of corpus {spec.name!r} whose sources changed since "
        "their last materialization (added, changed or deleted documents, a new model or vector encoding).",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        stale = stale_partitions(context, spec, modality)
        if not stale:
            return dg.SkipReason(f"every {modality.kind} batch of {spec.name!r} matches its last materialization")
        if len(stale) > settings.max_runs_per_tick:
            context.log.info(
                f"{len(stale) - settings.max_runs_per_tick} stale {modality.kind} batches left for later ticks"
            )
        # The tick's time is in the run key, so a batch whose run failed is requested again next tick.
        tick = _tick_time(context).strftime("%Y%m%dT%H%M")
        return [
            dg.RunRequest(
                run_key=f"{modality.kind}:{partition}:{version}:{tick}",
                partition_key=partition,
                tags={EXPECTED_DATA_VERSION_TAG: version},
            )
            for partition, version in stale[: settings.max_runs_per_tick]
        ]

    return _schedule


def _tick_time(context: dg.ScheduleEvaluationContext) -> datetime:
    """The tick's scheduled time; now when evaluated by hand (a context built without one)."""
    try:
        return context.scheduled_execution_time
    except dg.DagsterInvariantViolationError:
        return datetime.now(timezone.utc)

