"""The index assets, the retrieval quality check, the `infinity-assets search` CLI and the raw-document lineage,
with the real Infinity server (real MiniLM weights) and a real Dagster materialization."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import dagster as dg

from infinity_assets.corpus import ClientSettings, CorpusSpec, IndexSettings
from infinity_assets.index import SearchSettings
from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.orchestration.index_assets import QualityConfig, quality_result

from .servers.seaweedfs_fixtures import StoreRoot
from .test_search import DOCUMENTS

REPO = Path(__file__).resolve().parents[1]
EMBEDDINGS, INDEX = dg.AssetKey(["t", "text_embeddings"]), dg.AssetKey(["t", "text_index"])
RAW = dg.AssetKey(["t", "raw_text_documents"])
GOOD_SET = [{"query": " ".join(text.split()[2:7]), "relevant": [f"doc-{i:02d}.txt"]}
            for i, text in enumerate(DOCUMENTS)]


def text_corpus(root: StoreRoot, url: str, model: str, hidden_dim: int,
                index: IndexSettings | None = None) -> tuple[CorpusSpec, dg.Definitions]:
    """A text corpus ``t`` over ``root`` embedded with ``model`` by the server at ``url`` (``index``: its index
    settings, default the defaults); its definitions."""
    spec = root.corpus(text=ClientSettings(url=url, model_name=model, hidden_dim=hidden_dim),
                       index=index or IndexSettings())
    return spec, build_corpus_definitions(spec)


def index_and_quality(defs: dg.Definitions) -> list:
    """The text index asset and its retrieval quality check."""
    return [defs.get_assets_def(INDEX),
            defs.get_asset_checks_def(dg.AssetCheckKey(INDEX, "retrieval_quality"))]


def embed_and_index(root: StoreRoot, infinity_server, model: str, hidden_dim: int,
                    extra: dict[str, str] | None = None,
                    index: IndexSettings | None = None) -> dg.ExecuteInProcessResult:
    """Embed DOCUMENTS (and ``extra`` documents, by file name) as one batch with ``model``, then materialize
    t/text_index and its quality check (``index``: the corpus's index settings)."""
    root.put_many({f"raw/text/all/doc-{i:02d}.txt": text for i, text in enumerate(DOCUMENTS)})
    root.put_many({f"raw/text/all/{name}": text for name, text in (extra or {}).items()})
    root.put("eval/text.jsonl", "\n".join(json.dumps(item) for item in GOOD_SET))
    _, defs = text_corpus(root, infinity_server.url, model, hidden_dim, index)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["all"])
        dg.materialize([defs.get_assets_def(EMBEDDINGS)], partition_key="all", instance=instance)
        return dg.materialize(index_and_quality(defs), instance=instance, raise_on_error=False)


def quality_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_quality_check_passes_on_a_good_labelled_set(tmp_path, infinity_server):
    result = embed_and_index(StoreRoot(str(tmp_path / "store")), infinity_server, "minilm-colbert", 384)
    evaluation = quality_of(result)
    metadata = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.passed, evaluation.description
    assert metadata["recall_at_10"] >= 0.9 and metadata["mrr_at_10"] >= 0.8 and metadata["ndcg_at_5"] >= 0.8
    assert metadata["queries"] == len(DOCUMENTS)
    index_meta = result.asset_materializations_for_node("t__text_index")[0].metadata
    assert index_meta["dagster/row_count"].value == len(DOCUMENTS) and index_meta["inserted"].value == len(DOCUMENTS)
    lineage = index_meta["dagster/column_lineage"].value.deps_by_column
    assert lineage["embedding"][0].asset_key == EMBEDDINGS
    assert lineage["bits"][0].column_name == "embedding"


