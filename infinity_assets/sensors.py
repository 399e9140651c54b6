"""``new_documents_sensor``: notices new or changed documents, adds their batch partitions and requests runs.

How a tick decides, per modality (``raw/text/``, ``raw/images/``):

* One recursive listing of the modality (no listing cache), grouped by batch folder.
* An object is *new* when its LastModified is after the cursor's watermark, or equal to it and its key is
  not among the keys already seen at that second (S3 LastModified has whole-second resolution, so objects
  written in the watermark's second after the last tick are still caught).
* A changed batch gets a run request with ``run_key = <modality>:<partition>:<digest of all its fingerprints>``:
  Dagster never launches the same run key twice, so an unchanged batch is never re-run and a changed one once.
* At most ``max_runs_per_tick`` requests per tick, oldest changes first; the watermark only advances past the
  batches actually requested, so the rest are found again on the next ticks (no flood on the first tick over
  an existing bucket, and nothing lost).
* A time budget well under Dagster's 60 s sensor timeout: when it runs out after one modality, the other is
  left for the next tick (the cursor says which goes first).

The cursor is small JSON: ``{"text": {"watermark": 1732435200.0, "seen": [...]}, "images": {...}, "next": "images"}``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import dagster as dg

from .artifacts import fingerprint_digest
from .documents import MODALITIES, Listing
from .jobs import JOBS_BY_MODALITY
from .partitions import PARTITIONS_BY_MODALITY
from .resources import DocumentStoreResource


@dataclass
class ModalityCursor:
    """Where a modality's scanning stands: the newest LastModified handled and the keys seen at that second."""

    watermark: float = 0.0
    seen: tuple[str, ...] = ()


def plan_requests(listings: dict[str, Listing], cursor: ModalityCursor, max_runs: int
                  ) -> tuple[list[tuple[str, str]], ModalityCursor]:
    """The batches to run now, as ``(partition key, fingerprint digest)``, and the cursor after them.

    Pure function of a listing and a cursor, so it is tested without Dagster.
    """
    seen = set(cursor.seen)
    newest_change: dict[str, float] = {}
    for partition, listing in listings.items():
        changed = [s.last_modified for s in listing.sources
                   if s.last_modified > cursor.watermark
                   or (s.last_modified == cursor.watermark and s.path not in seen)]
        if changed:
            newest_change[partition] = max(changed)
    chosen = sorted(newest_change, key=lambda p: (newest_change[p], p))[:max_runs]
    if not chosen:
        return [], cursor
    watermark = max(newest_change[p] for p in chosen)
    at_watermark = {s.path for p in chosen for s in listings[p].sources if s.last_modified == watermark}
    if watermark == cursor.watermark:
        at_watermark |= seen
    requests = [(p, fingerprint_digest(listings[p].fingerprints)) for p in chosen]
    return requests, ModalityCursor(watermark, tuple(sorted(at_watermark)))


def build_new_documents_sensor(*, max_runs_per_tick: int = 25, time_budget_seconds: float = 40.0,
                               minimum_interval_seconds: int = 60,
                               default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING
                               ) -> dg.SensorDefinition:
    """Build the sensor with its limits: run requests per tick, seconds of work per tick, tick interval.

    Running by default: the package exists to embed new documents unattended, and a sensor that is off after
    a deploy silently embeds nothing. Stop it in the UI to pause ingestion.
    """

    @dg.sensor(
        name="new_documents_sensor",
        jobs=list(JOBS_BY_MODALITY.values()),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Adds a partition per new batch folder under raw/text/ and raw/images/ and requests a run "
                    f"for each new or changed batch (at most {max_runs_per_tick} per tick).",
    )
    def new_documents_sensor(context: dg.SensorEvaluationContext,
                             document_store: DocumentStoreResource) -> dg.SensorResult:
        started = time.monotonic()
        state = json.loads(context.cursor) if context.cursor else {}
        store = document_store.get_store()
        order = list(MODALITIES)
        if state.get("next") in order:
            order.remove(state["next"])
            order.insert(0, state["next"])
        run_requests: list[dg.RunRequest] = []
        partition_requests: list[dg.AddDynamicPartitionsRequest] = []
        for position, modality in enumerate(order):
            if time.monotonic() - started > time_budget_seconds / 2 and position > 0:
                state["next"] = modality  # out of budget: this modality goes first next tick
                context.log.info(f"time budget used; {modality} is scanned first on the next tick")
                break
            listings = store.scan(modality)
            partitions_def = PARTITIONS_BY_MODALITY[modality]
            known = set(context.instance.get_dynamic_partitions(partitions_def.name))
            new_partitions = sorted(set(listings) - known)
            if new_partitions:
                partition_requests.append(partitions_def.build_add_request(new_partitions))
            cursor = ModalityCursor(**state.get(modality, {}))
            budget = max_runs_per_tick - len(run_requests)
            chosen, cursor = plan_requests(listings, cursor, budget)
            state[modality] = {"watermark": cursor.watermark, "seen": list(cursor.seen)}
            job = JOBS_BY_MODALITY[modality]
            run_requests += [dg.RunRequest(run_key=f"{modality}:{partition}:{digest}", partition_key=partition,
                                           job_name=job.name, tags={"infinity_assets/source_digest": digest})
                             for partition, digest in chosen]
        else:
            state.pop("next", None)
        context.log.info(f"{len(run_requests)} run requests, {sum(len(r.partition_keys) for r in partition_requests)}"
                         f" new partitions in {time.monotonic() - started:.1f}s")
        return dg.SensorResult(
            run_requests=run_requests, dynamic_partitions_requests=partition_requests,
            cursor=json.dumps(state, separators=(",", ":")),
            skip_reason=None if run_requests or partition_requests else "no new or changed documents",
        )

    return new_documents_sensor


new_documents_sensor = build_new_documents_sensor()
