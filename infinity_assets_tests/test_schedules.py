"""The incremental schedules request exactly the batches whose sources changed since their materialization."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import dagster as dg
import pytest
from PIL import Image

from infinity_assets.artifacts import data_version
from infinity_assets.corpus import (
    ClientSettings,
    CorpusSettingsError,
    CorpusSpec,
    ScheduleSettings,
    StoreSettings,
)
from infinity_assets.orchestration import build_corpus_definitions

TICK = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
EMBEDDINGS = dg.AssetKey(["t", "text_embeddings"])


def report_materialization(instance, store, partition: str, model: str, hidden_dim: int = 128) -> None:
    """Record a materialization carrying the data version the asset would report for the batch now."""
    listing = store.list_sources("text", partition)
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            EMBEDDINGS,
            partition=partition,
            tags={"dagster/data_version": data_version(listing.fingerprints, model, hidden_dim)},
        )
    )


def evaluate(spec: CorpusSpec, instance, kind: str = "text",
             when: datetime = TICK) -> dg.ScheduleExecutionData:
    """One tick of the corpus's incremental schedule of ``kind``, as the daemon evaluates it."""
    defs = build_corpus_definitions(spec)
    schedule = defs.resolve_schedule_def(spec.modality(kind).schedule_name)
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    ) as context:
        return schedule.evaluate_tick(context)


def requested(result: dg.ScheduleExecutionData) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests or [])


@pytest.fixture
def four_batches(store_root):
    """Batches same / changed / deleted-from / never-run, all registered, the first three materialized; and a
    factory of corpora ``t`` over them (model ``m``, 128 dimensions unless told)."""
    for batch in ("same", "changed", "deleted-from", "never-run"):
        store_root.put(f"raw/text/{batch}/a.txt", "alpha")
        store_root.put(f"raw/text/{batch}/b.txt", "beta")
    store_root.put("raw/text/unregistered/a.txt", "the sensor has not added this batch yet")

    def corpus(model: str = "m", hidden_dim: int = 128, **settings: object) -> CorpusSpec:
        return store_root.corpus(text=ClientSettings(model_name=model, hidden_dim=hidden_dim), **settings)

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["same", "changed", "deleted-from", "never-run"])
        for batch in ("same", "changed", "deleted-from"):
            report_materialization(instance, store_root.store(), batch, "m")
        yield store_root, instance, corpus


def test_only_never_materialized_batches_are_requested_when_nothing_changed(four_batches):
    _, instance, corpus = four_batches
    assert requested(evaluate(corpus(), instance)) == ["never-run"]


def test_changed_and_deleted_documents_make_their_batches_stale(four_batches):
    store_root, instance, corpus = four_batches
    # No wait for the next second: the new ETag (S3) or size and mtime_ns (local) change the fingerprint.
    store_root.put("raw/text/changed/a.txt", "alpha, edited")
    store_root.delete("raw/text/deleted-from/b.txt")
    result = evaluate(corpus(), instance)
    assert requested(result) == ["changed", "deleted-from", "never-run"]
    assert {r.job_name for r in result.run_requests} <= {None, "t_embed_text_job"}


def test_nothing_is_requested_once_every_batch_matches(four_batches):
    store_root, instance, corpus = four_batches
    report_materialization(instance, store_root.store(), "never-run", "m")
    result = evaluate(corpus(), instance)
    assert not result.run_requests and "matches its last materialization" in result.skip_message


def test_a_new_model_makes_every_batch_stale(four_batches):
    _, instance, corpus = four_batches
    assert requested(evaluate(corpus("other"), instance)) == ["changed", "deleted-from", "never-run", "same"]


def test_a_new_hidden_dim_makes_every_batch_stale(four_batches):
    _, instance, corpus = four_batches
    assert len(requested(evaluate(corpus(hidden_dim=384), instance))) == 4


def test_a_new_vector_encoding_makes_every_batch_stale(four_batches):
    _, instance, corpus = four_batches
    assert len(requested(evaluate(corpus(vector_encoding="float16"), instance))) == 4
    assert requested(evaluate(corpus(vector_encoding="float32"), instance)) == ["never-run"]  # the default


def test_a_batch_with_a_run_in_progress_is_not_requested_again(four_batches):
    _, instance, corpus = four_batches
    job = build_corpus_definitions(corpus()).resolve_job_def("t_embed_text_job")
    instance.create_run_for_job(job, tags={"dagster/partition": "never-run"},
                                status=dg.DagsterRunStatus.STARTED)
    result = evaluate(corpus(), instance)
    assert not result.run_requests and result.skip_message


def test_a_batch_in_a_running_backfill_range_is_not_requested_again(four_batches):
    _, instance, corpus = four_batches
    registered = instance.get_dynamic_partitions("t_text_batches")
    assert registered.index("changed") < registered.index("never-run")
    instance.create_run_for_job(  # a backfill run of the asset job over a range that includes never-run
        build_corpus_definitions(corpus()).resolve_implicit_global_asset_job_def(),
        asset_selection=frozenset({EMBEDDINGS}),
        tags={"dagster/asset_partition_range_start": "changed", "dagster/asset_partition_range_end": "never-run"},
        status=dg.DagsterRunStatus.STARTED)
    result = evaluate(corpus(), instance)
    assert not result.run_requests and result.skip_message