def test_quality_check_searches_with_the_corpus_search_settings_not_the_environment(tmp_path, infinity_server,
                                                                                    monkeypatch):
    monkeypatch.setenv("INFINITY_ASSETS_SEARCH_FDE_CANDIDATES", "many")  # a check reading it would fail
    search = SearchSettings(fde_candidates=500, hamming_candidates=40, pooled_candidates=20)
    result = embed_and_index(StoreRoot(str(tmp_path / "store")), infinity_server, "minilm-colbert", 384,
                             index=IndexSettings(search=search))
    evaluation = quality_of(result)
    assert evaluation.passed, evaluation.description
    assert evaluation.metadata["search_settings"].value == asdict(search)


#: 1,100 more documents, so the index holds more than stages 2 and 3 keep (150, 30) and the drift measurement
#: prunes there: sentences of the retrieval set's own words, 12 to a document.
WORDS = sorted({w.strip(".,;:") for text in DOCUMENTS for w in text.split() if len(w) > 3})
FILLER = {f"filler-{i:04d}.txt": " ".join(WORDS[(i * 37 + j * 101) % len(WORDS)] for j in range(12)) + "."
          for i in range(1_100)}


def test_index_metadata_reports_bytes_per_page_stage_settings_and_recall_against_exact(tmp_path, infinity_server):
    result = embed_and_index(StoreRoot(str(tmp_path / "store")), infinity_server, "minilm-colbert", 384, FILLER)
    [materialization] = result.asset_materializations_for_node("t__text_index")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    by_column = metadata["bytes_per_page_by_column"]
    assert by_column["fde"] == 1280 and 0 < by_column["bits"] < by_column["embedding"], by_column  # 20 x 32 x 16 bits
    assert by_column["bits"] < by_column["pooled"] < by_column["embedding"], by_column  # int8 pooled tokens
    assert metadata["bytes_per_page"] >= metadata["bytes_per_page_stages_1_2"] > 0
    assert metadata["encoding"]["fde_repetitions"] == 20 and metadata["encoding"]["originals"] == "float16"
    assert metadata["search_settings"] == {"fde_shortlist": 4000, "fde_candidates": 1500, "hamming_candidates": 150,
                                           "pooled_candidates": 30, "fde_agreement": 0.9, "fde_probes": 0}
    assert metadata["dagster/row_count"] == len(DOCUMENTS) + len(FILLER) > 1000  # more than stages 2 and 3 keep (150, 30)
    assert metadata["drift_queries"] == 32 and metadata["drift_exact_queries"] >= 8
    assert metadata["drift_recall_at_10"] >= 0.9  # the stages prune: 150 then 30 of 1,130 documents
    assert metadata["drift_known_item_at_10"] >= 0.9
    # what each stage kept of the exact top 10: the first keeps every document (1,130 < 1,500)
    assert metadata["drift_kept_by_fde_at_10"] == 1.0
    assert 1.0 >= metadata["drift_kept_by_hamming_at_10"] >= metadata["drift_kept_by_pooled_at_10"] \
        >= metadata["drift_recall_at_10"]


