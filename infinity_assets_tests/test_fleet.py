"""A fleet of three real Infinity servers behind one client: spread, a replica killed mid-partition, a wrong model."""
from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from infinity_assets import InfinityEmbeddings, InfinityResponseError, artifacts
from infinity_assets.storage.documents import DocumentStore
from infinity_assets.pipeline import embed_partition

from infinity_assets_dev.infinity import InfinityServer

MODEL = "minilm-colbert"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three infinity_emb servers serving minilm-colbert, started in parallel."""
    log_dir = tmp_path_factory.mktemp("fleet-logs")
    servers = [InfinityServer([MODEL], log_dir=log_dir) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda server: server.start(), servers))
    yield servers
    for server in servers:
        server.stop()


def partition(tmp_path, documents: int = 120) -> DocumentStore:
    batch = tmp_path / "raw" / "text" / "b"
    batch.mkdir(parents=True)
    for i in range(documents):
        (batch / f"doc{i:03d}.txt").write_text(f"document {i} about topic {i % 7} and the number {i * 31}")
    return DocumentStore(str(tmp_path))


def client_for(urls: str) -> InfinityEmbeddings:
    return InfinityEmbeddings(url=urls, model_name=MODEL, hidden_dim=384, embed_batch_size=4, max_concurrency=3)


def test_a_replica_killed_mid_partition_loses_nothing(fleet, tmp_path):
    clean_store = partition(tmp_path / "clean")
    with InfinityEmbeddings(url=fleet[0].url, model_name=MODEL, hidden_dim=384) as client:
        embed_partition(clean_store, client, "text", "b")
    clean = artifacts.read_artifact(clean_store.fs, clean_store.artifact_path("text", "b"))

    store = partition(tmp_path / "fleet")
    victim = fleet[1]
    with client_for(",".join(s.url for s in fleet)) as client:
        replica = next(r for r in client.replicas.replicas if r.url == victim.url)

        def kill_after_some_requests() -> None:
            while replica.requests < 4:
                threading.Event().wait(0.01)
            os.killpg(victim.process.pid, signal.SIGKILL)  # dies mid-partition, connections and all

        killer = threading.Thread(target=kill_after_some_requests)
        killer.start()
        report = embed_partition(store, client, "text", "b")
        killer.join()
    victim.process.wait()
    victim.process = None
    assert report.failed == 0 and report.embedded == 120
    artifact = artifacts.read_artifact(store.fs, store.artifact_path("text", "b"))
    assert artifact.doc_ids == clean.doc_ids
    for i in range(len(artifact)):
        np.testing.assert_allclose(artifact.vectors_of(i), clean.vectors_of(i), rtol=1e-5, atol=1e-5)
    counts = {url: stats["requests"] for url, stats in report.replicas.items()}
    assert set(counts) == {s.url for s in fleet}
    assert all(count >= 4 for count in counts.values()), counts  # the load was spread over all three
    assert report.replicas[victim.url]["failures"] >= 1 and report.failovers >= 1
    victim.start()  # back for the next test


def test_a_replica_serving_another_model_is_a_clear_error_naming_it(fleet, start_infinity, tmp_path):
    other = start_infinity(["minilm-colbert-128"])
    with client_for(f"{fleet[0].url},{other.url}") as client:
        with pytest.raises(InfinityResponseError) as raised:
            client.embed_documents([f"text {i}" for i in range(8)])
    message = str(raised.value)
    assert other.url in message and "minilm-colbert-128" in message and "must serve the same model" in message
