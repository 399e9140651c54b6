"""The corpus component as a Dagster user meets it: scaffolded, configured in YAML, several instances side by side.

Loaded through Dagster's components test kit (defs-folder sandboxes); every bad input fails naming the file,
the attribute and what to do. The ``dg`` CLI and the daemon over a user project are in ``test_component_project``.
"""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from infinity_assets import InfinityCorpusComponent

TYPE = "infinity_assets.InfinityCorpusComponent"


def corpus_yaml(name: str, root: str, **attributes: object) -> dict:
    """A ``defs.yaml`` body: one text corpus (overridden or extended by ``attributes``)."""
    body = {"name": name, "root": root,
            "text": {"url": "http://127.0.0.1:7997", "model_name": "minilm-colbert-128", "hidden_dim": 128}}
    body.update(attributes)
    return {"type": TYPE, "attributes": body}


def write_instance(sandbox, folder: str, body: dict) -> Path:
    path = sandbox.defs_folder_path / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "defs.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def load_error(sandbox, path: Path | None = None) -> str:
    """The message chain of the error loading the sandbox's defs (or one instance)."""
    with pytest.raises(Exception) as failure:
        if path is None:
            with sandbox.build_all_defs():
                pass
        else:
            with sandbox.load_component_and_build_defs(defs_path=path):
                pass
    messages, error = [], failure.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}


def test_scaffolded_defs_yaml_names_the_corpus_after_its_folder_and_loads_once_its_env_is_set(monkeypatch, tmp_path):
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=InfinityCorpusComponent, defs_path="manuals")
        written = yaml.safe_load((path / "defs.yaml").read_text())
        assert written["attributes"]["name"] == "manuals"
        assert written["attributes"]["root"] == "{{ env.MANUALS_ROOT }}"
        assert written["requirements"]["env"] == ["MANUALS_ROOT", "INFINITY_API_URL"]
        monkeypatch.delenv("MANUALS_ROOT", raising=False)
        assert "needs the environment variable MANUALS_ROOT, which is not set" in load_error(sandbox, path)

        monkeypatch.setenv("MANUALS_ROOT", str(tmp_path / "manuals"))
        monkeypatch.setenv("INFINITY_API_URL", "http://127.0.0.1:7997")
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, InfinityCorpusComponent)
            assert asset_keys(defs) == {"manuals/raw_text_documents", "manuals/text_embeddings", "manuals/text_index"}
            assert component.corpus_spec().store.root == str(tmp_path / "manuals")


def test_two_instances_load_side_by_side_with_their_own_keys_partitions_jobs_sensors_and_schedules(tmp_path):
    with create_defs_folder_sandbox() as sandbox:
        write_instance(sandbox, "contracts", corpus_yaml(
            "contracts", "s3://acme-contracts/scans", text=None,
            images={"url": "http://gpu-1:7997", "model_name": "colqwen2-tiny", "pdf": {"max_side": 768}}))
        write_instance(sandbox, "notes", corpus_yaml("notes", str(tmp_path / "notes"), vector_encoding="float16"))
        with sandbox.build_all_defs() as defs:
            assert asset_keys(defs) == {
                "contracts/raw_image_documents", "contracts/image_embeddings", "contracts/image_index",
                "notes/raw_text_documents", "notes/text_embeddings", "notes/text_index"}
            assert {s.name for s in defs.sensors} == {
                "contracts_new_documents_sensor", "contracts_index_automation_sensor",
                "notes_new_documents_sensor", "notes_index_automation_sensor"}
            assert {s.name for s in defs.schedules} == {"contracts_images_incremental_schedule",
                                                        "notes_text_incremental_schedule"}
            assert {j.name for j in defs.resolve_all_job_defs()} >= {"contracts_embed_images_job",
                                                                     "notes_embed_text_job"}
            graph = defs.resolve_asset_graph()
            partitions = {key.to_user_string(): graph.get(key).partitions_def.name
                          for key in graph.get_all_asset_keys() if graph.get(key).partitions_def}
            assert partitions == {"contracts/raw_image_documents": "contracts_image_batches",
                                  "contracts/image_embeddings": "contracts_image_batches",
                                  "notes/raw_text_documents": "notes_text_batches",
                                  "notes/text_embeddings": "notes_text_batches"}
            # Each sensor targets only its own corpus's embeddings.
            sensor = {s.name: s for s in defs.sensors}
            assert {k.to_user_string() for k in sensor["notes_new_documents_sensor"].asset_selection.resolve(graph)} == {
                "notes/text_embeddings"}
            # No resource key is bound: nothing for two instances (or a user's own resources) to collide on.
            assert not defs.resources
            # The shared pool by default: one GPU server limits every corpus's embedding steps.
            for key in (["contracts", "image_embeddings"], ["notes", "text_embeddings"]):
                assert set(graph.get(dg.AssetKey(key)).pools) == {"infinity"}