def test_quality_check_fails_when_the_index_was_built_with_the_wrong_model(tmp_path, infinity_server):
    # The index was built with colpali-tiny (random weights, 128-d) while queries use the real MiniLM weights
    # projected to 128-d: same size, so the check measures it, and the metrics collapse.
    root = StoreRoot(str(tmp_path / "store"))
    embed_and_index(root, infinity_server, "colpali-tiny", 128)
    query_model = ClientSettings(url=infinity_server.url, model_name="minilm-colbert-128", hidden_dim=128)
    result = quality_result(root.store(), query_model, "text", QualityConfig(), SearchSettings())
    assert not result.passed
    assert "below thresholds" in result.description and "built with model 'colpali-tiny'" in result.description
    assert result.metadata["mrr_at_10"].value < 0.5


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infinity_assets.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_cli_search_answers_from_the_index_on_seaweedfs(seaweedfs, s3_bucket, infinity_server):
    root = StoreRoot(f"s3://{s3_bucket}/docs", seaweedfs.storage_options())
    env = {**seaweedfs.environment(), "INFINITY_ASSETS_ROOT": root.url, "INFINITY_API_URL": infinity_server.url,
           "INFINITY_MODEL": "minilm-colbert", "INFINITY_HIDDEN_DIM": "384"}
    missing = cli(["search", "comet"], env)
    assert missing.returncode == 1 and "no text index" in missing.stderr and "text_index" in missing.stderr
    embed_and_index(root, infinity_server, "minilm-colbert", 384)

    found = cli(["search", "faint comet passing close to jupiter", "--k", "3"], env)
    assert found.returncode == 0, found.stderr
    assert "doc-07.txt" in found.stdout.splitlines()[0] and "astronomers detected a faint comet" in found.stdout
    verbose = cli(["search", "faint comet passing close to jupiter", "--k", "3", "--verbose"], env)
    assert verbose.returncode == 0 and verbose.stdout == found.stdout, verbose.stderr
    assert re.search(r"search stages: fde [\d.]+ ms  hamming [\d.]+ ms  pooled [\d.]+ ms  rerank [\d.]+ ms  "
                     r"total [\d.]+ ms  embed [\d.]+ ms; candidates kept: shortlist 30, fde 30, hamming 30, pooled 30",
                     verbose.stderr), verbose.stderr
    fewer = cli(["search", "faint comet passing close to jupiter", "--k", "3", "--verbose"],
                {**env, "INFINITY_ASSETS_SEARCH_HAMMING_CANDIDATES": "5"})
    assert "candidates kept: shortlist 30, fde 30, hamming 5, pooled 5" in fewer.stderr, fewer.stderr
    bad = cli(["search", "comet", "--verbose"], {**env, "INFINITY_ASSETS_SEARCH_HAMMING_CANDIDATES": "few"})
    assert bad.returncode == 1 and "INFINITY_ASSETS_SEARCH_HAMMING_CANDIDATES='few'" in bad.stderr, bad.stderr
    exact = cli(["search", "faint comet passing close to jupiter", "--k", "3", "--exact", "--verbose"], env)
    assert exact.stdout.splitlines()[0] == found.stdout.splitlines()[0] and "exact " in exact.stderr
    lines = [json.loads(line) for line in cli(["search", "comet near jupiter", "--json"], env).stdout.splitlines()]
    assert len(lines) == 5 and lines[0]["doc_id"] == "doc-07.txt"
    assert {"doc_id", "score", "source_uri", "page"} <= set(lines[0])

    wrong = cli(["search", "comet"], {**env, "INFINITY_MODEL": "minilm-colbert-128", "INFINITY_HIDDEN_DIM": "128"})
    assert wrong.returncode == 1 and "built with model 'minilm-colbert'" in wrong.stderr


def test_sensor_observes_each_requested_batch_with_its_digest(tmp_path):
    root = StoreRoot(str(tmp_path / "store"))
    root.put_many({"raw/text/b1/a.txt": "alpha", "raw/images/scans/p.png": b"\x89PNG"})
    spec = root.corpus(text=ClientSettings(), images=ClientSettings())
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance)
        result = build_corpus_definitions(spec).resolve_sensor_def("t_new_documents_sensor")(context)
    requests = {r.partition_key: r.tags["infinity_assets/source_digest"] for r in result.run_requests}
    observed = {(e.asset_key.to_user_string(), e.partition): e.tags["dagster/data_version"]
                for e in result.asset_events}
    assert observed == {("t/raw_text_documents", "b1"): requests["b1"],
                        ("t/raw_image_documents", "scans"): requests["scans"]}


