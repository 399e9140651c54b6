"""`infinity-assets serve`: the search API and the page pictures, against the real Infinity server and SeaweedFS.

One bucket (a 3-page PDF, a PNG, two text files) is embedded and indexed once for the module; each test serves
the app with real uvicorn on 127.0.0.1 and talks HTTP to it. The last test starts `infinity-assets serve` as a
subprocess with its settings in the environment.
"""
from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

from infinity_assets import InfinityEmbeddings
from infinity_assets.index import search_text
from infinity_assets.service import create_app
from infinity_assets.service.config import ServiceSettings
from infinity_assets.service.similarity import page_vectors, patch_grid, similarity_grid
from infinity_assets.service.pages import lookup
from infinity_assets.storage.documents import DocumentStore
from infinity_assets_dev.ports import free_port
from infinity_assets_tests.servers.service_fixtures import IMAGE_MODEL, TEXT_MODEL, ServedApp, build_corpus
from infinity_assets_tests.test_pdf import rendered_pages, text_pdf

BIN = Path(sys.executable).parent
URL_FIELDS = ("image_url", "source_url", "similarity_url")


@pytest.fixture(scope="module")
def corpus(infinity_server, seaweedfs):
    return build_corpus(seaweedfs, infinity_server.url, text_pdf(3, "report"))


@pytest.fixture
def served(corpus):
    """The app on the corpus, served by uvicorn; a factory for other settings (``api_key``, ``clients``)."""
    started = []

    def serve(clients=None, store=None, **limits):
        app = create_app(store or corpus.store, clients or corpus.clients(), ServiceSettings(**limits))
        server = ServedApp(app).__enter__()
        started.append(server)
        return server

    yield serve
    for server in started:
        server.__exit__(None, None, None)


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize(("modality", "query"),
                         [("text", "rocket fuel to reach orbit"), ("images", "report page 2")])
