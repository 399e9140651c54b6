"""new_documents_sensor evaluated with build_sensor_context against SeaweedFS and the local filesystem,
and its pure planning logic."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from infinity_assets import DocumentStoreResource
from infinity_assets.artifacts import fingerprint_digest
from infinity_assets.definitions import defs
from infinity_assets.storage.documents import Listing, SourceObject
from infinity_assets.orchestration.sensors import (
    ModalityCursor,
    PlannedRun,
    build_new_documents_sensor,
    new_documents_sensor,
    plan_requests,
)


def tick(sensor, instance, resource, cursor=None, repository=None) -> dg.SensorResult:
    """Evaluate one tick and apply its partition requests, as the sensor daemon does."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"document_store": resource}, repository_def=repository
    )
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def run_keys(result: dg.SensorResult) -> list[str]:
    return [r.run_key for r in result.run_requests or []]


def test_new_batches_become_partitions_and_runs_then_a_quiet_tick_skips(store_root):
    store_root.put("raw/text/2026-11-24/a.txt", "alpha")
    store_root.put("raw/text/2026-11-24/nested/b.md", "beta")
    store_root.put("raw/images/scans, part 1/p.png", b"png")
    store_root.put("raw/text/loose.txt", "in no batch folder")
    resource = store_root.resource()
    with dg.instance_for_test() as instance:
        first = tick(new_documents_sensor, instance, resource)
        requests = {r.partition_key: r for r in first.run_requests}
        assert sorted(requests) == ["2026-11-24", "scans%2C%20part%201"]
        assert requests["2026-11-24"].asset_selection == [dg.AssetKey("text_embeddings")]
        assert requests["scans%2C%20part%201"].asset_selection == [dg.AssetKey("image_embeddings")]
        assert instance.get_dynamic_partitions("text_batches") == ["2026-11-24"]
        assert instance.get_dynamic_partitions("image_batches") == ["scans%2C%20part%201"]
        assert len(first.cursor) < 500
        second = tick(new_documents_sensor, instance, resource, first.cursor)
    assert second.run_requests == [] and second.dynamic_partitions_requests == []
    assert second.skip_reason.skip_message == "no new or changed documents"


def test_run_key_is_the_digest_of_the_batch_fingerprints(store_root):
    store_root.put("raw/text/b/a.txt", "alpha")
    store_root.put("raw/text/b/skipped.csv", "not a document")
    listing = store_root.store().list_sources("text", "b")
    with dg.instance_for_test() as instance:
        result = tick(new_documents_sensor, instance, store_root.resource())
    assert run_keys(result) == [f"text:b:{fingerprint_digest(listing.fingerprints)}"]


def test_changed_document_yields_a_new_run_key_once(store_root):
    store_root.put("raw/text/b/a.txt", "v1")
    resource = store_root.resource()
    with dg.instance_for_test() as instance:
        first = tick(new_documents_sensor, instance, resource)
        # No wait for the next second: the new ETag / mtime changes the digest even within the same second.
        store_root.put("raw/text/b/a.txt", "version two")
        second = tick(new_documents_sensor, instance, resource, first.cursor)
        third = tick(new_documents_sensor, instance, resource, second.cursor)
    assert len(run_keys(first)) == len(run_keys(second)) == 1 and run_keys(first) != run_keys(second)
    assert run_keys(third) == []