def test_every_setting_reaches_the_corpus_spec():
    component = InfinityCorpusComponent(
        name="manuals", root="s3://acme/manuals", vector_encoding="float16", pool="gpu_b", max_failure_ratio=0.1,
        s3={"endpoint_url": "http://127.0.0.1:8333", "secret_access_key": "s3cr3t"},
        images={"url": "http://a:1,http://b:1", "model_name": "colqwen2-tiny", "hidden_dim": "auto",
                "pdf": {"dpi": 100, "max_pages": 50}},
        sensor={"minimum_interval_seconds": 15, "max_runs_per_tick": 5},
        schedule={"cron": "*/30 * * * *", "enabled": False},
        index={"encoding": {"fde_repetitions": 8}, "search": {"fde_candidates": 300}, "drift_queries": 0})
    spec = component.corpus_spec()
    assert spec.text is None and spec.images is not None
    assert spec.images.hidden_dim is None and spec.images.url == "http://a:1,http://b:1"
    assert (spec.pdf.dpi, spec.pdf.max_pages, spec.pdf.max_side) == (100, 50, 1024)
    assert (spec.vector_encoding, spec.pool, spec.max_failure_ratio) == ("float16", "gpu_b", 0.1)
    assert spec.store.endpoint_url == "http://127.0.0.1:8333" and spec.store.secret_access_key == "s3cr3t"
    assert "s3cr3t" not in repr(spec)  # secrets never in logs
    assert (spec.sensor.minimum_interval_seconds, spec.sensor.max_runs_per_tick) == (15, 5)
    assert (spec.schedule.cron, spec.schedule.enabled) == ("*/30 * * * *", False)
    assert spec.index.encoding.fde_repetitions == 8 and spec.index.search.fde_candidates == 300
    schedule = build_schedule(spec)
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED and schedule.cron_schedule == "*/30 * * * *"


def build_schedule(spec):
    from infinity_assets.orchestration import build_corpus_definitions

    [schedule] = build_corpus_definitions(spec).schedules
    return schedule


