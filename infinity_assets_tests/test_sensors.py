"""A corpus's new-documents sensor evaluated with build_sensor_context against SeaweedFS and the local
filesystem, its pure planning logic, and two corpora side by side in one Definitions."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from infinity_assets.artifacts import fingerprint_digest
from infinity_assets.corpus import (
    ClientSettings,
    CorpusSettingsError,
    CorpusSpec,
    SensorSettings,
    StoreSettings,
)
from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.orchestration.sensors import (
    BACKFILL_TAG,
    ModalityCursor,
    PlannedRun,
    backfill_request,
    plan_requests,
)
from infinity_assets.storage.documents import Listing, SourceObject

TEXT, IMAGES = dg.AssetKey(["t", "text_embeddings"]), dg.AssetKey(["t", "image_embeddings"])


def corpus(store_root, name: str = "t", **limits: object) -> CorpusSpec:
    """A corpus with both modalities over ``store_root`` (no server is contacted), with sensor ``limits``."""
    return store_root.corpus(name, text=ClientSettings(model_name="m"), images=ClientSettings(model_name="m"),
                             sensor=SensorSettings(**limits))  # type: ignore[arg-type]


def sensor_of(spec: CorpusSpec) -> dg.SensorDefinition:
    """The corpus's new-documents sensor, found by its name in the definitions the corpus makes."""
    return build_corpus_definitions(spec).resolve_sensor_def(f"{spec.name}_new_documents_sensor")


def tick(spec: CorpusSpec, instance, cursor=None, repository=None) -> dg.SensorResult:
    """One tick of the corpus's sensor, its partition requests applied as the sensor daemon does."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repository)
    result = sensor_of(spec)(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def run_keys(result: dg.SensorResult) -> list[str]:
    return [r.run_key for r in result.run_requests or []]


def on_seaweedfs(seaweedfs, bucket: str, sensor: SensorSettings) -> CorpusSpec:
    """A text corpus at the root of ``bucket`` in the session's SeaweedFS."""
    store = StoreSettings(root=f"s3://{bucket}", endpoint_url=seaweedfs.endpoint_url,
                          access_key_id=seaweedfs.access_key, secret_access_key=seaweedfs.secret_key)
    return CorpusSpec(name="t", store=store, text=ClientSettings(model_name="m"), sensor=sensor)


def test_new_batches_become_partitions_and_runs_then_a_quiet_tick_skips(store_root):
    store_root.put("raw/text/2026-11-24/a.txt", "alpha")
    store_root.put("raw/text/2026-11-24/nested/b.md", "beta")
    store_root.put("raw/images/scans, part 1/p.png", b"png")
    store_root.put("raw/text/loose.txt", "in no batch folder")
    spec = corpus(store_root)
    with dg.instance_for_test() as instance:
        first = tick(spec, instance)
        requests = {r.partition_key: r for r in first.run_requests}
        assert sorted(requests) == ["2026-11-24", "scans%2C%20part%201"]
        assert requests["2026-11-24"].asset_selection == [TEXT]
        assert requests["scans%2C%20part%201"].asset_selection == [IMAGES]
        assert instance.get_dynamic_partitions("t_text_batches") == ["2026-11-24"]
        assert instance.get_dynamic_partitions("t_image_batches") == ["scans%2C%20part%201"]
        assert len(first.cursor) < 500
        second = tick(spec, instance, first.cursor)
    assert second.run_requests == [] and second.dynamic_partitions_requests == []
    assert second.skip_reason.skip_message == "no new or changed documents"


def test_run_key_is_the_digest_of_the_batch_fingerprints(store_root):
    store_root.put("raw/text/b/a.txt", "alpha")
    store_root.put("raw/text/b/skipped.csv", "not a document")
    listing = store_root.store().list_sources("text", "b")
    with dg.instance_for_test() as instance:
        result = tick(corpus(store_root), instance)
    assert run_keys(result) == [f"text:b:{fingerprint_digest(listing.fingerprints)}"]