@pytest.mark.parametrize("lookback", [0.0, 30.0])
def test_object_written_in_the_same_second_is_not_missed(seaweedfs, s3_bucket, lookback):
    resource = DocumentStoreResource(
        root=f"s3://{s3_bucket}",
        endpoint_url=seaweedfs.endpoint_url,
        access_key_id=seaweedfs.access_key,
        secret_access_key=seaweedfs.secret_key,
    )
    fs = seaweedfs.filesystem()
    sensor = build_new_documents_sensor(lookback_seconds=lookback)
    with dg.instance_for_test() as instance:
        for attempt in range(5):
            while time.time() % 1 > 0.3:  # poll the clock to start early in a second, so both writes share it
                time.sleep(0.01)
            fs.pipe_file(f"{s3_bucket}/raw/text/s{attempt}/first.txt", b"first")
            first = tick(sensor, instance, resource)
            fs.pipe_file(f"{s3_bucket}/raw/text/s{attempt}/second.txt", b"second")
            fs.pipe_file(f"{s3_bucket}/raw/text/t{attempt}/other.txt", b"another batch, same second")
            keys = fs.find(f"{s3_bucket}/raw/text/", detail=True)
            seconds = {v["LastModified"] for k, v in keys.items() if f"{attempt}/" in k}
            if len(seconds) == 1:
                break
        else:
            pytest.fail("could not write three objects within one second in 5 attempts")
        assert json.loads(first.cursor)["text"]["watermark"] == seconds.pop().timestamp()
        second = tick(sensor, instance, resource, first.cursor)
        third = tick(sensor, instance, resource, second.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == [f"s{attempt}", f"t{attempt}"]
    assert not set(run_keys(second)) & set(run_keys(first))
    assert run_keys(third) == []


def test_first_tick_cap_holds_and_later_ticks_take_the_rest(store_root):
    store_root.put_many({f"raw/text/batch-{i:02d}/doc.txt": f"document {i}" for i in range(12)})
    resource = store_root.resource()
    sensor = build_new_documents_sensor(max_runs_per_tick=5)
    requested: list[str] = []
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(4):
            result = tick(sensor, instance, resource, cursor)
            assert len(result.run_requests) <= 5
            requested += [r.partition_key for r in result.run_requests]
            cursor = result.cursor
        assert len(instance.get_dynamic_partitions("text_batches")) == 12  # all added on the first tick
    assert sorted(requested) == [f"batch-{i:02d}" for i in range(12)]  # each exactly once, none lost


def test_cap_is_shared_by_both_modalities(store_root):
    store_root.put_many({f"raw/text/t{i}/doc.txt": "text" for i in range(3)})
    store_root.put_many({f"raw/images/i{i}/page.png": b"png" for i in range(3)})
    sensor = build_new_documents_sensor(max_runs_per_tick=4)
    with dg.instance_for_test() as instance:
        first = tick(sensor, instance, store_root.resource())
        second = tick(sensor, instance, store_root.resource(), first.cursor)
    assert len(first.run_requests) == 4 and len(second.run_requests) == 2


def test_a_burst_of_changed_batches_becomes_one_backfill(store_root):
    store_root.put_many({f"raw/text/burst-{i:02d}/doc.txt": f"document {i}" for i in range(8)})
    store_root.put("raw/images/single/page.png", b"png")
    sensor = build_new_documents_sensor(max_runs_per_tick=5, backfill_over=5, max_backfill_batches=20)
    repository = defs.get_repository_def()
    with dg.instance_for_test() as instance:
        first = tick(sensor, instance, store_root.resource(), repository=repository)
        second = tick(sensor, instance, store_root.resource(), first.cursor, repository=repository)
    [backfill] = [r for r in first.run_requests if r.requires_backfill_daemon()]
    assert backfill.tags == {"infinity_assets/sensor_backfill": "text"}
    assert backfill.asset_graph_subset.asset_keys == {dg.AssetKey("text_embeddings")}
    text_subset = backfill.asset_graph_subset.partitions_subsets_by_asset_key[dg.AssetKey("text_embeddings")]
    assert sorted(text_subset.get_partition_keys()) == [f"burst-{i:02d}" for i in range(8)]
    singles = [r for r in first.run_requests if not r.requires_backfill_daemon()]
    assert [(r.partition_key, r.asset_selection) for r in singles] == [("single", [dg.AssetKey("image_embeddings")])]  # no burst there
    assert second.run_requests == []  # the cursor knows the backfilled batches


def test_ten_thousand_objects_within_the_tick_budget(seaweedfs, s3_bucket):
    fs = seaweedfs.filesystem()
    fs.pipe({f"{s3_bucket}/raw/text/batch-{i % 100:03d}/doc-{i:05d}.txt": b"x" for i in range(10_000)})
    resource = DocumentStoreResource(
        root=f"s3://{s3_bucket}",
        endpoint_url=seaweedfs.endpoint_url,
        access_key_id=seaweedfs.access_key,
        secret_access_key=seaweedfs.secret_key,
    )
    sensor = build_new_documents_sensor(max_runs_per_tick=200, time_budget_seconds=40)
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        result = tick(sensor, instance, resource)
        elapsed = time.monotonic() - started
        second = tick(sensor, instance, resource, result.cursor)
    assert len(result.run_requests) == 100 and second.run_requests == []
    assert elapsed < 40, f"a tick over 10,000 objects took {elapsed:.1f} s, over its 40 s budget"
    assert len(result.cursor) < 100 * 80, "the cursor grows with batches, never with objects"


def test_an_unreadable_cursor_starts_over_without_failing(store_root):
    store_root.put("raw/text/b/a.txt", "alpha")
    with dg.instance_for_test() as instance:
        result = tick(new_documents_sensor, instance, store_root.resource(), cursor="not json")
    assert [r.partition_key for r in result.run_requests] == ["b"]


def test_invalid_limits_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="max_runs_per_tick"):
        build_new_documents_sensor(max_runs_per_tick=0)
    with pytest.raises(ValueError, match="max_backfill_batches > backfill_over"):
        build_new_documents_sensor(backfill_over=100, max_backfill_batches=50)


