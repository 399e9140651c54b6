"""A corpus's new-documents sensor: notices new or changed documents, adds their batch partitions, requests runs.

Each corpus has its own (``<corpus>_new_documents_sensor``), which launches only its own assets' runs.
How a tick decides, per modality of the corpus (``raw/text/``, ``raw/images/``):

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

# The one private Dagster import of the package: a sensor can request a backfill (a burst of changed batches
# as one backfill, run by the asset's backfill policy) only through RunRequest.for_asset_graph_subset, whose
# argument has no public constructor in Dagster 1.13 (upstream: dagster-io/dagster#22681 added the request
# and kept AssetGraphSubset private until it has friendlier constructors). Version-guarded here (a Dagster
# that moved it fails to load with this reason, not in a tick) and by test_sensor_backfill_api_exists.
try:
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
except ImportError as exc:  # pragma: no cover - only with a Dagster other than the pinned 1.13
    raise ImportError(f"infinity_assets needs Dagster 1.13 (pyproject pins it); Dagster {dg.__version__} moved "
                      "AssetGraphSubset, which a sensor's backfill request is built from") from exc

from infinity_assets.artifacts import fingerprint_digest
from infinity_assets.corpus import CorpusModality, CorpusSpec
from infinity_assets.orchestration.keys import asset_key, batch_partitions
from infinity_assets.orchestration.lineage import observation
from infinity_assets.storage.documents import Listing

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


def build_new_documents_sensor(spec: CorpusSpec) -> dg.SensorDefinition:
    """The new-documents sensor of a corpus, with its limits (``spec.sensor``).

    ``max_runs_per_tick`` caps run requests per tick (the first tick over a full bucket spreads its backlog over
    several ticks); ``time_budget_seconds`` bounds a tick's work, well under Dagster's 60 s sensor timeout;
    ``lookback_seconds`` is how far behind the watermark a late-appearing object is still caught;
    ``minimum_interval_seconds`` is the tick interval. More than ``backfill_over`` changed batches of a modality
    in one tick are requested as one backfill of at most ``max_backfill_batches`` batches (the rest next tick).

    Running by default (``enabled``): the package exists to embed new documents unattended, and a sensor that
    is off after a deploy silently embeds nothing. Stop it in the UI to pause ingestion.
    """
    limits = spec.sensor
    modalities = {m.kind: m for m in spec.modalities}

    @dg.sensor(
        name=f"{spec.name}_new_documents_sensor",
        # An asset selection, not the jobs: Dagster lets only a sensor that targets assets request a backfill.
        # A single run selects its modality's embedding asset (with its checks), as the job would.
        asset_selection=dg.AssetSelection.assets(*(asset_key(m, "embeddings") for m in spec.modalities)),
        minimum_interval_seconds=limits.minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if limits.enabled else dg.DefaultSensorStatus.STOPPED,
        description=f"Adds a partition per new batch folder of corpus {spec.name!r} under raw/"
        f"{{{','.join(modalities)}}}/ and requests a run for each new or changed batch (at most "
        f"{limits.max_runs_per_tick} per tick).",
    )
    def new_documents_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        started = time.monotonic()
        state = _load_cursor(context.cursor)
        store = spec.build_store()
        order = list(modalities)
        if state.get("next") in order:  # the modality deferred by the previous tick goes first
            order.remove(state["next"])
            order.insert(0, state["next"])
        state.pop("next", None)
        run_requests: list[dg.RunRequest] = []
        partition_requests: list[dg.AddDynamicPartitionsRequest] = []
        observations: list[dg.AssetObservation] = []  # raw documents: data version of each requested batch
        for position, kind in enumerate(order):
            if position > 0 and time.monotonic() - started > limits.time_budget_seconds / 2:
                state["next"] = kind
                context.log.info(f"half the {limits.time_budget_seconds:.0f} s budget is used; {kind} next tick")
                break
            modality = modalities[kind]
            listings = store.scan(kind)
            partitions_def = batch_partitions(modality)
            known = set(context.instance.get_dynamic_partitions(partitions_def.name))
            new_partitions = [p for p in listings if p not in known]
            if new_partitions:
                partition_requests.append(partitions_def.build_add_request(new_partitions))
            previous = ModalityCursor.from_json(state.get(kind))
            planned, cursor = plan_requests(listings, previous, limits.max_backfill_batches, limits.lookback_seconds)
            if len(planned) > limits.backfill_over:
                run_requests.append(backfill_request(modality, planned))
                context.log.info(f"{len(planned)} changed {kind} batches: one backfill")
            else:
                planned, cursor = plan_requests(listings, previous, limits.max_runs_per_tick - len(run_requests),
                                                limits.lookback_seconds)
                run_requests += [
                    dg.RunRequest(
                        run_key=f"{kind}:{run.partition}:{run.digest}",
                        partition_key=run.partition,
                        asset_selection=[asset_key(modality, "embeddings")],
                        tags={SOURCE_DIGEST_TAG: run.digest},
                    )
                    for run in planned
                ]
            state[kind] = cursor.to_json()
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


def backfill_request(modality: CorpusModality, planned: list[PlannedRun]) -> dg.RunRequest:
    """One backfill of the embedding asset over the ``planned`` batches (the sensor daemon launches it as the
    UI's "Materialize selected" would; its runs follow the asset's backfill policy)."""
    key = asset_key(modality, "embeddings")
    partitions = batch_partitions(modality).empty_subset().with_partition_keys(run.partition for run in planned)
    subset = AssetGraphSubset(partitions_subsets_by_asset_key={key: partitions})
    return dg.RunRequest.for_asset_graph_subset(subset, tags={BACKFILL_TAG: f"{modality.corpus}/{modality.kind}"})


def _load_cursor(cursor: str | None) -> dict:
    """The sensor's cursor as a dict; an unreadable cursor (e.g. from an older version) starts from scratch."""
    try:
        state = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}