def test_the_apis_hits_equal_the_python_search_apis(modality, query, corpus, served):
    app = served()
    answer = app.get("/search", params={"q": query, "modality": modality, "k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    with corpus.clients()[modality] as client:
        expected = [hit.to_json() for hit in search_text(corpus.store, client, query, modality, 3)]
    got = [{k: v for k, v in hit.items() if k not in URL_FIELDS} for hit in body["hits"]]
    assert got == expected and len(got) == (2 if modality == "text" else 3)
    assert body["model"] == (TEXT_MODEL if modality == "text" else IMAGE_MODEL)
    if modality == "text":
        assert got[0]["doc_id"] == "rockets.md" and "rocket engines" in got[0]["snippet"]
        assert all("image_url" not in hit for hit in body["hits"])
    else:
        assert all(hit["image_url"].startswith("/pages/images/") for hit in body["hits"])
        assert body["similarity_map"] is True


def test_the_service_keeps_its_index_open_and_follows_each_sync(infinity_server, tmp_path, corpus, served):
    from infinity_assets.index import sync_index
    from infinity_assets.pipeline import embed_partition

    folder = tmp_path / "raw" / "text" / "b"
    folder.mkdir(parents=True)
    (folder / "one.txt").write_text("violins and cellos in the orchestra")
    store = DocumentStore(str(tmp_path))
    clients = corpus.clients()
    embed_partition(store, clients["text"], "text", "b")
    sync_index(store, "text")
    app = served(clients=clients, store=store)
    first = app.get("/search", params={"q": "a volcano erupts", "modality": "text"}).json()["hits"]
    assert [hit["doc_id"] for hit in first] == ["one.txt"]
    reader = app.server.config.app.state.service.readers.get("text")
    (folder / "two.txt").write_text("the volcano erupts with lava and ash")
    embed_partition(store, clients["text"], "text", "b")
    sync_index(store, "text")
    second = app.get("/search", params={"q": "a volcano erupts", "modality": "text"}).json()["hits"]
    assert [hit["doc_id"] for hit in second] == ["two.txt", "one.txt"]  # the new commit, without a restart
    assert app.server.config.app.state.service.readers.get("text") is not reader
    with clients["text"] as client:
        expected = [hit.to_json() for hit in search_text(store, client, "a volcano erupts", "text", 10)]
    assert [{k: v for k, v in hit.items() if k not in URL_FIELDS} for hit in second] == expected


def test_a_text_hits_source_link_serves_the_file_as_stored(served):
    app = served()
    hit = app.get("/search", params={"q": "a cat on a mat", "modality": "text"}).json()["hits"][0]
    assert hit["doc_id"] == "cats.txt"
    source = app.get(hit["source_url"])
    assert source.status_code == 200 and source.text == "the cat sat on the warm mat in the afternoon sun"
    assert source.headers["content-type"].startswith("text/plain")
    assert source.headers["content-security-policy"] == "sandbox"


def test_a_source_over_the_size_limit_is_413_naming_it(served):
    app = served(max_source_bytes=10)
    answer = app.get("/sources/text/cats.txt")
    assert answer.status_code == 413 and "up to 10 bytes (max_source_bytes)" in answer.json()["error"]


def test_the_openapi_description_lists_every_route_with_the_services_limits(served):
    schema = served(max_k=7).get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/search", "/health", "/pages/{modality}/{doc_id}", "/similarity/{modality}/{doc_id}",
            "/sources/{modality}/{doc_id}"} <= set(schema["paths"])
    k = next(p for p in schema["paths"]["/search"]["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 7


# ------------------------------------------------------------------------------------------------ pages
def test_a_pdf_pages_picture_is_the_page_rendered_as_the_embedding_rendered_it(corpus, served):
    app = served()
    picture = app.get(f"/pages/images/{quote('report.pdf#page=2', safe='')}")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(picture.content)) as image:
        image.verify()  # a valid PNG, checksums included
    expected = _pixels(rendered_pages(corpus.pdf)[1])
    assert np.array_equal(_pixels(picture.content), expected)
    assert not np.array_equal(expected, _pixels(rendered_pages(corpus.pdf)[0]))  # pages differ: the right one


def test_a_thumbnail_is_the_page_scaled_to_the_size_asked(corpus, served):
    app = served()
    thumb = app.get(f"/pages/images/{quote('report.pdf#page=1', safe='')}", params={"size": 128})
    assert thumb.status_code == 200
    pixels = _pixels(thumb.content)
    full = _pixels(rendered_pages(corpus.pdf)[0])
    assert max(pixels.shape[:2]) == 128
    assert abs(pixels.shape[1] / pixels.shape[0] - full.shape[1] / full.shape[0]) < 0.02
    # The same picture, smaller: close to the full page scaled down by Pillow.
    reference = np.asarray(Image.fromarray(full).resize(pixels.shape[1::-1], Image.Resampling.BILINEAR))
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 12


def test_a_stored_image_is_served_as_stored(corpus, served):
    picture = served().get("/pages/images/photo.png", params={"partition": "b1"})
    assert picture.status_code == 200 and picture.content == corpus.photo
    assert picture.headers["content-type"] == "image/png"


def test_a_file_changed_since_it_was_indexed_is_409_not_another_picture(corpus, tmp_path, served):
    from infinity_assets.index import sync_index
    from infinity_assets.pipeline import embed_partition
    from infinity_assets_tests.servers.service_fixtures import photo_png

    folder = tmp_path / "raw" / "images" / "b"
    folder.mkdir(parents=True)
    (folder / "photo.png").write_bytes(photo_png())
    store = DocumentStore(str(tmp_path))
    clients = corpus.clients()
    embed_partition(store, clients["images"], "images", "b")
    sync_index(store, "images")
    app = served(clients=clients, store=store)
    assert app.get("/pages/images/photo.png").content == photo_png()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 255, 0)).save(buffer, format="PNG")
    (folder / "photo.png").write_bytes(buffer.getvalue())  # not re-embedded, not re-indexed
    for path in ("/pages/images/photo.png?size=100", "/sources/images/photo.png"):
        answer = app.get(path)
        assert answer.status_code == 409 and "changed since it was indexed" in answer.json()["error"], answer.text