# --- plan_requests: the decision logic alone
def source(partition: str, name: str, modified: float, fingerprint: str = "v1") -> SourceObject:
    return SourceObject(
        key=name,
        uri=f"{partition}/{name}",
        path=f"{partition}/{name}",
        size=1,
        fingerprint=fingerprint,
        last_modified=modified,
    )


def test_planning_catches_a_second_object_in_the_watermark_second():
    listings = {"b": Listing([source("b", "x", 100.0)])}
    planned, cursor = plan_requests(listings, ModalityCursor(), 10)
    assert [run.partition for run in planned] == ["b"] and cursor.watermark == 100.0
    listings["b"].sources.append(source("b", "y", 100.0))  # same second, after the tick
    planned, cursor = plan_requests(listings, cursor, 10)
    assert planned == [PlannedRun("b", fingerprint_digest({"x": "v1", "y": "v1"}))]
    assert plan_requests(listings, cursor, 10)[0] == []


def test_planning_catches_a_late_object_older_than_the_watermark_within_the_lookback():
    listings = {"a": Listing([source("a", "x", 100.0)]), "z": Listing([source("z", "x", 110.0)])}
    _, cursor = plan_requests(listings, ModalityCursor(), 10, lookback_seconds=30)
    assert cursor.watermark == 110.0
    # Written at 105 into an already-listed prefix, it appeared after the listing that saw z at 110.
    listings["a"].sources.append(source("a", "late", 105.0))
    planned, cursor = plan_requests(listings, cursor, 10, lookback_seconds=30)
    assert [run.partition for run in planned] == ["a"]
    assert plan_requests(listings, cursor, 10, lookback_seconds=30)[0] == []


def test_planning_forgets_batches_that_leave_the_window():
    listings = {"old": Listing([source("old", "x", 100.0)])}
    _, cursor = plan_requests(listings, ModalityCursor(), 10, lookback_seconds=30)
    listings["new"] = Listing([source("new", "x", 200.0)])
    planned, cursor = plan_requests(listings, cursor, 10, lookback_seconds=30)
    assert [run.partition for run in planned] == ["new"] and set(cursor.requested) == {"new"}


def test_planning_ignores_an_identical_rewrite():
    listings = {"b": Listing([source("b", "x", 100.0, fingerprint="etag-1")])}
    _, cursor = plan_requests(listings, ModalityCursor(), 10)
    listings["b"] = Listing([source("b", "x", 101.0, fingerprint="etag-1")])  # same bytes, new LastModified
    assert plan_requests(listings, cursor, 10)[0] == []


def test_planning_with_a_cap_takes_oldest_changes_first():
    listings = {
        p: Listing([source(p, "d", t)]) for p, t in (("late", 300.0), ("early", 100.0), ("mid", 200.0))
    }
    planned, cursor = plan_requests(listings, ModalityCursor(), 2)
    assert [run.partition for run in planned] == ["early", "mid"] and cursor.watermark == 200.0
    planned, cursor = plan_requests(listings, cursor, 2)
    assert [run.partition for run in planned] == ["late"]
    assert plan_requests(listings, cursor, 2)[0] == []


def test_planning_with_a_cap_keeps_unrequested_batches_of_the_same_second():
    listings = {p: Listing([source(p, "d", 100.0)]) for p in ("a", "b", "c")}
    planned, cursor = plan_requests(listings, ModalityCursor(), 2)
    assert [run.partition for run in planned] == ["a", "b"]
    assert [run.partition for run in plan_requests(listings, cursor, 2)[0]] == ["c"]
