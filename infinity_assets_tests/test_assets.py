"""The embedding assets of a corpus in a real Dagster instance, with the real Infinity server, on SeaweedFS
and local disk."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields

import dagster as dg
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from infinity_assets import InfinityEmbeddings, artifacts
from infinity_assets.corpus import ClientSettings, CorpusSpec
from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.orchestration.assets import EmbeddingConfig
from infinity_assets.storage.documents import DocumentStore, DocumentStoreError

TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colqwen2-tiny"


class CountingTransport(httpx.HTTPTransport):
    """Counts the inputs of every /embeddings request that reaches the server."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/embeddings":
            body = json.loads(request.content)
            if body["encoding_format"] != "float":  # not the hidden_dim probe
                self.inputs.extend(body["input"])
        return super().handle_request(request)


COUNTER = CountingTransport()


@dataclass(frozen=True)
class CountingClient(ClientSettings):
    """A modality's client settings whose client counts what it sends (the server itself stays real)."""

    def build_client(self) -> InfinityEmbeddings:
        options = {f.name: getattr(self, f.name) for f in fields(ClientSettings)
                   if f.name != "http_transport"}
        return InfinityEmbeddings(**options, transport=COUNTER)


@dataclass
class Corpus:
    """A corpus built in the test: its spec and the definitions it makes."""

    spec: CorpusSpec
    defs: dg.Definitions

    def key(self, kind: str) -> dg.AssetKey:
        return dg.AssetKey([self.spec.name, f"{self.spec.modality(kind).stem}_embeddings"])

    def node(self, kind: str) -> str:
        """The op name of the embedding asset (run config and results are keyed by it)."""
        return self.key(kind).to_python_identifier()

    def asset(self, kind: str) -> dg.AssetsDefinition:
        return self.defs.get_assets_def(self.key(kind))

    def checks(self, kind: str) -> list[dg.AssetChecksDefinition]:
        """The artifact checks of the embedding asset (the failure check is the asset's own)."""
        return [c for c in self.defs.asset_checks or []
                if {k.asset_key for k in c.check_keys} == {self.key(kind)}]

    def materialize(self, kind: str, partition: str, instance, *, raise_on_error: bool = True,
                    **options: object) -> dg.ExecuteInProcessResult:
        instance.add_dynamic_partitions(self.spec.modality(kind).partitions_name, [partition])
        return dg.materialize([self.asset(kind), *self.checks(kind)], partition_key=partition,
                              instance=instance, raise_on_error=raise_on_error, **options)

    def run_checks(self, kind: str, partition: str, instance) -> dg.ExecuteInProcessResult:
        """The checks alone, as "Execute checks" in the UI does: a run of the checks tagged with the
        partition."""
        checks = self.checks(kind)
        return dg.materialize([self.asset(kind), *checks], tags={"dagster/partition": partition},
                              instance=instance, raise_on_error=False,
                              selection=dg.AssetSelection.checks(*checks))