def test_a_picture_has_an_etag_from_the_fingerprint_and_is_not_sent_again(served):
    app = served()
    path = f"/pages/images/{quote('report.pdf#page=3', safe='')}"
    first = app.get(path)
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('"')
    again = app.get(path, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    assert app.get(path, params={"size": 64}).headers["etag"] != tag
    assert app.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("doc_id", [
    "../../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "report.pdf",
    "../b1/report.pdf#page=1", "s3://other-bucket/raw/images/b1/report.pdf#page=1",
    "embeddings/images/b1.parquet", "report.pdf#page=9", "report.pdf#page=1' OR '1'='1",
])
def test_only_indexed_documents_are_served(doc_id, served):
    app = served()
    for route in ("pages", "sources"):
        answer = app.get(f"/{route}/images/{quote(doc_id, safe='')}")
        assert answer.status_code == 404, (route, answer.text)
        assert "in the images index" in answer.json()["error"]


def test_a_dot_dot_path_that_is_not_encoded_reaches_no_file(served):
    import http.client

    app = served()
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    connection.request("GET", "/pages/images/../../../../etc/passwd")  # sent as is, not normalised
    answer = connection.getresponse()
    body = answer.read()
    assert answer.status in (404, 400) and b"root:" not in body
    connection.close()


def test_an_unknown_partition_or_modality_is_404(served):
    app = served()
    assert app.get("/pages/images/photo.png", params={"partition": "../b1"}).status_code == 404
    assert app.get("/pages/images/photo.png", params={"partition": "b2"}).status_code == 404
    assert app.get("/pages/secrets/photo.png").status_code == 404
    assert app.get("/no/such/route").status_code == 404


# ------------------------------------------------------------------------------------------------ limits
@pytest.mark.parametrize(("params", "named", "limit"), [
    ({"q": "x" * 1001}, "'q'", 1000), ({"q": "x", "k": 101}, "'k'", 100), ({"q": "x", "k": 0}, "'k'", 100),
    ({"q": "x", "k": "ten"}, "'k'", None), ({"q": ""}, "'q'", None),
    ({"q": "x", "modality": "audio"}, "modality", None),
])
def test_bad_search_parameters_are_422_naming_the_limit(params, named, limit, served):
    answer = served().get("/search", params=params)
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["error"]
    assert answer.json().get("limit") == limit


def test_a_thumbnail_size_out_of_bounds_is_422(served):
    app = served()
    for size in (0, 15, 2049, 100_000):
        answer = app.get("/pages/images/photo.png", params={"size": size})
        assert answer.status_code == 422 and answer.json()["limit"] == 2048, answer.text


# ------------------------------------------------------------------------------------------------ safety
def test_with_an_api_key_every_route_but_health_needs_it(served):
    key = "serve-key-0123456789"
    app = served(api_key=key)
    assert app.get("/health").status_code == 200
    routes = ["/", "/static/app.js", "/openapi.json", "/search?q=cat", "/pages/images/photo.png",
              "/sources/text/cats.txt", "/similarity/images/photo.png?q=x"]
    basic = "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()
    for route in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": key[:-1]},
                        {"Authorization": "Basic " + base64.b64encode(b"anyone:wrong").decode()}):
            answer = app.get(route, headers=headers)
            assert answer.status_code == 401, (route, headers)
            assert key not in answer.text and "API key" in answer.json()["error"]
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}, {"Authorization": basic}):
            assert app.get(route, headers=headers).status_code == 200, (route, headers)


def test_an_unreachable_infinity_server_is_503_with_the_reason(corpus, served):
    closed = f"http://127.0.0.1:{free_port()}"
    app = served(clients=corpus.clients(closed, max_retries=0, timeout=5, api_key="infinity-key-never-shown"))
    answer = app.get("/search", params={"q": "cat", "modality": "text"})
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert "Infinity" in error and "127.0.0.1" in error and "Traceback" not in answer.text
    assert "infinity-key-never-shown" not in answer.text
    # Pictures need no Infinity server: they still work.
    assert app.get("/pages/images/photo.png").status_code == 200


def test_a_missing_index_is_503_saying_what_to_do(corpus, seaweedfs, served):
    empty = DocumentStore(f"s3://{seaweedfs.create_bucket()}", **seaweedfs.storage_options())
    app = served(store=empty)
    answer = app.get("/search", params={"q": "cat"})
    assert answer.status_code == 503 and "materialize the text_index asset" in answer.json()["error"]
    assert app.get("/pages/images/photo.png").status_code == 503


def test_store_credentials_never_appear_in_an_answer(corpus, seaweedfs, served):
    wrong = DocumentStore(f"s3://{corpus.bucket}", endpoint_url=seaweedfs.endpoint_url, key=seaweedfs.access_key,
                          secret="not-the-secret-but-still-a-secret")
    app = served(store=wrong)
    for path in ("/search?q=cat", "/pages/images/photo.png", "/sources/text/cats.txt"):
        answer = app.get(path)
        assert answer.status_code == 503, answer.text
        assert "not-the-secret-but-still-a-secret" not in answer.text and seaweedfs.secret_key not in answer.text


