"""Backfill runs: one run embeds a range of batches, each materialized, checked and versioned on its own.

Real Infinity server, a real Dagster instance; the run is started with the partition-range tags a backfill's
run gets (the daemon's part is in test_deployment.py); staleness is read from a real webserver, as the UI
shows it.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import pytest

from infinity_assets import artifacts, definitions
from infinity_assets.corpus import ClientSettings, CorpusSpec, StoreSettings
from infinity_assets.orchestration import build_corpus_definitions, provenance
from infinity_assets.orchestration.lineage import observation
from infinity_assets.orchestration.schedules import current_data_versions, materialized_data_versions
from infinity_assets.settings import corpus_from_env
from infinity_assets.storage.documents import DocumentStore
from infinity_assets_dev.ports import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = "minilm-colbert-128"
BATCHES = [f"batch-{i}" for i in range(6)]
BROKEN = "batch-3"
EMBEDDINGS, RAW = dg.AssetKey(["t", "text_embeddings"]), dg.AssetKey(["t", "raw_text_documents"])
#: The run tags of a backfill's run of a range of partitions (as the UI lists them on the run).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
#: What the UI asks the webserver for an asset's partitions' staleness.
STALENESS = """query Stale($path: [String!]!, $partitions: [String!]) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { staleStatusByPartition(partitions: $partitions) }
  }
}"""
#: A code location of the corpus of a ``Setup`` (its root and server formatted in).
LOCATION = """from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets_tests.test_backfill import corpus

defs = build_corpus_definitions(corpus({root!r}, {url!r}))
"""


def corpus(root: str, url: str) -> CorpusSpec:
    """The corpus ``t``: text batches under ``root``, embedded by the server at ``url``."""
    return CorpusSpec(name="t", store=StoreSettings(root=root),
                      text=ClientSettings(url=url, model_name=MODEL, hidden_dim=128))


@dataclass
class Setup:
    """A corpus ``t`` of six text batches (one cannot be published), observed as the sensor would."""

    spec: CorpusSpec
    defs: dg.Definitions
    instance: dg.DagsterInstance
    store: DocumentStore
    root: Path
    home: Path  # the instance's DAGSTER_HOME

    def assets(self) -> list:
        """The raw documents, the embeddings and their checks (what a backfill run of the asset loads)."""
        checks = [c for c in self.defs.asset_checks or []
                  if {k.asset_key for k in c.check_keys} == {EMBEDDINGS}]
        return [self.defs.resolve_assets_def(RAW), self.defs.get_assets_def(EMBEDDINGS), *checks]

    def current(self) -> dict[str, str]:
        return current_data_versions(self.store, "text", self.spec.text, self.spec.vector_encoding)

    def observe(self, batches: list[str]) -> None:
        """Report the batches' raw data versions, as the sensor does."""
        modality = self.spec.modality("text")
        for batch, version in self.current().items():
            if batch in batches:
                self.instance.report_runless_asset_event(observation(modality, batch, version, 2))


@pytest.fixture
def setup(tmp_path, infinity_server):
    root = tmp_path / "store"
    for batch in BATCHES:
        folder = root / "raw" / "text" / batch
        folder.mkdir(parents=True)
        for name in ("one", "two"):
            (folder / f"{name}.txt").write_text(f"{name} document of {batch}")
    # A real fault for one batch only: its artifact cannot be published (a folder holds its place).
    (root / "embeddings" / "text" / f"{BROKEN}.parquet").mkdir(parents=True)
    (root / "embeddings" / "text" / f"{BROKEN}.parquet" / "keep").write_text("")
    spec = corpus(str(root), infinity_server.url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions(spec.modality("text").partitions_name, BATCHES)
        setup = Setup(spec, build_corpus_definitions(spec), instance, spec.build_store(), root, home)
        setup.observe(BATCHES)
        yield setup


@contextmanager
def webserver(setup: Setup, tmp_path: Path) -> Iterator[str]:
    """A real ``dagster-webserver`` on the setup's instance serving its corpus; yields its URL."""
    location = tmp_path / "location.py"
    location.write_text(LOCATION.format(root=str(setup.root), url=setup.spec.text.url))
    url = f"http://127.0.0.1:{free_port()}"
    with open(tmp_path / "webserver.log", "wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1",
                                    "-p", url.rsplit(":", 1)[1], "-f", str(location)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "DAGSTER_HOME": str(setup.home)})
    try:
        deadline = time.monotonic() + 180
        while not _answers(url):
            assert process.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "webserver.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _answers(url: str) -> bool:
    """Whether the webserver at ``url`` answers GraphQL with its code location loaded."""
    try:
        return stale_statuses(url, BATCHES[:1]) is not None
    except (httpx.HTTPError, KeyError, TypeError):
        return False


