"""Search quality on real pages: two-stage retrieval against exact MaxSim, with the real server and real PDFs.

The first page (of at least 30 words) of each of the ~270 PDFs of Debian's ``texlive-latex-base-doc``
(``apt-get download`` in the fixture, cached under ``.cache/bench/``; apt being unavailable is a setup error,
not a skip), embedded by the real CPU Infinity server (minilm-colbert-128), written as an artifact and synced
into an index; the labelled documents of the retrieval check are indexed beside them. Known-item queries are
sentences of 8-20 words lying inside the part of a page the model reads.
"""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from benchmarks import corpora
from infinity_assets import InfinityEmbeddings
from infinity_assets.artifacts import ArtifactWriter
from infinity_assets.index import IndexReader, sync_index
from infinity_assets.index.evaluation import ndcg_at
from infinity_assets.storage.documents import DocumentStore

from .test_search import DOCUMENTS

pytestmark = pytest.mark.slow
MODEL, DIM = "minilm-colbert-128", 128
QUERIES = 120


@pytest.fixture(scope="module")
def real_index(tmp_path_factory, infinity_server):
    """(store, known-item queries [(doc_id, sentence, vectors)], labelled queries [(doc_id, vectors)])."""
    pages = corpora.texlive_texts(per_pdf=1)  # apt-get download + dpkg-deb -x on first use
    prefixes = corpora.embedded_prefixes([text for _, text in pages])
    labelled = [(f"labelled-{i:02d}", text) for i, text in enumerate(DOCUMENTS)]
    documents = pages + labelled
    root = tmp_path_factory.mktemp("quality")
    store = DocumentStore(str(root))
    store.ensure_artifact_dir("text")
    rng = np.random.default_rng(5)
    with InfinityEmbeddings(url=infinity_server.url, model_name=MODEL, hidden_dim=DIM, embed_batch_size=16) as client:
        vectors = client.embed_documents_batch([text for _, text in documents])
        with ArtifactWriter(store.fs, store.artifact_path("text", "texlive"), hidden_dim=DIM,
                            metadata={"model": MODEL, "partition": "texlive"}) as writer:
            for (doc_id, _), embedding in zip(documents, vectors):
                writer.write(doc_id, f"texlive://{doc_id}", f"fp-{doc_id}", embedding)
        known = []
        for number in rng.permutation(len(pages))[:QUERIES]:
            sentence = corpora._sentence(prefixes[number], rng)
            if sentence:
                known.append((pages[number][0], sentence, client.embed_query(sentence)))
        labelled_queries = [(doc_id, client.embed_query(" ".join(text.split()[2:7]))) for doc_id, text in labelled]
    report = sync_index(store, "text")
    assert report.rows == len(documents), report
    return store, known, labelled_queries


def test_two_stage_recall_at_10_against_exact_on_real_pages(real_index):
    store, known, _ = real_index
    reader = IndexReader(store, "text")
    recalls, ranks = [], []
    for doc_id, _, query in known:
        exact = [h.doc_id for h in reader.search(query, 10, exact=True)]
        staged = [h.doc_id for h in reader.search(query, 10)]
        recalls.append(len(set(exact) & set(staged)) / 10)
        ranks.append(staged.index(doc_id) + 1 if doc_id in staged else None)
    recall = statistics.mean(recalls)
    hit = sum(r is not None for r in ranks) / len(ranks)
    mrr = statistics.mean(1 / r if r else 0.0 for r in ranks)
    print(json.dumps({"pages": reader.rows, "queries": len(known), "recall_at_10": recall,
                      "known_hit_at_10": hit, "known_mrr_at_10": mrr}))
    assert len(known) >= 100, f"only {len(known)} sentence queries could be drawn"
    assert recall >= 0.95, f"two-stage recall@10 against exact {recall:.3f} < 0.95 over {len(known)} queries"


def test_two_stage_returns_exact_scores_for_what_it_returns(real_index):
    store, known, _ = real_index
    reader = IndexReader(store, "text")
    for _, _, query in known[:20]:
        exact = {h.doc_id: h.score for h in reader.search(query, 50, exact=True)}
        for hit in reader.search(query, 10):
            assert hit.doc_id in exact, f"{hit.doc_id} is not in the exact top 50"
            assert hit.score == pytest.approx(exact[hit.doc_id], abs=1e-3)


def test_two_stage_ndcg_at_5_on_the_labelled_set_is_within_001_of_exact(real_index):
    store, _, labelled = real_index
    reader = IndexReader(store, "text")

    def ndcg(exact: bool) -> float:
        return statistics.mean(ndcg_at([h.doc_id for h in reader.search(q, 5, exact=exact)], frozenset([d]), 5)
                               for d, q in labelled)

    exact, staged = ndcg(True), ndcg(False)
    print(json.dumps({"labelled_queries": len(labelled), "ndcg_at_5_exact": exact, "ndcg_at_5_two_stage": staged}))
    assert exact >= 0.8, f"exact nDCG@5 {exact:.3f}: the labelled set no longer finds its documents"
    assert staged >= exact - 0.01, f"two-stage nDCG@5 {staged:.3f} < exact {exact:.3f} - 0.01"
