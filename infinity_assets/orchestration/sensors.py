"""``new_documents_sensor``: notices new or changed documents, adds their batch partitions and requests runs.

How a tick decides, per modality (``raw/text/``, ``raw/images/``):

* One recursive listing of the modality through the document store (paged ``ListObjectsV2``, no s3fs listing
  cache), grouped by batch folder.
* A batch is *changed* when it has an object whose LastModified is after the cursor's watermark, or an object
  in the lookback window ``[watermark - lookback_seconds, watermark]`` while its fingerprint digest differs
  from the digest recorded when it was last requested. The window catches what a bare watermark misses:
  objects written in the watermark's own second after a tick (S3 LastModified has whole-second resolution),
  and objects written to an already-listed prefix while a long listing was still running (their
  LastModified can be older than an object listed later).
* A changed batch gets a run request with ``run_key = <modality>:<partition>:<digest of its fingerprints>``:
  Dagster never launches the same run key twice, so an unchanged batch is never re-run and a changed one once.
* A burst (more than ``backfill_over`` changed batches of a modality in one tick: a first load, a bulk upload)
  becomes one backfill over up to ``max_backfill_batches`` of them instead of one run each: the backfill
  policy then embeds ~100 batches per run (assets.py), not one Python start-up per batch.
* At most ``max_runs_per_tick`` requests per tick, oldest changes first. The watermark only advances to the
  newest change among the batches requested, so the others are found again by the next ticks (no flood on the
  first tick over an existing bucket, and nothing lost).
* A time budget well under Dagster's 60 s sensor timeout: once half of it is spent, the next modality is left
  for the next tick (the cursor says which modality goes first then).

Deleted documents do not change any LastModified; the incremental schedules (schedules.py) compare every batch's
sources with its last materialization and catch them, and anything a sensor cannot see.

The cursor is small JSON whose size is bounded by the batches changed within the lookback window, never by the
number of objects: ``{"text": {"watermark": 1732435200.0, "requested": {"<partition>": "<digest>"}},
"images": {...}, "next": "images"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset  # RunRequest's backfill form
from dagster._core.definitions.events import AssetKeyPartitionKey

from infinity_assets.artifacts import fingerprint_digest
from infinity_assets.storage.documents import MODALITIES, Listing
from infinity_assets.orchestration.jobs import ASSET_BY_MODALITY
from infinity_assets.orchestration.lineage import observation
from infinity_assets.orchestration.partitions import PARTITIONS_BY_MODALITY
from infinity_assets.orchestration.resources import DocumentStoreResource

#: Tag on each run request: the digest of the batch's source fingerprints the run was requested for.
SOURCE_DIGEST_TAG = "infinity_assets/source_digest"
#: Tag on a backfill the sensor requests for a burst of changed batches: the modality.
BACKFILL_TAG = "infinity_assets/sensor_backfill"


@dataclass
class ModalityCursor:
    """Where scanning one modality stands: the newest LastModified requested, and the fingerprint digests of
    the batches requested whose newest object is still inside the lookback window."""

    watermark: float = 0.0
    requested: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Mapping[str, object] | None) -> ModalityCursor:
        """The cursor stored by :meth:`to_json` (an empty or foreign value starts from scratch)."""
        if not isinstance(value, Mapping):
            return cls()
        requested = value.get("requested")
        return cls(
            float(value.get("watermark", 0.0) or 0.0),  # type: ignore[arg-type]
            dict(requested) if isinstance(requested, Mapping) else {},
        )

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the partitions sorted, so equal cursors serialize equally)."""
        return {"watermark": self.watermark, "requested": dict(sorted(self.requested.items()))}


@dataclass(frozen=True)
class PlannedRun:
    """A batch to run now: its partition key and the digest of its source fingerprints."""

    partition: str
    digest: str


def plan_requests(
    listings: Mapping[str, Listing], cursor: ModalityCursor, max_runs: int, lookback_seconds: float = 0.0
) -> tuple[list[PlannedRun], ModalityCursor]:
    """The batches to run now (oldest change first, at most ``max_runs``) and the cursor after them.

    ``listings`` is ``{partition key: Listing}`` of one modality (``DocumentStore.scan``). A pure function of
    a listing and a cursor, so it is tested without Dagster or a store.
    """
    floor = cursor.watermark - lookback_seconds
    newest: dict[str, float] = {}
    digests: dict[str, str] = {}
    changed: list[str] = []
    for partition, listing in listings.items():
        recent = [s.last_modified for s in listing.sources if s.last_modified >= floor]
        if not recent:
            continue  # every object predates the window: handled by earlier ticks
        newest[partition] = max(recent)
        digests[partition] = fingerprint_digest(listing.fingerprints)
        # An identical rewrite (same ETag) keeps the digest: nothing to embed, so it is not a change.
        if cursor.requested.get(partition) != digests[partition]:
            changed.append(partition)
    chosen = sorted(changed, key=lambda p: (newest[p], p))[: max(0, max_runs)]
    watermark = max([cursor.watermark, *(newest[p] for p in chosen)])
    new_floor = watermark - lookback_seconds
    # Remember the digest of every batch still in the window that is handled: requested now, or unchanged
    # since it was requested. Changed batches left for later ticks stay unrecorded, so they stay changed.
    handled = set(chosen) | {p for p in newest if p not in changed}
    requested = {p: digests[p] for p in sorted(handled) if newest[p] >= new_floor}
    return [PlannedRun(p, digests[p]) for p in chosen], ModalityCursor(watermark, requested)


