"""The embedding assets in a real Dagster instance, with the real Infinity server, on SeaweedFS and local disk."""
from __future__ import annotations

import io

import dagster as dg
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from infinity_assets import InfinityEmbeddings, InfinityResource, artifacts
from infinity_assets.orchestration.assets import image_embeddings, text_embeddings
from infinity_assets.orchestration.checks import image_checks, text_checks
from infinity_assets.storage.documents import DocumentStore, DocumentStoreError

TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colqwen2-tiny"


class CountingTransport(httpx.HTTPTransport):
    """Counts the inputs of every /embeddings request that reaches the server."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/embeddings":
            import json

            body = json.loads(request.content)
            if body["encoding_format"] != "float":  # not the hidden_dim probe
                self.inputs.extend(body["input"])
        return super().handle_request(request)


class CountingInfinity(InfinityResource):
    """InfinityResource whose client counts what it sends (the server itself stays real)."""

    def build_client(self) -> InfinityEmbeddings:
        return InfinityEmbeddings(**self.effective_settings(), transport=COUNTER)


COUNTER = CountingTransport()


def page(text: str) -> bytes:
    image = Image.new("RGB", (56, 42), "white")
    ImageDraw.Draw(image).text((2, 2), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def resources(infinity_server, store_root):
    def build(model: str = TEXT_MODEL, **store_options: object) -> dict[str, object]:
        document_store = store_root.resource(**store_options)
        infinity = CountingInfinity(url=infinity_server.url, model_name=model, hidden_dim=128)
        return {"infinity": infinity, "infinity_images": infinity, "document_store": document_store}
    COUNTER.inputs.clear()
    return build


def materialize(asset, checks, partition: str, resources: dict, instance, *, raise_on_error: bool = True):
    instance.add_dynamic_partitions(asset.partitions_def.name, [partition])
    return dg.materialize([asset, *checks], partition_key=partition, resources=resources, instance=instance,
                          raise_on_error=raise_on_error)


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    [materialization] = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_text_partition_materializes_and_round_trips(store_root, resources):
    texts = {"a.txt": "late interaction retrieval", "sub/b.md": "# notes\nabout vectors",
             "c.jsonl": '{"id": "x", "text": "first line"}\n{"id": "y", "text": "second line"}\n'}
    for key, text in texts.items():
        store_root.put(f"raw/text/batch-1/{key}", text)
    with dg.instance_for_test() as instance:
        result = materialize(text_embeddings, text_checks, "batch-1", resources(), instance)
    meta = metadata_of(result, "text_embeddings")
    assert (meta["documents_total"], meta["documents_embedded"], meta["documents_failed"]) == (4, 4, 0)
    assert meta["dagster/row_count"] == 4 and meta["vectors"] > 4
    assert all(checks_of(result).values()) and len(checks_of(result)) == 4
    store = store_root.store()
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "batch-1"))
    with InfinityEmbeddings(url=resources()["infinity"].url, model_name=TEXT_MODEL) as client:
        expected = client.embed_text("late interaction retrieval")
    np.testing.assert_allclose(artifact.vectors_of(artifact.doc_ids.index("a.txt")), expected, atol=1e-5)
    assert artifact.metadata["model"] == TEXT_MODEL and artifact.metadata["partition"] == "batch-1"
    data_version = result.asset_materializations_for_node("text_embeddings")[0].tags["dagster/data_version"]
    assert data_version == artifact.metadata["data_version"]


def test_image_partition_materializes(store_root, resources):
    for i in range(5):
        store_root.put(f"raw/images/scans/page{i}.png", page(f"page {i}"))
    store_root.put("raw/images/scans/readme.txt", "not an image")
    with dg.instance_for_test() as instance:
        result = materialize(image_embeddings, image_checks, "scans", resources(IMAGE_MODEL), instance)
    meta = metadata_of(result, "image_embeddings")
    assert (meta["documents_embedded"], meta["files_skipped"]) == (5, 1)
    assert all(checks_of(result).values())


def test_incremental_add_change_delete(store_root, resources):
    for i in range(4):
        store_root.put(f"raw/text/b/doc{i}.txt", f"document number {i}")
    with dg.instance_for_test() as instance:
        materialize(text_embeddings, text_checks, "b", resources(), instance)
        assert len(COUNTER.inputs) == 4

        COUNTER.inputs.clear()
        result = materialize(text_embeddings, text_checks, "b", resources(), instance)
        assert COUNTER.inputs == [] and metadata_of(result, "text_embeddings")["documents_reused"] == 4

        store_root.put("raw/text/b/new.txt", "a new document")
        result = materialize(text_embeddings, text_checks, "b", resources(), instance)
        assert COUNTER.inputs == ["a new document"]

        COUNTER.inputs.clear()
        store_root.put("raw/text/b/doc1.txt", "document one, changed")
        store_root.delete("raw/text/b/doc2.txt")
        result = materialize(text_embeddings, text_checks, "b", resources(), instance)
        assert COUNTER.inputs == ["document one, changed"]
    meta = metadata_of(result, "text_embeddings")
    assert (meta["documents_total"], meta["documents_embedded"], meta["documents_reused"]) == (4, 1, 3)
    store = store_root.store()
    assert "doc2.txt" not in artifacts.read_artifact(store.fs, store.artifact_path("text", "b")).doc_ids
    assert all(checks_of(result).values())


def test_bad_documents_fail_the_check_not_the_others(store_root, resources):
    store_root.put("raw/text/mixed/good.txt", "a perfectly good document")
    store_root.put("raw/text/mixed/latin1.txt", "caf\xe9".encode("latin-1"))
    store_root.put("raw/images/mixed/good.png", page("good"))
    store_root.put("raw/images/mixed/corrupt.png", page("bad")[:90])
    with dg.instance_for_test() as instance:
        text_result = materialize(text_embeddings, text_checks, "mixed", resources(), instance, raise_on_error=False)
        image_result = materialize(image_embeddings, image_checks, "mixed", resources(IMAGE_MODEL), instance,
                                   raise_on_error=False)
    for result, asset, bad in ((text_result, "text_embeddings", "latin1.txt"),
                               (image_result, "image_embeddings", "corrupt.png")):
        assert not result.success  # the blocking failure check fails the run ...
        meta = metadata_of(result, asset)  # ... after the others were embedded and published
        assert (meta["documents_embedded"], meta["documents_failed"]) == (1, 1)
        failures = {r.data["document"]: r.data["error"] for r in meta["failures"].records}
        assert list(failures) == [bad]
        checks = checks_of(result)
        assert checks["failures_within_threshold"] is False
    assert "not valid UTF-8" in str(text_result.all_events)


def test_failure_ratio_threshold_is_configurable(store_root, resources):
    store_root.put("raw/text/t/good.txt", "fine")
    store_root.put("raw/text/t/empty.txt", "")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("text_batches", ["t"])
        result = dg.materialize([text_embeddings, *text_checks], partition_key="t", resources=resources(),
                                instance=instance,
                                run_config={"ops": {"text_embeddings": {"config": {"max_failure_ratio": 0.5}}}})
    assert result.success and all(checks_of(result).values())


def test_checks_fail_on_a_hand_corrupted_artifact(store_root, resources):
    for i in range(3):
        store_root.put(f"raw/text/c/doc{i}.txt", f"document {i}")
    store = store_root.store()
    path = store.artifact_path("text", "c")
    with dg.instance_for_test() as instance:
        materialize(text_embeddings, text_checks, "c", resources(), instance)
        table = pq.read_table(store.fs.open(path, "rb"))
        vectors = table.column("embedding").combine_chunks()
        flat = vectors.flatten().flatten().to_numpy().copy()
        flat[5] = np.nan
        bad_embedding = pa.ListArray.from_arrays(vectors.offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat), 128))
        corrupted = table.set_column(table.schema.get_field_index("embedding"), table.schema.field("embedding"),
                                     bad_embedding).slice(0, 2)
        with store.fs.open(path, "wb") as handle:
            pq.write_table(corrupted.replace_schema_metadata(table.schema.metadata), handle)
        # The checks alone, as "Execute checks" in the UI does: a run of the checks tagged with the partition.
        result = dg.materialize([text_embeddings, *text_checks], tags={"dagster/partition": "c"},
                                resources=resources(), instance=instance, raise_on_error=False,
                                selection=dg.AssetSelection.checks(*text_checks))
    checks = checks_of(result)
    assert checks == {"artifact_schema": True, "documents_accounted_for": False, "vectors_valid": False}


def test_the_vector_encoding_is_run_config_and_the_checks_know_it(store_root, resources):
    for i in range(3):
        store_root.put(f"raw/text/h/doc{i}.txt", f"document {i}")
    store = store_root.store()
    half = {"ops": {"text_embeddings": {"config": {"vector_encoding": "float16"}}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("text_batches", ["h"])
        result = dg.materialize([text_embeddings, *text_checks], partition_key="h", resources=resources(),
                                instance=instance, run_config=half)
        assert result.success and all(checks_of(result).values()) and len(checks_of(result)) == 4
        assert metadata_of(result, "text_embeddings")["vector_encoding"] == "float16"
        artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "h"), stored_dtype=True)
        assert artifact.vectors.dtype == np.float16 and artifact.metadata["vector_encoding"] == "float16"
        # The checks alone, configured for float32 (the default): the float16 artifact is not what is asked for.
        result = dg.materialize([text_embeddings, *text_checks], tags={"dagster/partition": "h"},
                                resources=resources(), instance=instance, raise_on_error=False,
                                selection=dg.AssetSelection.checks(*text_checks))
    [schema] = [e for e in result.get_asset_check_evaluations() if e.check_name == "artifact_schema"]
    assert not schema.passed and "stores float16 vectors" in schema.description
    assert checks_of(result) == {"artifact_schema": False, "documents_accounted_for": True, "vectors_valid": True}


def test_wrong_s3_credentials_give_a_clear_error(seaweedfs, s3_bucket):
    store = DocumentStore(f"s3://{s3_bucket}", endpoint_url=seaweedfs.endpoint_url, key=seaweedfs.access_key,
                          secret="not-the-secret")
    with pytest.raises(DocumentStoreError, match="denied.*AWS_SECRET_ACCESS_KEY") as info:
        store.list_sources("text", "any")
    assert "not-the-secret" not in str(info.value) and seaweedfs.endpoint_url in str(info.value)