def test_changed_document_yields_a_new_run_key_once(store_root):
    store_root.put("raw/text/b/a.txt", "v1")
    spec = corpus(store_root)
    with dg.instance_for_test() as instance:
        first = tick(spec, instance)
        # No wait for the next second: the new ETag / mtime changes the digest even within the same second.
        store_root.put("raw/text/b/a.txt", "version two")
        second = tick(spec, instance, first.cursor)
        third = tick(spec, instance, second.cursor)
    assert len(run_keys(first)) == len(run_keys(second)) == 1 and run_keys(first) != run_keys(second)
    assert run_keys(third) == []


@pytest.mark.parametrize("lookback", [0.0, 30.0])
def test_object_written_in_the_same_second_is_not_missed(seaweedfs, s3_bucket, lookback):
    spec = on_seaweedfs(seaweedfs, s3_bucket, SensorSettings(lookback_seconds=lookback))
    fs = seaweedfs.filesystem()
    with dg.instance_for_test() as instance:
        for attempt in range(5):
            while time.time() % 1 > 0.3:  # poll the clock to start early in a second, so both writes share it
                time.sleep(0.01)
            fs.pipe_file(f"{s3_bucket}/raw/text/s{attempt}/first.txt", b"first")
            first = tick(spec, instance)
            fs.pipe_file(f"{s3_bucket}/raw/text/s{attempt}/second.txt", b"second")
            fs.pipe_file(f"{s3_bucket}/raw/text/t{attempt}/other.txt", b"another batch, same second")
            keys = fs.find(f"{s3_bucket}/raw/text/", detail=True)
            seconds = {v["LastModified"] for k, v in keys.items() if f"{attempt}/" in k}
            if len(seconds) == 1:
                break
        else:
            pytest.fail("could not write three objects within one second in 5 attempts")
        assert json.loads(first.cursor)["text"]["watermark"] == seconds.pop().timestamp()
        second = tick(spec, instance, first.cursor)
        third = tick(spec, instance, second.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == [f"s{attempt}", f"t{attempt}"]
    assert not set(run_keys(second)) & set(run_keys(first))
    assert run_keys(third) == []


def test_first_tick_cap_holds_and_later_ticks_take_the_rest(store_root):
    store_root.put_many({f"raw/text/batch-{i:02d}/doc.txt": f"document {i}" for i in range(12)})
    spec = corpus(store_root, max_runs_per_tick=5)
    requested: list[str] = []
    with dg.instance_for_test() as instance:
        cursor = None
        for _ in range(4):
            result = tick(spec, instance, cursor)
            assert len(result.run_requests) <= 5
            requested += [r.partition_key for r in result.run_requests]
            cursor = result.cursor
        assert len(instance.get_dynamic_partitions("t_text_batches")) == 12  # all added on the first tick
    assert sorted(requested) == [f"batch-{i:02d}" for i in range(12)]  # each exactly once, none lost


def test_cap_is_shared_by_both_modalities(store_root):
    store_root.put_many({f"raw/text/t{i}/doc.txt": "text" for i in range(3)})
    store_root.put_many({f"raw/images/i{i}/page.png": b"png" for i in range(3)})
    spec = corpus(store_root, max_runs_per_tick=4)
    with dg.instance_for_test() as instance:
        first = tick(spec, instance)
        second = tick(spec, instance, first.cursor)
    assert len(first.run_requests) == 4 and len(second.run_requests) == 2


def test_a_burst_of_changed_batches_becomes_one_backfill(store_root):
    store_root.put_many({f"raw/text/burst-{i:02d}/doc.txt": f"document {i}" for i in range(8)})
    store_root.put("raw/images/single/page.png", b"png")
    spec = corpus(store_root, max_runs_per_tick=5, backfill_over=5, max_backfill_batches=20)
    repository = build_corpus_definitions(spec).get_repository_def()
    with dg.instance_for_test() as instance:
        first = tick(spec, instance, repository=repository)
        second = tick(spec, instance, first.cursor, repository=repository)
    [backfill] = [r for r in first.run_requests if r.requires_backfill_daemon()]
    assert backfill.tags == {BACKFILL_TAG: "t/text"}
    assert backfill.asset_graph_subset.asset_keys == {TEXT}
    text_subset = backfill.asset_graph_subset.partitions_subsets_by_asset_key[TEXT]
    assert sorted(text_subset.get_partition_keys()) == [f"burst-{i:02d}" for i in range(8)]
    singles = [r for r in first.run_requests if not r.requires_backfill_daemon()]
    assert [(r.partition_key, r.asset_selection) for r in singles] == [("single", [IMAGES])]  # no burst there
    assert second.run_requests == []  # the cursor knows the backfilled batches


def test_sensor_backfill_api_exists(store_root):
    """The one private Dagster API the sensor uses (a backfill request: ``RunRequest.for_asset_graph_subset``
    with an ``AssetGraphSubset``) still gives what the daemon needs: a burst of changed batches is one request
    for exactly those batches of the corpus's own embedding asset."""
    store_root.put_many({f"raw/text/b{i}/doc.txt": f"document {i}" for i in range(3)})
    spec = corpus(store_root, backfill_over=2)
    with dg.instance_for_test() as instance:
        repository = build_corpus_definitions(spec).get_repository_def()
        [request] = tick(spec, instance, repository=repository).run_requests
    assert request.requires_backfill_daemon() and request.partition_key is None
    subset = request.asset_graph_subset
    assert subset.asset_keys == {TEXT} and not subset.non_partitioned_asset_keys
    assert set(subset.partitions_subsets_by_asset_key[TEXT].get_partition_keys()) == {"b0", "b1", "b2"}
    # The same through the builder alone, for one batch: no other batch, no other asset.
    direct = backfill_request(spec.modality("images"), [PlannedRun("p", "digest")])
    assert direct.requires_backfill_daemon() and direct.tags == {BACKFILL_TAG: "t/images"}
    direct_subset = direct.asset_graph_subset.partitions_subsets_by_asset_key[IMAGES]
    assert list(direct_subset.get_partition_keys()) == ["p"]


def test_ten_thousand_objects_within_the_tick_budget(seaweedfs, s3_bucket):
    fs = seaweedfs.filesystem()
    fs.pipe({f"{s3_bucket}/raw/text/batch-{i % 100:03d}/doc-{i:05d}.txt": b"x" for i in range(10_000)})
    spec = on_seaweedfs(seaweedfs, s3_bucket, SensorSettings(max_runs_per_tick=200, time_budget_seconds=40))
    with dg.instance_for_test() as instance:
        started = time.monotonic()
        result = tick(spec, instance)
        elapsed = time.monotonic() - started
        second = tick(spec, instance, result.cursor)
    assert len(result.run_requests) == 100 and second.run_requests == []
    assert elapsed < 40, f"a tick over 10,000 objects took {elapsed:.1f} s, over its 40 s budget"
    assert len(result.cursor) < 100 * 80, "the cursor grows with batches, never with objects"


def test_an_unreadable_cursor_starts_over_without_failing(store_root):
    store_root.put("raw/text/b/a.txt", "alpha")
    with dg.instance_for_test() as instance:
        result = tick(corpus(store_root), instance, cursor="not json")
    assert [r.partition_key for r in result.run_requests] == ["b"]


def test_invalid_limits_are_refused_with_the_setting_named():
    with pytest.raises(CorpusSettingsError, match="max_runs_per_tick"):
        SensorSettings(max_runs_per_tick=0)
    with pytest.raises(CorpusSettingsError, match="max_backfill_batches > backfill_over"):
        SensorSettings(backfill_over=100, max_backfill_batches=50)
    with pytest.raises(CorpusSettingsError, match="minimum_interval_seconds"):
        SensorSettings(minimum_interval_seconds=0)


def test_the_sensor_follows_its_corpus_settings(tmp_path):
    spec = CorpusSpec(name="t", store=StoreSettings(root=str(tmp_path)), text=ClientSettings(),
                      sensor=SensorSettings(minimum_interval_seconds=300, enabled=False))
    sensor = sensor_of(spec)
    assert sensor.minimum_interval_seconds == 300
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor_of(CorpusSpec(name="t", store=spec.store, text=ClientSettings())).default_status == (
        dg.DefaultSensorStatus.RUNNING)


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


# --- two corpora in one Definitions: nothing shared, each sensor launches only its own corpus's runs
def test_two_corpora_in_one_definitions_share_no_name_and_request_only_their_own_runs(store_root, tmp_path):
    a = corpus(store_root, "a")
    b = CorpusSpec(name="b", store=StoreSettings(root=str(tmp_path / "b")),
                   text=ClientSettings(model_name="m2"), images=ClientSettings(model_name="m2"))
    defs_a, defs_b = build_corpus_definitions(a), build_corpus_definitions(b)
    merged = dg.Definitions.merge(defs_a, defs_b)
    dg.Definitions.validate_loadable(merged)
    assert not merged.resources  # no shared resource key to collide on

    def names(defs: dg.Definitions) -> dict[str, set]:
        graph = defs.resolve_asset_graph()
        return {"assets": set(graph.get_all_asset_keys()),
                "checks": set(graph.asset_check_keys),
                "partitions": {graph.get(k).partitions_def.name for k in graph.get_all_asset_keys()
                               if graph.get(k).partitions_def},
                "jobs": {j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")},
                "sensors": {s.name for s in defs.sensors or []},
                "schedules": {s.name for s in defs.schedules or []}}

    of_a, of_b, of_both = names(defs_a), names(defs_b), names(merged)
    for kind in of_a:
        assert of_a[kind] and of_b[kind], kind
        assert not of_a[kind] & of_b[kind], f"{kind} shared by two corpora: {of_a[kind] & of_b[kind]}"
        assert of_both[kind] == of_a[kind] | of_b[kind], kind
    assert {key.path[0] for key in of_a["assets"]} == {"a"}
    assert {key.path[0] for key in of_b["assets"]} == {"b"}
    assert of_a["partitions"] == {"a_text_batches", "a_image_batches"}
    assert of_a["jobs"] == {"a_embed_text_job", "a_embed_images_job"}
    assert of_a["sensors"] == {"a_new_documents_sensor", "a_index_automation_sensor"}
    assert of_a["schedules"] == {"a_text_incremental_schedule", "a_images_incremental_schedule"}

    store_root.put("raw/text/shared-name/doc.txt", "a batch of corpus a")
    store_root.put("raw/images/scans/p.png", b"png")
    (tmp_path / "b" / "raw" / "text" / "shared-name").mkdir(parents=True)
    (tmp_path / "b" / "raw" / "text" / "shared-name" / "doc.txt").write_text("a batch of corpus b")
    graph = merged.resolve_asset_graph()
    repository = merged.get_repository_def()
    requested: dict[str, set] = {}
    with dg.instance_for_test() as instance:
        for spec, own in ((a, of_a), (b, of_b)):
            context = dg.build_sensor_context(instance=instance, repository_def=repository)
            result = merged.resolve_sensor_def(f"{spec.name}_new_documents_sensor")(context)
            for request in result.run_requests:
                assert request.asset_selection and set(request.asset_selection) <= own["assets"], request
            assert {r.partitions_def_name for r in result.dynamic_partitions_requests} <= own["partitions"]
            observed = {e.asset_key for e in result.asset_events}
            assert observed and observed <= own["assets"]
            requested[spec.name] = {(r.partition_key, *r.asset_selection) for r in result.run_requests}
    assert requested == {"a": {("shared-name", dg.AssetKey(["a", "text_embeddings"])),
                               ("scans", dg.AssetKey(["a", "image_embeddings"]))},
                         "b": {("shared-name", dg.AssetKey(["b", "text_embeddings"]))}}
    for spec, own in ((a, of_a), (b, of_b)):
        automation = merged.resolve_sensor_def(f"{spec.name}_index_automation_sensor")
        targeted = automation.asset_selection.resolve(graph)
        assert targeted == {k for k in own["assets"] if k.path[1].endswith("_index")} and len(targeted) == 2