def page(text: str) -> bytes:
    image = Image.new("RGB", (56, 42), "white")
    ImageDraw.Draw(image).text((2, 2), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def corpus(infinity_server, store_root):
    """A factory: a corpus over the test's store root, counting what its client sends to the real server."""
    def build(model: str = TEXT_MODEL, **settings: object) -> Corpus:
        client = CountingClient(url=infinity_server.url, model_name=model, hidden_dim=128)
        spec = store_root.corpus(text=client, images=client, **settings)
        return Corpus(spec, build_corpus_definitions(spec))
    COUNTER.inputs.clear()
    return build


def metadata_of(result: dg.ExecuteInProcessResult, node: str) -> dict[str, object]:
    [materialization] = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_text_partition_materializes_and_round_trips(store_root, corpus, infinity_server):
    texts = {"a.txt": "late interaction retrieval", "sub/b.md": "# notes\nabout vectors",
             "c.jsonl": '{"id": "x", "text": "first line"}\n{"id": "y", "text": "second line"}\n'}
    for key, text in texts.items():
        store_root.put(f"raw/text/batch-1/{key}", text)
    t = corpus()
    with dg.instance_for_test() as instance:
        result = t.materialize("text", "batch-1", instance)
    meta = metadata_of(result, t.node("text"))
    assert (meta["documents_total"], meta["documents_embedded"], meta["documents_failed"]) == (4, 4, 0)
    assert meta["dagster/row_count"] == 4 and meta["vectors"] > 4
    assert all(checks_of(result).values()) and len(checks_of(result)) == 4
    store = store_root.store()
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "batch-1"))
    with InfinityEmbeddings(url=infinity_server.url, model_name=TEXT_MODEL) as client:
        expected = client.embed_text("late interaction retrieval")
    np.testing.assert_allclose(artifact.vectors_of(artifact.doc_ids.index("a.txt")), expected, atol=1e-5)
    assert artifact.metadata["model"] == TEXT_MODEL and artifact.metadata["partition"] == "batch-1"
    data_version = result.asset_materializations_for_node(t.node("text"))[0].tags["dagster/data_version"]
    assert data_version == artifact.metadata["data_version"]


def test_image_partition_materializes(store_root, corpus):
    for i in range(5):
        store_root.put(f"raw/images/scans/page{i}.png", page(f"page {i}"))
    store_root.put("raw/images/scans/readme.txt", "not an image")
    t = corpus(IMAGE_MODEL)
    with dg.instance_for_test() as instance:
        result = t.materialize("images", "scans", instance)
    meta = metadata_of(result, t.node("images"))
    assert (meta["documents_embedded"], meta["files_skipped"]) == (5, 1)
    assert all(checks_of(result).values()) and len(checks_of(result)) == 4


def test_incremental_add_change_delete(store_root, corpus):
    for i in range(4):
        store_root.put(f"raw/text/b/doc{i}.txt", f"document number {i}")
    t = corpus()
    with dg.instance_for_test() as instance:
        t.materialize("text", "b", instance)
        assert len(COUNTER.inputs) == 4

        COUNTER.inputs.clear()
        result = t.materialize("text", "b", instance)
        assert COUNTER.inputs == [] and metadata_of(result, t.node("text"))["documents_reused"] == 4

        store_root.put("raw/text/b/new.txt", "a new document")
        result = t.materialize("text", "b", instance)
        assert COUNTER.inputs == ["a new document"]

        COUNTER.inputs.clear()
        store_root.put("raw/text/b/doc1.txt", "document one, changed")
        store_root.delete("raw/text/b/doc2.txt")
        result = t.materialize("text", "b", instance)
        assert COUNTER.inputs == ["document one, changed"]
    meta = metadata_of(result, t.node("text"))
    assert (meta["documents_total"], meta["documents_embedded"], meta["documents_reused"]) == (4, 1, 3)
    store = store_root.store()
    assert "doc2.txt" not in artifacts.read_artifact(store.fs, store.artifact_path("text", "b")).doc_ids
    assert all(checks_of(result).values())


def test_bad_documents_fail_the_check_not_the_others(store_root, corpus):
    store_root.put("raw/text/mixed/good.txt", "a perfectly good document")
    store_root.put("raw/text/mixed/latin1.txt", "caf\xe9".encode("latin-1"))
    store_root.put("raw/images/mixed/good.png", page("good"))
    store_root.put("raw/images/mixed/corrupt.png", page("bad")[:90])
    text, images = corpus(), corpus(IMAGE_MODEL)
    with dg.instance_for_test() as instance:
        text_result = text.materialize("text", "mixed", instance, raise_on_error=False)
        image_result = images.materialize("images", "mixed", instance, raise_on_error=False)
    for result, node, bad in ((text_result, text.node("text"), "latin1.txt"),
                              (image_result, images.node("images"), "corrupt.png")):
        assert not result.success  # the blocking failure check fails the run ...
        meta = metadata_of(result, node)  # ... after the others were embedded and published
        assert (meta["documents_embedded"], meta["documents_failed"]) == (1, 1)
        failures = {r.data["document"]: r.data["error"] for r in meta["failures"].records}
        assert list(failures) == [bad]
        checks = checks_of(result)
        assert checks["failures_within_threshold"] is False
    assert "not valid UTF-8" in str(text_result.all_events)