def test_a_run_of_another_corpus_does_not_hold_a_batch_back(four_batches):
    _, instance, corpus = four_batches
    other = CorpusSpec(name="u", store=corpus().store, text=ClientSettings(model_name="m"))
    job = build_corpus_definitions(other).resolve_job_def("u_embed_text_job")
    instance.create_run_for_job(job, tags={"dagster/partition": "never-run"},
                                status=dg.DagsterRunStatus.STARTED)
    assert requested(evaluate(corpus(), instance)) == ["never-run"]


def test_a_failed_batch_is_requested_again_on_the_next_tick(four_batches):
    _, instance, corpus = four_batches
    first = evaluate(corpus(), instance)
    later = evaluate(corpus(), instance, when=TICK.replace(hour=10))
    assert requested(first) == requested(later) == ["never-run"]
    assert first.run_requests[0].run_key != later.run_requests[0].run_key  # not deduplicated away


def test_the_cap_bounds_the_runs_of_one_tick(four_batches):
    _, instance, corpus = four_batches
    capped = corpus("other", schedule=ScheduleSettings(max_runs_per_tick=2))
    assert requested(evaluate(capped, instance)) == ["changed", "deleted-from"]


def test_cron_is_configurable(tmp_path):
    spec = CorpusSpec(name="t", store=StoreSettings(root=str(tmp_path)), images=ClientSettings(),
                      schedule=ScheduleSettings(cron="*/15 * * * *"))
    defs = build_corpus_definitions(spec)
    assert defs.resolve_schedule_def("t_images_incremental_schedule").cron_schedule == "*/15 * * * *"
    with pytest.raises(CorpusSettingsError, match="cron='hourly': five fields"):
        ScheduleSettings(cron="hourly")
    with pytest.raises(KeyError, match="corpus 't' has no text block"):
        spec.modality("text")  # no text block: no text schedule
    assert [s.name for s in defs.schedules] == ["t_images_incremental_schedule"]


def test_images_schedule_skips_without_images(store_root):
    with dg.instance_for_test() as instance:
        result = evaluate(store_root.corpus(images=ClientSettings(model_name="m")), instance, "images")
    assert not result.run_requests and result.skip_message


# --- with the real asset and the real Infinity server: the schedule computes the asset's own data version
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "model"), [("text", "minilm-colbert-128"), ("images", "colqwen2-tiny")],
                         ids=["text", "images"])
def test_a_batch_just_materialized_by_the_asset_is_not_stale(infinity_server, store_root, kind, model):
    name, data = ("page.png", png()) if kind == "images" else ("doc.txt", b"hello world")
    store_root.put(f"raw/{kind}/b/{name}", data)
    store_root.put(f"raw/{kind}/b/notes.csv", "an unsupported file: skipped by both")
    client = ClientSettings(url=infinity_server.url, model_name=model, hidden_dim=128)
    spec = store_root.corpus(**{kind: client})
    modality = spec.modality(kind)
    key = dg.AssetKey(["t", modality.asset_name("embeddings")])
    asset = build_corpus_definitions(spec).get_assets_def(key)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(modality.partitions_name, ["b"])
        assert requested(evaluate(spec, instance, kind)) == ["b"]
        dg.materialize([asset], partition_key="b", instance=instance)
        result = evaluate(spec, instance, kind)
    assert not result.run_requests, "the schedule's data version differs from the one the asset reported"


def test_the_schedule_and_the_schema_check_judge_a_batch_with_the_corpus_vector_encoding(infinity_server,
                                                                                         store_root):
    """One setting for the asset, the schedule and the checks: a float16 corpus's batch is neither stale nor a
    schema failure for it, and both for a float32 corpus over the same root (no re-embedding loop)."""
    store_root.put("raw/text/b/doc.txt", b"hello world")
    client = ClientSettings(url=infinity_server.url, model_name="minilm-colbert-128", hidden_dim=128)
    half, full = (store_root.corpus(text=client, vector_encoding=e) for e in ("float16", "float32"))

    def schema_check(spec: CorpusSpec, instance) -> dg.AssetCheckEvaluation:
        defs = build_corpus_definitions(spec)
        checks = [c for c in defs.asset_checks if {k.asset_key for k in c.check_keys} == {EMBEDDINGS}]
        result = dg.materialize([defs.get_assets_def(EMBEDDINGS), *checks], tags={"dagster/partition": "b"},
                                instance=instance, raise_on_error=False,
                                selection=dg.AssetSelection.checks(
                                    dg.AssetCheckKey(EMBEDDINGS, "artifact_schema")))
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["b"])
        asset = build_corpus_definitions(half).get_assets_def(EMBEDDINGS)
        result = dg.materialize([asset], partition_key="b", instance=instance)
        assert result.asset_materializations_for_node("t__text_embeddings")[0].metadata[
            "vector_encoding"].value == "float16"
        assert not evaluate(half, instance).run_requests
        assert schema_check(half, instance).passed
        assert requested(evaluate(full, instance)) == ["b"]
        wrong = schema_check(full, instance)
    assert not wrong.passed and "stores float16 vectors" in wrong.description