def test_embeddings_record_the_raw_batch_version_they_were_made_from(tmp_path, infinity_server):
    """The provenance Dagster compares with the latest observation to show a batch as stale."""
    root = StoreRoot(str(tmp_path / "store"))
    root.put("raw/text/b/a.txt", "the lighthouse keeper painted the staircase")
    _, defs = text_corpus(root, infinity_server.url, "minilm-colbert", 384)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["b"])
        instance.report_runless_asset_event(dg.AssetObservation(
            RAW, partition="b", tags={"dagster/data_version": "digest-1"}))
        result = dg.materialize([defs.get_assets_def(EMBEDDINGS)], partition_key="b", instance=instance)
    tags = result.asset_materializations_for_node("t__text_embeddings")[0].tags
    assert tags["dagster/input_data_version/t/raw_text_documents"] == "digest-1"


def automation_defs(tmp_path) -> dg.Definitions:
    """The definitions of a text corpus ``t`` (no server is contacted: conditions are evaluated, not run)."""
    return text_corpus(StoreRoot(str(tmp_path)), "http://unused:7997", "m", 128)[1]


def test_index_sync_is_requested_after_embeddings_change_and_not_again(tmp_path):
    defs = automation_defs(tmp_path)
    selection = dg.AssetSelection.assets(INDEX)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["b"])
        nothing = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        assert nothing.get_num_requested(INDEX) == 0  # no embeddings: nothing to index
        instance.report_runless_asset_event(dg.AssetMaterialization(EMBEDDINGS, partition="b"))
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                  cursor=nothing.cursor)
        assert first.get_num_requested(INDEX) == 1  # never synced yet
        instance.report_runless_asset_event(dg.AssetMaterialization(INDEX))
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                  cursor=first.cursor)
        assert quiet.get_num_requested(INDEX) == 0
        instance.report_runless_asset_event(dg.AssetMaterialization(EMBEDDINGS, partition="b"))
        changed = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                    cursor=quiet.cursor)
        assert changed.get_num_requested(INDEX) == 1


def test_index_never_built_is_synced_once_for_embeddings_made_before_the_automation_ran(tmp_path):
    defs = automation_defs(tmp_path)
    selection = dg.AssetSelection.assets(INDEX)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("t_text_batches", ["b"])
        instance.report_runless_asset_event(dg.AssetMaterialization(EMBEDDINGS, partition="b"))
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        assert first.get_num_requested(INDEX) == 1
        again = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                  cursor=first.cursor)
        assert again.get_num_requested(INDEX) == 0  # requested once, not every tick


def test_an_index_follows_only_its_own_corpus(tmp_path):
    """Embeddings of another corpus in the same Definitions do not request a sync of this corpus's index."""
    other = CorpusSpec(name="u", store=StoreRoot(str(tmp_path / "u")).settings(),
                       text=ClientSettings(model_name="m"))
    defs = dg.Definitions.merge(automation_defs(tmp_path / "t"), build_corpus_definitions(other))
    selection = dg.AssetSelection.assets(INDEX, dg.AssetKey(["u", "text_index"]))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("u_text_batches", ["b"])
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["u", "text_embeddings"]),
                                                                    partition="b"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert result.get_num_requested(INDEX) == 0
    assert result.get_num_requested(dg.AssetKey(["u", "text_index"])) == 1


def test_quality_check_on_an_empty_index_passes_and_says_nothing_was_measured(tmp_path, infinity_server):
    """A fresh deployment with labelled queries but no embeddings yet: an empty index is not a quality failure."""
    root = StoreRoot(str(tmp_path / "store"))
    root.put("eval/text.jsonl", "\n".join(json.dumps(item) for item in GOOD_SET))
    _, defs = text_corpus(root, infinity_server.url, "minilm-colbert", 384)
    with dg.instance_for_test() as instance:
        result = dg.materialize(index_and_quality(defs), instance=instance)
    assert result.asset_materializations_for_node("t__text_index")[0].metadata["dagster/row_count"].value == 0
    evaluation = quality_of(result)
    assert evaluation.passed and "holds no documents yet" in evaluation.description, evaluation.description