@pytest.mark.parametrize("where", ["corpus", "run_config"])
def test_failure_ratio_threshold_is_configurable(store_root, corpus, where):
    store_root.put("raw/text/t/good.txt", "fine")
    store_root.put("raw/text/t/empty.txt", "")
    strict = corpus()
    with dg.instance_for_test() as instance:
        assert not checks_of(strict.materialize("text", "t", instance, raise_on_error=False))[
            "failures_within_threshold"]  # the default allows no failure
        if where == "corpus":
            result = corpus(max_failure_ratio=0.5).materialize("text", "t", instance)
        else:
            override = dg.RunConfig(ops={strict.node("text"): EmbeddingConfig(max_failure_ratio=0.5)})
            result = strict.materialize("text", "t", instance, run_config=override)
    assert result.success and all(checks_of(result).values())


def test_checks_fail_on_a_hand_corrupted_artifact(store_root, corpus):
    for i in range(3):
        store_root.put(f"raw/text/c/doc{i}.txt", f"document {i}")
    store = store_root.store()
    path = store.artifact_path("text", "c")
    t = corpus()
    with dg.instance_for_test() as instance:
        t.materialize("text", "c", instance)
        table = pq.read_table(store.fs.open(path, "rb"))
        vectors = table.column("embedding").combine_chunks()
        flat = vectors.flatten().flatten().to_numpy().copy()
        flat[5] = np.nan
        bad_embedding = pa.ListArray.from_arrays(vectors.offsets, pa.FixedSizeListArray.from_arrays(pa.array(flat), 128))
        corrupted = table.set_column(table.schema.get_field_index("embedding"), table.schema.field("embedding"),
                                     bad_embedding).slice(0, 2)
        with store.fs.open(path, "wb") as handle:
            pq.write_table(corrupted.replace_schema_metadata(table.schema.metadata), handle)
        result = t.run_checks("text", "c", instance)
    checks = checks_of(result)
    assert checks == {"artifact_schema": True, "documents_accounted_for": False, "vectors_valid": False}


def test_the_vector_encoding_is_a_corpus_setting_and_the_checks_know_it(store_root, corpus):
    for i in range(3):
        store_root.put(f"raw/text/h/doc{i}.txt", f"document {i}")
    store = store_root.store()
    half = corpus(vector_encoding="float16")
    with dg.instance_for_test() as instance:
        result = half.materialize("text", "h", instance)
        assert result.success and all(checks_of(result).values()) and len(checks_of(result)) == 4
        assert metadata_of(result, half.node("text"))["vector_encoding"] == "float16"
        artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "h"), stored_dtype=True)
        assert artifact.vectors.dtype == np.float16 and artifact.metadata["vector_encoding"] == "float16"
        assert all(checks_of(half.run_checks("text", "h", instance)).values())  # its own checks agree
        # The checks of a corpus over the same root set to float32 (the default): not what it asks for.
        result = corpus().run_checks("text", "h", instance)
    [schema] = [e for e in result.get_asset_check_evaluations() if e.check_name == "artifact_schema"]
    assert not schema.passed and "stores float16 vectors" in schema.description
    assert checks_of(result) == {"artifact_schema": False, "documents_accounted_for": True, "vectors_valid": True}


def test_wrong_s3_credentials_give_a_clear_error(seaweedfs, s3_bucket):
    store = DocumentStore(f"s3://{s3_bucket}", endpoint_url=seaweedfs.endpoint_url, key=seaweedfs.access_key,
                          secret="not-the-secret")
    with pytest.raises(DocumentStoreError, match="denied.*AWS_SECRET_ACCESS_KEY") as info:
        store.list_sources("text", "any")
    assert "not-the-secret" not in str(info.value) and seaweedfs.endpoint_url in str(info.value)
