"""InfinityResource and the env-configured corpus: settings from Dagster config and environment variables."""
from __future__ import annotations

import dagster as dg
import pytest

from infinity_assets import InfinityEmbeddings, InfinityResource
from infinity_assets.testing.fake_infinity import FakeInfinity


def test_resource_is_importable_from_package():
    import infinity_assets

    assert infinity_assets.InfinityResource is InfinityResource


def test_environment_fills_unset_fields(monkeypatch):
    monkeypatch.setenv("INFINITY_API_URL", "http://env-host:1111")
    monkeypatch.setenv("INFINITY_MODEL", "env-model")
    monkeypatch.setenv("INFINITY_HIDDEN_DIM", "auto")
    monkeypatch.setenv("INFINITY_BATCH_SIZE", "7")
    monkeypatch.setenv("INFINITY_MAX_CONCURRENCY", "2")
    monkeypatch.setenv("INFINITY_API_KEY", "env-secret")
    client = InfinityResource(timeout=5.0).build_client()
    assert (client.url, client.model_name, client.hidden_dim) == ("http://env-host:1111", "env-model", None)
    assert (client.embed_batch_size, client.max_concurrency, client.timeout) == (7, 2, 5.0)
    assert client._headers["Authorization"] == "Bearer env-secret"


def test_explicit_config_wins_over_environment(monkeypatch):
    monkeypatch.setenv("INFINITY_API_URL", "http://env-host:1111")
    monkeypatch.setenv("INFINITY_ENCODING", "float")
    client = InfinityResource(url="http://cfg:2222", encoding="base64", hidden_dim=384).build_client()
    assert (client.url, client.encoding, client.hidden_dim) == ("http://cfg:2222", "base64", 384)


def test_defaults_without_environment(monkeypatch):
    for name in ("INFINITY_API_URL", "INFINITY_MODEL", "INFINITY_HIDDEN_DIM", "INFINITY_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    client = InfinityResource().build_client()
    assert (client.url, client.model_name, client.hidden_dim, client.encoding) == (
        "http://localhost:7997", "michaelfeil/colqwen2-v0.1", 128, "base64")


def test_env_prefix_reads_its_own_variables_first(monkeypatch):
    monkeypatch.setenv("INFINITY_MODEL", "shared-model")
    monkeypatch.setenv("INFINITY_API_URL", "http://shared:1")
    monkeypatch.setenv("INFINITY_IMAGE_MODEL", "image-model")
    client = InfinityResource(env_prefix="INFINITY_IMAGE_").build_client()
    assert (client.model_name, client.url) == ("image-model", "http://shared:1")
    assert InfinityResource().build_client().model_name == "shared-model"


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("INFINITY_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="INFINITY_TIMEOUT='soon'"):
        InfinityResource().build_client()


def test_env_var_config_is_resolved_at_run_time_and_client_is_closed(monkeypatch):
    fake = FakeInfinity(model="m", api_key="run-time-secret")
    seen: dict[str, InfinityEmbeddings] = {}

    class FakeNetworkResource(InfinityResource):
        def build_client(self) -> InfinityEmbeddings:
            return InfinityEmbeddings(**self.effective_settings(), transport=fake.transport())

    @dg.asset
    def embedded(infinity: InfinityResource) -> None:
        client = infinity.get_client()
        seen["client"] = client
        assert client.embed_text("a b").shape == (4, 128)

    monkeypatch.setenv("MY_KEY", "run-time-secret")
    resource = FakeNetworkResource(url="http://fake", model_name="m", api_key=dg.EnvVar("MY_KEY"))
    result = dg.materialize([embedded], resources={"infinity": resource})
    assert result.success
    assert seen["client"]._http is None  # closed in teardown_after_execution
    logs = "\n".join(str(e) for e in result.all_events)
    assert "run-time-secret" not in logs


# --- corpus_from_env: the env-configured corpus of infinity_assets.definitions, read when the location loads
def test_the_env_corpus_reads_each_modality_and_the_corpus_settings(monkeypatch, tmp_path):
    from infinity_assets.settings import corpus_from_env

    monkeypatch.setenv("INFINITY_ASSETS_ROOT", str(tmp_path))
    monkeypatch.setenv("INFINITY_MODEL", "text-model")
    monkeypatch.setenv("INFINITY_IMAGE_MODEL", "image-model")
    monkeypatch.setenv("INFINITY_API_URL", "http://shared:1")
    monkeypatch.setenv("INFINITY_HIDDEN_DIM", "auto")
    monkeypatch.setenv("INFINITY_ASSETS_VECTOR_ENCODING", "float16")
    monkeypatch.setenv("INFINITY_PDF_DPI", "72")
    spec = corpus_from_env("default")
    assert (spec.name, spec.store.root) == ("default", str(tmp_path))
    assert (spec.vector_encoding, spec.pdf.dpi) == ("float16", 72)
    assert (spec.text.model_name, spec.images.model_name) == ("text-model", "image-model")
    assert spec.text.url == spec.images.url == "http://shared:1" and spec.text.hidden_dim is None


@pytest.mark.parametrize(("variable", "value"), [
    ("INFINITY_BACKFILL_PARTITIONS_PER_RUN", "0"), ("INFINITY_TIMEOUT", "soon"),
    ("INFINITY_IMAGE_HIDDEN_DIM", "wide"), ("INFINITY_ASSETS_VECTOR_ENCODING", "int3"),
    ("INFINITY_PDF_DPI", "high")])
def test_a_bad_value_of_the_env_corpus_names_its_variable(monkeypatch, tmp_path, variable, value):
    from infinity_assets.settings import corpus_from_env

    monkeypatch.setenv("INFINITY_ASSETS_ROOT", str(tmp_path))
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        corpus_from_env()