# ------------------------------------------------------------------------------------------------ similarity
def test_the_similarity_map_of_a_colpali_page_is_maxsim_per_patch_on_its_32x32_grid(corpus, served):
    app = served()
    doc_id = "report.pdf#page=1"
    answer = app.get(f"/similarity/images/{quote(doc_id, safe='')}", params={"q": "report page 1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["rows"], body["cols"]) == (32, 32)
    document = lookup(corpus.store, "images", doc_id)
    assert document.n_vectors == 1032 and patch_grid(IMAGE_MODEL, document.n_vectors) == (32, 32)
    with corpus.clients()["images"] as client:
        query = client.embed_query("report page 1")
    vectors = page_vectors(corpus.store, document)
    units = vectors[:1024] / np.linalg.norm(vectors[:1024], axis=1, keepdims=True)
    by_patch = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ units.T
    np.testing.assert_allclose(np.array(body["grid"]), by_patch.max(axis=0).reshape(32, 32), atol=1e-4)
    np.testing.assert_allclose(similarity_grid(query, vectors, (32, 32)), np.array(body["grid"]), atol=1e-4)
    overlay = app.get(f"/similarity/images/{quote(doc_id, safe='')}",
                      params={"q": "report page 1", "format": "png", "size": 320})
    with Image.open(io.BytesIO(overlay.content)) as image:
        assert image.format == "PNG" and image.mode == "RGBA" and image.size == (320, 320)
        alpha = np.asarray(image)[..., 3]
    assert alpha.max() > 150 and alpha.min() == 0  # the best patches opaque, the weakest transparent


def test_colqwen2_pages_get_no_map_and_the_answer_says_why(infinity_server, tmp_path, served):
    from infinity_assets.index import sync_index
    from infinity_assets.pipeline import embed_partition
    from infinity_assets_tests.servers.service_fixtures import photo_png

    (tmp_path / "raw" / "images" / "b").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "b" / "photo.png").write_bytes(photo_png())
    store = DocumentStore(str(tmp_path))
    clients = {m: InfinityEmbeddings(url=infinity_server.url, model_name=n, hidden_dim=128)
               for m, n in (("text", TEXT_MODEL), ("images", "colqwen2-tiny"))}
    embed_partition(store, clients["images"], "images", "b")
    sync_index(store, "images")
    app = served(clients=clients, store=store)
    answer = app.get("/search", params={"q": "blue and red", "modality": "images"}).json()
    assert answer["similarity_map"] is False and "similarity_url" not in answer["hits"][0]
    refused = app.get("/similarity/images/photo.png", params={"q": "blue"})
    assert refused.status_code == 404 and "ColQwen2's grid follows the rendered size" in refused.json()["error"]


# ------------------------------------------------------------------------------------------------ the command
def test_infinity_assets_serve_answers_with_the_settings_of_the_environment(corpus, seaweedfs, infinity_server,
                                                                           tmp_path):
    port, key = free_port(), "subprocess-key-42"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_"))}
    env |= {"INFINITY_API_URL": infinity_server.url, "INFINITY_MODEL": TEXT_MODEL,
            "INFINITY_IMAGE_MODEL": IMAGE_MODEL, "INFINITY_HIDDEN_DIM": "128",
            "INFINITY_ASSETS_ROOT": f"s3://{corpus.bucket}", "AWS_ENDPOINT_URL": seaweedfs.endpoint_url,
            "AWS_ACCESS_KEY_ID": seaweedfs.access_key, "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
            "INFINITY_ASSETS_SERVE_API_KEY": key}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([BIN / "infinity-assets", "serve", "--port", str(port)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url, headers = f"http://127.0.0.1:{port}", {"X-API-Key": key}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        answer = httpx.get(f"{url}/search", params={"q": "report page 1", "modality": "images", "k": 2},
                           headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        with corpus.clients()["images"] as client:
            expected = [h.to_json() for h in search_text(corpus.store, client, "report page 1", "images", 2)]
        assert [{k: v for k, v in h.items() if k not in URL_FIELDS} for h in answer.json()["hits"]] == expected
        picture = httpx.get(url + answer.json()["hits"][0]["image_url"], headers=headers, timeout=60)
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert httpx.get(f"{url}/search", params={"q": "x"}, timeout=10).status_code == 401
        # A secret pasted into a query is served (it is the user's query) but not written to the access log.
        pasted = httpx.get(f"{url}/search", params={"q": seaweedfs.secret_key, "k": 1}, headers=headers,
                           timeout=60)
        assert pasted.status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)
    output = log.read_text()
    assert f"http://127.0.0.1:{port}/" in output  # its address
    assert re.search(r'"GET /search\?q=report\+page\+1&modality=images&k=2 HTTP/1.1" 200', output), output
    assert "Logging error" not in output and "Traceback" not in output
    assert re.search(r'"GET /search\?q=\*\*\*&k=1 HTTP/1.1" 200', output), output
    for secret in (seaweedfs.secret_key, key):
        assert secret not in output


def test_serve_listens_on_loopback_only_by_default():
    from infinity_assets.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8080)