def build_new_documents_sensor(
    *,
    max_runs_per_tick: int = 25,
    backfill_over: int = 100,
    max_backfill_batches: int = 10_000,
    time_budget_seconds: float = 40.0,
    lookback_seconds: float = 30.0,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """Build ``new_documents_sensor`` with its limits.

    ``max_runs_per_tick`` caps run requests per tick (the first tick over a full bucket spreads its backlog over
    several ticks); ``time_budget_seconds`` bounds a tick's work, well under Dagster's 60 s sensor timeout;
    ``lookback_seconds`` is how far behind the watermark a late-appearing object is still caught;
    ``minimum_interval_seconds`` is the tick interval. More than ``backfill_over`` changed batches of a modality
    in one tick are requested as one backfill of at most ``max_backfill_batches`` batches (the rest next tick).

    The limits are arguments of this factory rather than environment variables or run config: a sensor has no
    run config, and reading the environment at import time would make the code location depend on it
    (``dg check defs`` in CI). A deployment that wants other limits builds its own sensor in its definitions.

    Running by default: the package exists to embed new documents unattended, and a sensor that is off after a
    deploy silently embeds nothing. Stop it in the UI to pause ingestion.
    """
    if max_runs_per_tick < 1 or time_budget_seconds <= 0 or lookback_seconds < 0:
        raise ValueError(
            "build_new_documents_sensor needs max_runs_per_tick >= 1, time_budget_seconds > 0 and "
            f"lookback_seconds >= 0 (got {max_runs_per_tick}, {time_budget_seconds}, {lookback_seconds})"
        )
    if backfill_over < 1 or max_backfill_batches <= backfill_over:
        raise ValueError("build_new_documents_sensor needs backfill_over >= 1 and max_backfill_batches > "
                         f"backfill_over (got {backfill_over}, {max_backfill_batches})")

    @dg.sensor(
        name="new_documents_sensor",
        # An asset selection, not the jobs: Dagster lets only a sensor that targets assets request a backfill.
        # A single run selects its modality's embedding asset (with its checks), as the job would.
        asset_selection=dg.AssetSelection.assets(*ASSET_BY_MODALITY.values()),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Adds a partition per new batch folder under raw/text/ and raw/images/ and requests a run "
        f"for each new or changed batch (at most {max_runs_per_tick} per tick).",
    )
    def new_documents_sensor(
        context: dg.SensorEvaluationContext, document_store: DocumentStoreResource
    ) -> dg.SensorResult:
        started = time.monotonic()
        state = _load_cursor(context.cursor)
        store = document_store.get_store()
        order = list(MODALITIES)
        if state.get("next") in order:  # the modality deferred by the previous tick goes first
            order.remove(state["next"])
            order.insert(0, state["next"])
        state.pop("next", None)
        run_requests: list[dg.RunRequest] = []
        partition_requests: list[dg.AddDynamicPartitionsRequest] = []
        observations: list[dg.AssetObservation] = []  # raw_*_documents: data version of each requested batch
        for position, modality in enumerate(order):
            if position > 0 and time.monotonic() - started > time_budget_seconds / 2:
                state["next"] = modality
                context.log.info(f"half the {time_budget_seconds:.0f} s budget is used; {modality} next tick")
                break
            listings = store.scan(modality)
            partitions_def = PARTITIONS_BY_MODALITY[modality]
            known = set(context.instance.get_dynamic_partitions(partitions_def.name))
            new_partitions = [p for p in listings if p not in known]
            if new_partitions:
                partition_requests.append(partitions_def.build_add_request(new_partitions))
            previous = ModalityCursor.from_json(state.get(modality))
            planned, cursor = plan_requests(listings, previous, max_backfill_batches, lookback_seconds)
            if len(planned) > backfill_over and context.repository_def is not None:
                run_requests.append(backfill_request(context.repository_def, modality, planned))
                context.log.info(f"{len(planned)} changed {modality} batches: one backfill")
            else:
                planned, cursor = plan_requests(listings, previous, max_runs_per_tick - len(run_requests),
                                                lookback_seconds)
                asset_key = dg.AssetKey(ASSET_BY_MODALITY[modality])
                run_requests += [
                    dg.RunRequest(
                        run_key=f"{modality}:{run.partition}:{run.digest}",
                        partition_key=run.partition,
                        asset_selection=[asset_key],
                        tags={SOURCE_DIGEST_TAG: run.digest},
                    )
                    for run in planned
                ]
            state[modality] = cursor.to_json()
            observations += [observation(modality, run.partition, run.digest, len(listings[run.partition].sources))
                             for run in planned]
        added = sum(len(r.partition_keys) for r in partition_requests)
        context.log.info(
            f"{len(run_requests)} run requests, {added} new partitions in {time.monotonic() - started:.1f} s"
        )
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=partition_requests,
            asset_events=observations,
            cursor=json.dumps(state, separators=(",", ":")),
            skip_reason=None if run_requests or partition_requests else "no new or changed documents",
        )

    return new_documents_sensor


def backfill_request(repository: dg.RepositoryDefinition, modality: str, planned: list[PlannedRun]) -> dg.RunRequest:
    """One backfill of the embedding asset over the ``planned`` batches (the sensor daemon launches it as the
    UI's "Materialize selected" would; its runs follow the asset's backfill policy)."""
    key = dg.AssetKey(ASSET_BY_MODALITY[modality])
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, run.partition) for run in planned}, repository.asset_graph)
    return dg.RunRequest.for_asset_graph_subset(subset, tags={BACKFILL_TAG: modality})


def _load_cursor(cursor: str | None) -> dict:
    """The sensor's cursor as a dict; an unreadable cursor (e.g. from an older version) starts from scratch."""
    try:
        state = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


new_documents_sensor = build_new_documents_sensor()