def stale_statuses(url: str, batches: list[str]) -> list[str] | None:
    """The staleness of the embeddings' ``batches`` that the UI shows (``FRESH``, ``STALE``, ``MISSING``)."""
    response = httpx.post(f"{url}/graphql", timeout=60, json={
        "query": STALENESS, "variables": {"path": EMBEDDINGS.path, "partitions": batches}})
    response.raise_for_status()
    return response.json()["data"]["assetNodeOrError"]["staleStatusByPartition"]


def backfill_run(setup: Setup, first: str, last: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(setup.assets(), instance=setup.instance, raise_on_error=False,
                          selection=dg.AssetSelection.assets(EMBEDDINGS),
                          tags={RANGE_START: first, RANGE_END: last})


def test_a_range_run_materializes_each_batch_once_and_fails_only_the_broken_one(setup):
    store = setup.store
    result = backfill_run(setup, BATCHES[0], BATCHES[-1])

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.cause.message  # the asset's own error, under Dagster's wrapper
    assert "1 of 6 batches could not be embedded" in message and BROKEN in message
    materialized = {m.partition: m for m in result.asset_materializations_for_node("t__text_embeddings")}
    good = [b for b in BATCHES if b != BROKEN]
    assert sorted(materialized) == good  # one event per batch, none for the broken one
    for batch in good:
        metadata = materialized[batch].metadata
        assert metadata["documents_embedded"].value == 2 and metadata["documents_failed"].value == 0
        assert metadata["artifact_uri"].value.endswith(f"embeddings/text/{batch}.parquet")
        assert sorted(artifacts.read_artifact(store.fs, store.artifact_path("text", batch)).doc_ids) == [
            "one.txt", "two.txt"]
    assert not store.fs.exists(store.artifact_path("text", BROKEN) + "/one.txt")

    # Each batch's own data version: the incremental schedule sees the five as done and only the broken one stale.
    current = setup.current()
    recorded = materialized_data_versions(setup.instance, EMBEDDINGS, BATCHES)
    assert {b for b in BATCHES if recorded.get(b) != current[b]} == {BROKEN}

    # The artifact checks were evaluated per batch by the run (their own steps have no single partition).
    evaluations = [e for e in result.get_asset_check_evaluations() if e.partition is not None]
    assert {(e.check_name, e.partition) for e in evaluations} == {
        (c, b) for c in ("artifact_schema", "documents_accounted_for", "vectors_valid") for b in good}
    assert all(e.passed for e in evaluations)
    [blocking] = [e for e in result.get_asset_check_evaluations() if e.check_name == "failures_within_threshold"]
    assert blocking.passed and "0 of 10 documents of 5 batches failed" in blocking.description


def test_a_batch_embedded_by_a_range_run_goes_stale_like_one_embedded_alone(setup, tmp_path):
    root = setup.root
    (root / "embeddings" / "text" / f"{BROKEN}.parquet" / "keep").unlink()
    (root / "embeddings" / "text" / f"{BROKEN}.parquet").rmdir()
    assert backfill_run(setup, BATCHES[0], BATCHES[2]).success
    assert dg.materialize(setup.assets(), instance=setup.instance, partition_key=BATCHES[3],
                          selection=dg.AssetSelection.assets(EMBEDDINGS)).success
    with webserver(setup, tmp_path) as url:  # what the UI shows
        assert stale_statuses(url, BATCHES[:5]) == ["FRESH"] * 4 + ["MISSING"]
        (root / "raw" / "text" / BATCHES[1] / "one.txt").write_text("changed")
        (root / "raw" / "text" / BATCHES[3] / "one.txt").write_text("changed")
        setup.observe([BATCHES[1], BATCHES[3]])
        assert stale_statuses(url, BATCHES[:4]) == ["FRESH", "STALE", "FRESH", "STALE"]


def test_partitions_per_backfill_run_is_a_corpus_setting(tmp_path):
    spec = CorpusSpec(name="t", store=StoreSettings(root=str(tmp_path)), text=ClientSettings(),
                      backfill_partitions_per_run=25)
    asset = build_corpus_definitions(spec).get_assets_def(EMBEDDINGS)
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(25)
    with pytest.raises(ValueError, match="backfill_partitions_per_run=0: must be at least 1"):
        CorpusSpec(name="t", store=StoreSettings(root=str(tmp_path)), text=ClientSettings(),
                   backfill_partitions_per_run=0)


def test_partitions_per_backfill_run_of_the_env_configured_corpus(monkeypatch, tmp_path):
    monkeypatch.setenv("INFINITY_ASSETS_ROOT", str(tmp_path))
    monkeypatch.delenv("INFINITY_BACKFILL_PARTITIONS_PER_RUN", raising=False)
    assert corpus_from_env().backfill_partitions_per_run == 100
    monkeypatch.setenv("INFINITY_BACKFILL_PARTITIONS_PER_RUN", "25")
    assert corpus_from_env().backfill_partitions_per_run == 25
    asset = definitions.defs().get_assets_def(dg.AssetKey(["default", "text_embeddings"]))
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(25)
    for bad in ("0", "ten"):
        monkeypatch.setenv("INFINITY_BACKFILL_PARTITIONS_PER_RUN", bad)
        with pytest.raises(ValueError, match=f"INFINITY_BACKFILL_PARTITIONS_PER_RUN must be a whole number "
                                             f">= 1, got '{bad}'"):
            corpus_from_env()
    # Read when the location loads, not at import: the module imports, loading names the variable.
    reloaded = importlib.reload(definitions)
    with pytest.raises(ValueError, match="INFINITY_BACKFILL_PARTITIONS_PER_RUN"):
        reloaded.defs()


def test_provenance_tags_match_dagster():
    """Backfill runs write the data-version tags themselves (orchestration/provenance.py): its names are those
    of Dagster's private data-versioning module, and a materialization gets the same tags as from Dagster's
    own output path, with the same values but one.

    The exception is Dagster's, on purpose kept: for a partitioned upstream Dagster records the hash of the
    upstream partitions' *materialization* versions (sha256 of nothing for a source that is only observed,
    its data_version_cache says so), while a backfill batch records its batch's observed digest.
    """
    from dagster._core.definitions import data_version as dagster_versions

    assert (provenance.DATA_VERSION_TAG, provenance.CODE_VERSION_TAG,
            provenance.DATA_VERSION_IS_USER_PROVIDED_TAG, provenance.INPUT_DATA_VERSION_PREFIX,
            provenance.INPUT_EVENT_POINTER_PREFIX) == (
        dagster_versions.DATA_VERSION_TAG, dagster_versions.CODE_VERSION_TAG,
        dagster_versions.DATA_VERSION_IS_USER_PROVIDED_TAG, dagster_versions.INPUT_DATA_VERSION_TAG_PREFIX,
        dagster_versions.INPUT_EVENT_POINTER_TAG_PREFIX)
    assert provenance.INITIAL_DATA_VERSION == dagster_versions.DEFAULT_DATA_VERSION.value
    assert provenance.NULL_EVENT_POINTER == dagster_versions.NULL_EVENT_POINTER

    partitions = dg.DynamicPartitionsDefinition(name="t_text_batches")

    @dg.asset(key=EMBEDDINGS, deps=[RAW], partitions_def=partitions, code_version="7")
    def made_by_dagster() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion("v1"))

    defs = dg.Definitions(assets=[dg.AssetSpec(RAW, partitions_def=partitions), made_by_dagster])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["b"])
        instance.report_runless_asset_event(dg.AssetObservation(RAW, partition="b",
                                                                tags={provenance.DATA_VERSION_TAG: "d1"}))
        job = defs.resolve_implicit_global_asset_job_def()  # as a code location runs it
        result = job.execute_in_process(instance=instance, partition_key="b", asset_selection=[EMBEDDINGS])
        [materialization] = result.asset_materializations_for_node(made_by_dagster.op.name)
        written = {k: v for k, v in materialization.tags.items() if k != "dagster/partition"}
        ours = provenance.materialization_tags(instance, RAW, "b", "v1", "7")
    input_version = f"{provenance.INPUT_DATA_VERSION_PREFIX}/t/raw_text_documents"
    assert set(ours) == set(written)
    assert {k: v for k, v in ours.items() if k != input_version} == {
        k: v for k, v in written.items() if k != input_version}
    assert ours[input_version] == "d1" and written[input_version] == hashlib.sha256(b"").hexdigest()