@pytest.mark.parametrize(("change", "expected"), [
    ({"txet": {}}, ["attributes.txet", "Extra inputs are not permitted"]),
    ({"audio": {"url": "http://x", "model_name": "m"}}, ["attributes.audio", "Extra inputs are not permitted"]),
    ({"text": {"url": "http://x", "model_nmae": "m"}}, ["attributes.text", "model_nmae", "Extra inputs are not permitted"]),
    ({"root": None}, ["root"]),
    ({"root": "gs://bucket/docs"}, ["defs.yaml: attributes: root='gs://bucket/docs'", "the scheme 'gs' is not "
                                    "supported; use a local folder, file:// or s3://bucket/prefix"]),
    ({"root": "s3://"}, ["names no bucket: use s3://bucket/prefix"]),
    ({"name": "Manuals-1"}, ["name='Manuals-1'", "lowercase letters, digits and _"]),
    ({"text": None}, ["embeds nothing: add a text block, an images block or both"]),
    ({"text": {"url": "http://x", "model_name": "m", "hidden_dim": "big"}}, ["attributes.text", "hidden_dim", "unable to parse string as an integer"]),
    ({"vector_encoding": "int8"}, ["vector_encoding", "Input should be 'float32' or 'float16'"]),
    ({"schedule": {"cron": "hourly"}}, ["schedule cron='hourly': five fields"]),
    ({"index": {"encoding": {"fde_repetitons": 4}}}, ["index.encoding: unknown setting(s) fde_repetitons",
                                                       "fde_repetitions"]),
    ({"text": {"url": "{{ env.NOTES_INFINITY_URL }}", "model_name": "m"}},
     ["needs the environment variable NOTES_INFINITY_URL, which is not set"]),
])
def test_a_bad_attribute_fails_loading_naming_the_file_the_attribute_and_what_to_do(tmp_path, change, expected,
                                                                                    monkeypatch):
    monkeypatch.delenv("NOTES_INFINITY_URL", raising=False)
    body = corpus_yaml("notes", str(tmp_path / "notes"))
    body["attributes"].update(change)
    body["attributes"] = {k: v for k, v in body["attributes"].items() if v is not None}
    with create_defs_folder_sandbox() as sandbox:
        path = write_instance(sandbox, "notes", body)
        message = load_error(sandbox, path)
    # The file: its path, or (for a top-level value Dagster checks after parsing) the tree naming the folder and file.
    assert str(path / "defs.yaml") in message or "└── notes\n    └── defs.yaml (InfinityCorpusComponent) (error)" in message
    for part in expected:
        assert part in message, message


def test_two_instances_with_one_name_fail_naming_both_files(tmp_path):
    with create_defs_folder_sandbox() as sandbox:
        first = write_instance(sandbox, "notes", corpus_yaml("notes", str(tmp_path / "a")))
        second = write_instance(sandbox, "notes_copy", corpus_yaml("notes", str(tmp_path / "b")))
        message = load_error(sandbox)
    assert "corpus name 'notes' is used by two instances" in message
    assert str(first) in message and str(second) in message


def test_loading_contacts_no_server(tmp_path):
    # An unreachable server and bucket: definitions still load (dg check defs in CI, without secrets).
    with create_defs_folder_sandbox() as sandbox:
        write_instance(sandbox, "notes", corpus_yaml(
            "notes", "s3://no-such-bucket/x", s3={"endpoint_url": "http://127.0.0.1:9"},
            text={"url": "http://127.0.0.1:9", "model_name": "m", "hidden_dim": "auto"}))
        with sandbox.build_all_defs() as defs:
            assert "notes/text_embeddings" in asset_keys(defs)


def test_an_unset_variable_of_an_optional_secret_leaves_it_unset_so_definitions_load_without_secrets(
        tmp_path, monkeypatch):
    monkeypatch.delenv("NOTES_S3_SECRET", raising=False)
    monkeypatch.delenv("NOTES_API_KEY", raising=False)
    body = corpus_yaml("notes", "s3://notes/docs", s3={"secret_access_key": "{{ env.NOTES_S3_SECRET }}"},
                       text={"url": "http://127.0.0.1:7997", "model_name": "m", "api_key": "{{ env.NOTES_API_KEY }}"})
    with create_defs_folder_sandbox() as sandbox:
        path = write_instance(sandbox, "notes", body)
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, _):
            spec = component.corpus_spec()
    assert spec.store.secret_access_key is None and spec.text.api_key is None  # the run reads AWS_* then
    monkeypatch.setenv("NOTES_API_KEY", "k3y")
    with create_defs_folder_sandbox() as sandbox:
        path = write_instance(sandbox, "notes", body)
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, _):
            assert component.corpus_spec().text.api_key == "k3y"
