"""``make bench`` section ``service``: `infinity-assets serve` against the search function called directly.

A local store with 400 text documents (4 batches; generated sentences) and an 8-page PDF is embedded by the
real Infinity server (``minilm-colbert-128``, ``colpali-tiny``) and indexed. Then the same bounded load (a
fixed list of queries, ``requests`` in total) is run:

* directly: :func:`infinity_assets.index.search_text` in this process, by 1 and by ``clients`` threads sharing
  one client (as the service shares it);
* through the API: ``GET /search`` of ``infinity-assets serve`` (a subprocess on 127.0.0.1), by 1 and by
  ``clients`` threads, each with its own keep-alive connection;

in alternating rounds (direct, API, direct, ...), so both see the same load from the rest of the machine.

Both include embedding the query by the real server. Reported: p50/p95 latency, requests/s, the ratio API /
direct at the same concurrency, the API's time outside the search (its wall time minus the ``seconds`` the
service reports for ``search_text``: HTTP, routing, JSON), and CPU ms per request (this process for direct
calls, the serve process for the API: CPU time is the fairer figure when other work loads the machine). Page weight: the bytes of ``/``
(with its script and style), of a 320-pixel thumbnail and of a full page picture, and of a search answer.
"""
from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from infinity_assets import InfinityEmbeddings
from infinity_assets.index import search_text, sync_index
from infinity_assets.pipeline import embed_partition
from infinity_assets.storage.documents import DocumentStore
from infinity_assets_dev.infinity import InfinityServer
from infinity_assets_dev.ports import free_port

TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colpali-tiny"
WORDS = ("index search page vector query token engine storage bucket object batch render model server "
         "latency answer document report invoice contract table figure chart river mountain city rocket "
         "orbit planet energy water garden kitchen music piano violin football tennis market price").split()


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _corpus(root: Path, url: str, documents: int, pages: int) -> DocumentStore:
    from fpdf import FPDF

    rng = random.Random(7)
    for index in range(documents):
        folder = root / "raw" / "text" / f"batch-{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc-{index:04d}.txt").write_text(_sentence(rng, 40))
    pdf = FPDF(format="letter")
    pdf.set_font("helvetica", size=16)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.multi_cell(0, 10, text=f"page {number}: " + _sentence(rng, 60))
    (root / "raw" / "images" / "pdfs").mkdir(parents=True)
    (root / "raw" / "images" / "pdfs" / "report.pdf").write_bytes(bytes(pdf.output()))
    store = DocumentStore(str(root))
    for modality, model, partitions in (("text", TEXT_MODEL, [f"batch-{i}" for i in range(4)]),
                                        ("images", IMAGE_MODEL, ["pdfs"])):
        with InfinityEmbeddings(url=url, model_name=model, hidden_dim=128) as client:
            for partition in partitions:
                embed_partition(store, client, modality, partition)
        sync_index(store, modality)
    return store


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))]}


def _load(call: Any, queries: list[str], requests: int, clients: int) -> dict[str, Any]:
    """Run ``requests`` calls over ``clients`` threads (query ``i`` for call ``i``): latencies, wall time."""
    latencies: list[float] = []
    overheads: list[float] = []  # wall time minus the time the service spent inside the search (API only)
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(state: dict[str, Any]) -> None:
        for i in iter(lambda: next(counter, None), None):
            started = time.perf_counter()
            inside = call(queries[i % len(queries)], state)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if inside is not None:
                    overheads.append(elapsed - inside)

    states: list[dict[str, Any]] = [{} for _ in range(clients)]
    threads = [threading.Thread(target=worker, args=(state,)) for state in states]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for state in states:
        if "client" in state:
            state["client"].close()
    return {"latencies": latencies, "overheads": overheads, "wall": wall}


