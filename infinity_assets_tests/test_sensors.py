"""new_documents_sensor evaluated with build_sensor_context against SeaweedFS (and its pure planning logic)."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from infinity_assets import DocumentStoreResource
from infinity_assets.documents import Listing, SourceObject
from infinity_assets.sensors import ModalityCursor, build_new_documents_sensor, new_documents_sensor, plan_requests


@pytest.fixture
def bucket_root(seaweedfs, s3_bucket):
    resource = DocumentStoreResource(root=f"s3://{s3_bucket}", endpoint_url=seaweedfs.endpoint_url,
                                     access_key_id=seaweedfs.access_key, secret_access_key=seaweedfs.secret_key)
    fs = seaweedfs.filesystem()

    def put(key: str, data: bytes = b"text") -> None:
        fs.pipe_file(f"{s3_bucket}/{key}", data)

    return resource, put, fs, s3_bucket


def tick(sensor, instance, resource, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"document_store": resource})
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def run_keys(result: dg.SensorResult) -> list[str]:
    return [r.run_key for r in result.run_requests or []]


def test_new_batches_become_partitions_and_runs_then_a_quiet_tick_skips(bucket_root):
    resource, put, _, _ = bucket_root
    put("raw/text/2026-11-24/a.txt")
    put("raw/text/2026-11-24/nested/b.md")
    put("raw/images/scans, part 1/p.png", b"png")
    put("raw/text/loose.txt")  # not in a batch folder
    with dg.instance_for_test() as instance:
        first = tick(new_documents_sensor, instance, resource)
        assert sorted(r.partition_key for r in first.run_requests) == ["2026-11-24", "scans%2C%20part%201"]
        assert {r.job_name for r in first.run_requests} == {"embed_text_job", "embed_images_job"}
        assert instance.get_dynamic_partitions("text_batches") == ["2026-11-24"]
        assert instance.get_dynamic_partitions("image_batches") == ["scans%2C%20part%201"]
        assert len(first.cursor) < 500
        second = tick(new_documents_sensor, instance, resource, first.cursor)
        assert second.run_requests == [] and second.skip_reason


def test_changed_document_yields_a_new_run_key_once(bucket_root):
    resource, put, _, _ = bucket_root
    put("raw/text/b/a.txt", b"v1")
    with dg.instance_for_test() as instance:
        first = tick(new_documents_sensor, instance, resource)
        time.sleep(1.05)  # LastModified has whole-second resolution; a rewrite must land in a later second
        put("raw/text/b/a.txt", b"version two")
        second = tick(new_documents_sensor, instance, resource, first.cursor)
        third = tick(new_documents_sensor, instance, resource, second.cursor)
    assert len(run_keys(first)) == len(run_keys(second)) == 1 and run_keys(first) != run_keys(second)
    assert run_keys(third) == []


def test_object_written_in_the_same_second_is_not_missed(bucket_root):
    resource, put, fs, bucket = bucket_root
    with dg.instance_for_test() as instance:
        for attempt in range(5):
            while time.time() % 1 > 0.2:  # start early in a second so both writes share it
                time.sleep(0.02)
            put(f"raw/text/s{attempt}/first.txt")
            first = tick(new_documents_sensor, instance, resource)
            put(f"raw/text/s{attempt}/second.txt")
            infos = {p.rsplit("/", 1)[1]: fs.info(p)["LastModified"] for p in fs.find(f"{bucket}/raw/text/s{attempt}")}
            if infos["first.txt"] == infos["second.txt"]:
                break
            fs.rm(f"{bucket}/raw/text/s{attempt}", recursive=True)
        else:
            pytest.fail("could not write two objects within one second")
        cursor = json.loads(first.cursor)
        assert cursor["text"]["watermark"] == infos["first.txt"].timestamp()
        second = tick(new_documents_sensor, instance, resource, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [f"s{attempt}"]
    assert run_keys(second) != run_keys(first)


def test_first_tick_cap_holds_and_later_ticks_take_the_rest(bucket_root):
    resource, put, _, _ = bucket_root
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: put(f"raw/text/batch-{i:02d}/doc.txt"), range(12)))
    sensor = build_new_documents_sensor(max_runs_per_tick=5)
    requested: list[str] = []
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(4):
            result = tick(sensor, instance, resource, cursor)
            assert len(result.run_requests) <= 5
            requested += [r.partition_key for r in result.run_requests]
            cursor = result.cursor
        assert len(instance.get_dynamic_partitions("text_batches")) == 12
    assert sorted(requested) == [f"batch-{i:02d}" for i in range(12)]  # each once, none lost


def test_ten_thousand_objects_within_the_tick_budget(bucket_root):
    resource, _, fs, bucket = bucket_root
    objects = {f"{bucket}/raw/text/batch-{i % 100:03d}/doc-{i:05d}.txt": b"x" for i in range(10_000)}
    fs.pipe(objects)
    sensor = build_new_documents_sensor(max_runs_per_tick=200, time_budget_seconds=40)
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        result = tick(sensor, instance, resource)
        elapsed = time.monotonic() - started
    assert len(result.run_requests) == 100
    assert elapsed < 40, f"a tick over 10,000 objects took {elapsed:.1f}s, over its 40 s budget"


def source(path: str, modified: float) -> SourceObject:
    return SourceObject(key=path.rsplit("/", 1)[1], uri=path, path=path, size=1, fingerprint=path,
                        last_modified=modified)


def test_planning_keeps_keys_seen_at_the_watermark_second():
    listings = {"b": Listing([source("b/x", 100.0)])}
    requests, cursor = plan_requests(listings, ModalityCursor(), 10)
    assert [p for p, _ in requests] == ["b"] and cursor == ModalityCursor(100.0, ("b/x",))
    listings["b"].sources.append(source("b/y", 100.0))  # same second, after the tick
    requests, cursor = plan_requests(listings, cursor, 10)
    assert [p for p, _ in requests] == ["b"] and cursor == ModalityCursor(100.0, ("b/x", "b/y"))
    assert plan_requests(listings, cursor, 10)[0] == []


def test_planning_with_a_cap_takes_oldest_changes_first():
    listings = {p: Listing([source(f"{p}/d", t)]) for p, t in (("late", 300.0), ("early", 100.0), ("mid", 200.0))}
    requests, cursor = plan_requests(listings, ModalityCursor(), 2)
    assert [p for p, _ in requests] == ["early", "mid"] and cursor.watermark == 200.0
    requests, cursor = plan_requests(listings, cursor, 2)
    assert [p for p, _ in requests] == ["late"]