def _serve(store: DocumentStore, url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_"))}
    env |= {"INFINITY_API_URL": url, "INFINITY_MODEL": TEXT_MODEL, "INFINITY_IMAGE_MODEL": IMAGE_MODEL,
            "INFINITY_HIDDEN_DIM": "128", "INFINITY_ASSETS_ROOT": store.root_uri, "TQDM_DISABLE": "1"}
    command = [str(Path(sys.executable).parent / "infinity-assets"), "serve", "--port", str(port)]
    process = subprocess.Popen(command,
                               env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{address}/health", timeout=1).status_code == 200:
                return process, address
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"infinity-assets serve did not start: {log.read_text()[-2000:]}")


def run(requests: int = 200, clients: int = 4, documents: int = 400, pages: int = 8) -> dict[str, Any]:
    """The section's results (see the module docstring)."""
    import psutil

    os.environ.setdefault("LANCE_LOG", "error")
    rng = random.Random(11)
    queries = [_sentence(rng, 4) for _ in range(50)]
    results: dict[str, Any] = {"documents": documents, "pages": pages, "clients": clients, "requests": requests}
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, \
            InfinityServer([TEXT_MODEL, IMAGE_MODEL], log_dir=tmp) as server:
        store = _corpus(Path(tmp) / "store", server.url, documents, pages)
        process, address = _serve(store, server.url, Path(tmp) / "serve.log")
        try:
            serve_process = psutil.Process(process.pid)
            for modality, model in (("text", TEXT_MODEL), ("images", IMAGE_MODEL)):
                with InfinityEmbeddings(url=server.url, model_name=model, hidden_dim=128) as client:
                    results[modality] = _compare(store, client, modality, address, serve_process, queries,
                                                 requests, clients)
            results["weight"] = _weight(address)
        finally:
            process.terminate()
            process.wait(30)
    _print(results)
    return results


def _compare(store: DocumentStore, client: Any, modality: str, address: str, serve_process: Any,
             queries: list[str], requests: int, clients: int) -> dict[str, Any]:
    """Direct calls and API requests at 1 and ``clients`` concurrency, in alternating rounds (so both see the
    same load from the rest of the machine)."""
    def direct(query: str, state: dict[str, Any]) -> None:
        search_text(store, client, query, modality, 10)

    def api(query: str, state: dict[str, Any]) -> float:
        if "client" not in state:  # one keep-alive connection per load thread, closed by _load
            state["client"] = httpx.Client(base_url=address, timeout=60)
        answer = state["client"].get("/search", params={"q": query, "modality": modality, "k": 10})
        answer.raise_for_status()
        return answer.json()["seconds"]  # the search inside the service: the rest is the API's own cost

    def api_cpu() -> float:
        return sum(serve_process.cpu_times()[:2])

    _load(direct, queries, 20, 1)  # warm: the index opened once, the connections made
    _load(api, queries, 20, 1)
    rows: dict[str, Any] = {}
    rounds = 4
    for concurrency in (1, clients):
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "api": []}
        for _ in range(rounds):
            for name, call, cpu in (("direct", direct, time.process_time), ("api", api, api_cpu)):
                before = cpu()
                run = _load(call, queries, requests // rounds, concurrency)
                run["cpu_ms"] = 1000 * (cpu() - before) / (requests // rounds)
                runs[name].append(run)
        for name, parts in runs.items():
            latencies = [seconds for part in parts for seconds in part.pop("latencies")]
            overheads = [seconds for part in parts for seconds in part.pop("overheads")]
            rows[f"{name}_c{concurrency}"] = {
                **_percentiles(latencies), "clients": concurrency, "requests": len(latencies),
                **({"overhead_p50_ms": 1000 * statistics.median(overheads)} if overheads else {}),
                "per_s": len(latencies) / sum(part["wall"] for part in parts),
                "cpu_ms": statistics.mean(part["cpu_ms"] for part in parts)}
        api_row, direct_row = rows[f"api_c{concurrency}"], rows[f"direct_c{concurrency}"]
        api_row["p50_ratio"] = api_row["p50_ms"] / direct_row["p50_ms"]
        api_row["p95_ratio"] = api_row["p95_ms"] / direct_row["p95_ms"]
    return rows


def _weight(address: str) -> dict[str, int]:
    with httpx.Client(base_url=address, timeout=60) as session:
        page = sum(len(session.get(path).content) for path in ("/", "/static/app.js", "/static/app.css"))
        answer = session.get("/search", params={"q": "page report", "modality": "images", "k": 10})
        hit = answer.json()["hits"][0]
        thumbnail = session.get(hit["image_url"] + "&size=320").content
        full = session.get(hit["image_url"]).content
        text_answer = session.get("/search", params={"q": "page report", "modality": "text", "k": 10})
    return {"page_bytes": page, "thumbnail_320_bytes": len(thumbnail), "page_picture_bytes": len(full),
            "images_answer_k10_bytes": len(answer.content), "text_answer_k10_bytes": len(text_answer.content)}


def _print(results: dict[str, Any]) -> None:
    print(f"  service: {results['documents']} text documents, {results['pages']} PDF pages, "
          f"{results['requests']} requests per row")
    for modality in ("text", "images"):
        for name, row in results[modality].items():
            ratio = (f"  API/direct p50 {row['p50_ratio']:.2f}x p95 {row['p95_ratio']:.2f}x, outside the search "
                     f"{row['overhead_p50_ms']:.1f} ms" if "p50_ratio" in row else "")
            print(f"  {modality:6} {name:10} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                  f"{row['per_s']:6.1f}/s  cpu {row['cpu_ms']:6.1f} ms/request{ratio}")
    print("  weight: " + ", ".join(f"{k} {v:,}" for k, v in results["weight"].items()))


if __name__ == "__main__":
    run()
