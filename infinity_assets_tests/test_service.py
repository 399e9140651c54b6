"""`infinity-assets serve`: the search API and the page pictures, against the real Infinity server and SeaweedFS.

One bucket (a 3-page PDF, a PNG, two text files) is embedded and indexed once for the module, and a second
corpus (other documents, other models) for the tests of several corpora; each test serves the app with real
uvicorn on 127.0.0.1 and talks HTTP to it. The last tests start `infinity-assets serve` as a subprocess with its
settings in the environment and its flags.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

from infinity_assets import InfinityEmbeddings
from infinity_assets.corpus import ClientSettings
from infinity_assets.index import search_text, sync_index
from infinity_assets.pipeline import embed_partition
from infinity_assets.service import create_app
from infinity_assets.service.config import ServiceSettings
from infinity_assets.service.corpora import ServedCorpus, corpora_from_env
from infinity_assets.service.pages import lookup
from infinity_assets.service.similarity import page_vectors, patch_grid, similarity_grid
from infinity_assets.settings import QuerySettings
from infinity_assets.storage.documents import DocumentStore, PdfSettings
from infinity_assets_dev.ports import free_port
from infinity_assets_tests.servers.service_fixtures import IMAGE_MODEL, TEXT_MODEL, ServedApp, build_corpus
from infinity_assets_tests.test_pdf import rendered_pages, text_pdf

BIN = Path(sys.executable).parent
URL_FIELDS = ("image_url", "source_url", "similarity_url")


@pytest.fixture(scope="module")
def corpus(infinity_server, seaweedfs):
    return build_corpus(seaweedfs, infinity_server.url, text_pdf(3, "report"))


@pytest.fixture(scope="module")
def second(infinity_server, seaweedfs):
    """A second corpus in its own bucket: a 2-page memo, the PNG and one text, embedded with other models
    (384-dimensional MiniLM for text, ColQwen2 for pages)."""
    return build_corpus(seaweedfs, infinity_server.url, text_pdf(2, "memo"), pdf_name="memo.pdf",
                        texts={"violins.txt": "violins and cellos play in the orchestra hall"},
                        text_model="minilm-colbert", image_model="colqwen2-tiny")


@pytest.fixture
def s3_env(seaweedfs, monkeypatch, tmp_path):
    """The environment of an operator: the S3 credentials set, no Infinity setting, no root; the readers'
    local copies in the test's folder."""
    for name in list(os.environ):
        if name.startswith(("INFINITY_API", "INFINITY_MODEL", "INFINITY_IMAGE_", "INFINITY_HIDDEN", "AWS_",
                            "INFINITY_ASSETS_ROOT")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("INFINITY_ASSETS_INDEX_LOCAL_COPY", str(tmp_path / "copies"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)


@pytest.fixture
def two(corpus, second, served, infinity_server, s3_env):
    """The service over two corpora reached by their roots, as ``serve --corpus docs=... --corpus memos=...``
    makes them: ``docs`` (the default) and ``memos``, queries embedded with each index's model."""
    return served(corpora=corpora_from_env({"docs": f"s3://{corpus.bucket}", "memos": f"s3://{second.bucket}"},
                                           url=infinity_server.url))


@pytest.fixture
def served(corpus):
    """The app on the corpus (named ``default``), served by uvicorn; a factory for other settings (``api_key``,
    ``queries``, ``store``, or ``corpora``: a list of :class:`ServedCorpus` instead)."""
    started = []

    def serve(queries=None, store=None, corpora=None, **limits):
        corpora = corpora or [ServedCorpus("default", store or corpus.store, queries or corpus.queries())]
        app = create_app(corpora, ServiceSettings(**limits))
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
    folder = tmp_path / "raw" / "text" / "b"
    folder.mkdir(parents=True)
    (folder / "one.txt").write_text("violins and cellos in the orchestra")
    store = DocumentStore(str(tmp_path))
    clients = corpus.clients()
    embed_partition(store, clients["text"], "text", "b")
    sync_index(store, "text")
    app = served(store=store)
    first = app.get("/search", params={"q": "a volcano erupts", "modality": "text"}).json()["hits"]
    assert [hit["doc_id"] for hit in first] == ["one.txt"]
    reader = app.server.config.app.state.service.corpus("default").readers.get("text")
    (folder / "two.txt").write_text("the volcano erupts with lava and ash")
    embed_partition(store, clients["text"], "text", "b")
    sync_index(store, "text")
    second = app.get("/search", params={"q": "a volcano erupts", "modality": "text"}).json()["hits"]
    assert [hit["doc_id"] for hit in second] == ["two.txt", "one.txt"]  # the new commit, without a restart
    assert app.server.config.app.state.service.corpus("default").readers.get("text") is not reader
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


# ------------------------------------------------------------------------------------------------ corpora
def test_corpora_lists_each_corpus_with_the_model_of_each_index(two, corpus, second):
    answer = two.get("/corpora")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["default"] == "docs" and [c["name"] for c in body["corpora"]] == ["docs", "memos"]
    docs, memos = body["corpora"]
    copies = [index.pop("local_copy") for c in (docs, memos) for index in c["indexes"].values()]
    assert all(c["copy"] in ("copying", "ready") for c in copies), copies  # made in the background
    assert docs["root"] == f"s3://{corpus.bucket}" and memos["root"] == f"s3://{second.bucket}"
    assert docs["modalities"] == memos["modalities"] == ["text", "images"]
    assert docs["indexes"] == {
        "text": {"model": TEXT_MODEL, "hidden_dim": 128, "documents": 2, "query_model": TEXT_MODEL},
        "images": {"model": IMAGE_MODEL, "hidden_dim": 128, "documents": 4, "query_model": IMAGE_MODEL}}
    assert memos["indexes"] == {
        "text": {"model": "minilm-colbert", "hidden_dim": 384, "documents": 1, "query_model": "minilm-colbert"},
        "images": {"model": "colqwen2-tiny", "hidden_dim": 128, "documents": 3, "query_model": "colqwen2-tiny"}}
    # on S3 the copies hold the rerank's rows too by default, once made ("auto": they fit on the disk)
    deadline = time.monotonic() + 60
    while copies != [{"copy": "ready", "rerank_rows": "the copy"}] * 4:
        assert time.monotonic() < deadline, copies
        time.sleep(0.2)
        copies = [index["local_copy"] for c in two.get("/corpora").json()["corpora"] for index in c["indexes"].values()]


@pytest.mark.parametrize("modality", ["text", "images"])
def test_a_search_answers_from_the_corpus_it_names_with_that_indexs_model(modality, two, corpus, second):
    query = "memo page 2" if modality == "images" else "a string quartet"
    for name, source in (("docs", corpus), ("memos", second)):
        answer = two.get("/search", params={"q": query, "corpus": name, "modality": modality, "k": 3})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["corpus"] == name and body["model"] == source.models[modality]
        with source.clients()[modality] as client:
            expected = [hit.to_json() for hit in search_text(source.store, client, query, modality, 3)]
        assert [{k: v for k, v in hit.items() if k not in URL_FIELDS} for hit in body["hits"]] == expected
        assert all(f"corpus={name}" in hit["source_url"] for hit in body["hits"])
    memo_hits = two.get("/search", params={"q": query, "corpus": "memos", "modality": modality}).json()["hits"]
    assert {hit["source_uri"].split("/")[2] for hit in memo_hits} == {second.bucket}


def test_a_search_that_names_no_corpus_answers_from_the_first(two):
    answer = two.get("/search", params={"q": "rocket fuel", "modality": "text"}).json()
    assert answer["corpus"] == "docs" and answer["hits"][0]["doc_id"] == "rockets.md"


def test_a_hits_picture_link_serves_the_page_of_its_own_corpus(two, second):
    params = {"q": "memo page 2", "corpus": "memos", "modality": "images"}
    hits = two.get("/search", params=params).json()["hits"]
    hit = next(hit for hit in hits if hit["doc_id"] == "memo.pdf#page=2")
    picture = two.get(hit["image_url"])
    assert picture.status_code == 200, picture.text
    assert np.array_equal(_pixels(picture.content), _pixels(rendered_pages(second.pdf)[1]))
    elsewhere = two.get(f"/pages/images/{quote('memo.pdf#page=2', safe='')}", params={"corpus": "docs"})
    assert elsewhere.status_code == 404
    assert elsewhere.json()["error"].startswith("corpus 'docs': no document 'memo.pdf#page=2'")


def test_two_corpora_with_a_look_alike_file_each_get_their_own_picture(corpus, tmp_path, served):
    """Same doc_id, batch, size and modification time (the local fingerprint) in two roots: two pictures."""
    from infinity_assets.index import sync_index
    from infinity_assets.pipeline import embed_partition

    pictures, corpora = {}, []
    for name, color in (("reds", (200, 0, 0)), ("blues", (0, 0, 200))):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), color).save(buffer, format="PNG", compress_level=0)  # size: 64 x 64 only
        pictures[name] = buffer.getvalue()
        path = tmp_path / name / "raw" / "images" / "b" / "p.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(pictures[name])
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        store = DocumentStore(str(tmp_path / name))
        with corpus.clients()["images"] as client:
            embed_partition(store, client, "images", "b")
        sync_index(store, "images")
        corpora.append(ServedCorpus(name, store, corpus.queries()))
    assert len(pictures["reds"]) == len(pictures["blues"])  # the same fingerprint: <size>-<mtime_ns>
    app = served(corpora=corpora)
    for name in ("reds", "blues", "reds"):
        assert app.get("/pages/images/p.png", params={"corpus": name}).content == pictures[name], name


@pytest.mark.parametrize("path", ["/search?q=cat", "/pages/images/photo.png", "/sources/text/cats.txt",
                                  "/similarity/images/photo.png?q=cat"])
def test_an_unknown_corpus_is_404_listing_the_served_ones(path, two):
    answer = two.get(path, params={"corpus": "manuals"})
    assert answer.status_code == 404, answer.text
    body = answer.json()
    assert body["corpora"] == ["docs", "memos"]
    assert "no corpus 'manuals'" in body["error"] and "'docs', 'memos'" in body["error"]
    assert "GET /corpora" in body["error"]


def test_a_corpus_without_an_index_is_listed_with_what_to_do(seaweedfs, corpus, served, infinity_server,
                                                            s3_env):
    empty = f"s3://{seaweedfs.create_bucket()}"
    app = served(corpora=corpora_from_env({"docs": f"s3://{corpus.bucket}", "fresh": empty},
                                          url=infinity_server.url))
    fresh = app.get("/corpora").json()["corpora"][1]
    assert fresh["name"] == "fresh" and fresh["modalities"] == []
    assert "there is no text index" in fresh["indexes"]["text"]["error"]
    assert "materialize" in fresh["indexes"]["images"]["error"]
    answer = app.get("/search", params={"q": "cat", "corpus": "fresh"})
    assert answer.status_code == 503 and answer.json()["corpus"] == "fresh"
    assert answer.json()["error"].startswith("corpus 'fresh': the index cannot answer: there is no text index")


def test_a_pinned_model_other_than_the_indexs_is_refused_saying_so(corpus, served, infinity_server):
    minilm = ClientSettings(url=infinity_server.url, model_name="minilm-colbert", hidden_dim=384)
    other = {m: QuerySettings(minilm, pinned=True) for m in ("text", "images")}
    answer = served(queries=other).get("/search", params={"q": "cat", "modality": "text"})
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error.startswith("corpus 'default': the index cannot answer: the text index was built with model "
                            f"'{TEXT_MODEL}' (hidden_dim 128) but queries are embedded with 'minilm-colbert'")
    assert "re-embed and re-index" in error


def test_without_corpus_options_the_service_serves_the_environments_default_corpus(tmp_path, monkeypatch,
                                                                                    s3_env):
    monkeypatch.setenv("INFINITY_ASSETS_ROOT", str(tmp_path))
    monkeypatch.setenv("INFINITY_IMAGE_MODEL", IMAGE_MODEL)
    (default,) = corpora_from_env()
    assert default.name == "default" and default.store.root_uri == str(tmp_path)
    assert default.queries["images"].model == IMAGE_MODEL  # pinned by the environment, as earlier versions did
    assert default.queries["text"].model is None  # none set: the model the text index records


def test_a_named_corpus_embeds_queries_with_its_indexs_model_whatever_the_environment_names(
        tmp_path, monkeypatch, s3_env):
    monkeypatch.setenv("INFINITY_MODEL", TEXT_MODEL)
    (docs,) = corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")
    assert docs.queries["text"].model is None and docs.queries["images"].model is None
    settings = docs.queries["text"].for_index("minilm-colbert", 384)
    assert (settings.model_name, settings.hidden_dim, settings.url) == ("minilm-colbert", 384,
                                                                        "http://infinity.example:7997")


def test_the_search_settings_are_read_once_at_start_and_a_bad_one_stops_the_service_named(
        tmp_path, monkeypatch, s3_env):
    monkeypatch.setenv("INFINITY_ASSETS_SEARCH_POOLED_CANDIDATES", "12")
    (docs,) = corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")
    assert docs.search.pooled_candidates == 12 and docs.search.hamming_candidates == 150
    monkeypatch.setenv("INFINITY_ASSETS_SEARCH_FDE_CANDIDATES", "many")
    with pytest.raises(ValueError, match="INFINITY_ASSETS_SEARCH_FDE_CANDIDATES='many': expected int"):
        corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")


def test_the_readers_keep_their_local_copy_where_the_environment_says(tmp_path, monkeypatch, s3_env, two):
    (docs,) = corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")
    assert docs.local_copy == str(tmp_path / "copies") and docs.readers.local_copy == docs.local_copy
    monkeypatch.setenv("INFINITY_ASSETS_INDEX_LOCAL_COPY", "off")
    assert corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")[0].local_copy is None
    monkeypatch.delenv("INFINITY_ASSETS_INDEX_LOCAL_COPY")
    assert docs.copy_originals == docs.readers.copy_originals == "auto"  # unset: copied if on S3 and they fit
    for value, expected in (("on", True), ("off", False), ("auto", "auto")):
        monkeypatch.setenv("INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS", value)
        (copying,) = corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")
        assert copying.copy_originals is expected and copying.readers.copy_originals is expected
    monkeypatch.setenv("INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS", "sometimes")
    with pytest.raises(ValueError, match="INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS='sometimes': set it to auto"):
        corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")
    monkeypatch.delenv("INFINITY_ASSETS_INDEX_LOCAL_COPY_ORIGINALS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = corpora_from_env({"docs": str(tmp_path)}, url="http://infinity.example:7997")[0].local_copy
    assert default == str(tmp_path / "home" / ".cache" / "infinity-assets" / "index")
    # the service over two S3 corpora (s3_env's copies): its readers answer with stage 3 read from the copies
    assert two.get("/search", params={"q": "quarterly revenue"}).status_code == 200
    deadline = time.monotonic() + 60  # the reader makes its copy in the background
    while not list((tmp_path / "copies").glob("*/*/pooled.i8")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((tmp_path / "copies").glob("*/*/pooled.i8"))


def test_the_openapi_description_names_the_corpora_and_their_listing(two):
    schema = two.get("/openapi.json").json()
    assert "/corpora" in schema["paths"]
    for path in ("/search", "/pages/{modality}/{doc_id}", "/sources/{modality}/{doc_id}",
                 "/similarity/{modality}/{doc_id}"):
        corpus = next(p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "corpus")
        assert corpus["schema"]["enum"] == ["docs", "memos"] and corpus["schema"]["default"] == "docs", path
    assert "404" in schema["paths"]["/search"]["get"]["responses"]


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


def test_a_pdf_page_is_drawn_with_the_settings_its_batch_was_embedded_with(infinity_server, seaweedfs, served):
    """A corpus whose pages were drawn at 400 px (its ``images.pdf``), served by a process with the default
    settings (1,024 px): the picture is the 400 px page the model saw, not a larger one."""
    data = text_pdf(2, "small")
    small = build_corpus(seaweedfs, infinity_server.url, data, pdf_settings=PdfSettings(max_side=400, dpi=100.0))
    plain = DocumentStore(f"s3://{small.bucket}", **seaweedfs.storage_options())
    assert plain.pdf.max_side == 1024
    app = served(corpora=[ServedCorpus("default", plain, small.queries())])
    page = f"/pages/images/{quote('report.pdf#page=2', safe='')}"
    picture = app.get(page)
    assert picture.status_code == 200, picture.text
    assert np.array_equal(_pixels(picture.content), _pixels(rendered_pages(data, max_side=400, dpi=100.0)[1]))
    assert max(_pixels(picture.content).shape[:2]) == 400
    # Embedded again with the default settings and synced: the viewer follows (what it remembered was the
    # earlier embedding's).
    with InfinityEmbeddings(url=infinity_server.url, model_name=IMAGE_MODEL) as client:
        assert embed_partition(plain, client, "images", "b1").embedded == 2
    sync_index(plain, "images")
    again = app.get(page)
    assert again.status_code == 200 and again.headers["etag"] != picture.headers["etag"]
    assert np.array_equal(_pixels(again.content), _pixels(rendered_pages(data)[1]))


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


def indexed_photo(corpus, tmp_path, served):
    """A local corpus with one embedded and indexed photo: its file and the app serving it."""
    from infinity_assets.index import sync_index
    from infinity_assets.pipeline import embed_partition
    from infinity_assets_tests.servers.service_fixtures import photo_png

    folder = tmp_path / "raw" / "images" / "b"
    folder.mkdir(parents=True)
    (folder / "photo.png").write_bytes(photo_png())
    store = DocumentStore(str(tmp_path))
    with corpus.clients()["images"] as client:
        embed_partition(store, client, "images", "b")
    sync_index(store, "images")
    return folder / "photo.png", served(store=store)


def test_a_file_changed_since_it_was_indexed_is_409_not_another_picture(corpus, tmp_path, served):
    from infinity_assets_tests.servers.service_fixtures import photo_png

    photo, app = indexed_photo(corpus, tmp_path, served)
    assert app.get("/pages/images/photo.png").content == photo_png()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 255, 0)).save(buffer, format="PNG")
    photo.write_bytes(buffer.getvalue())  # not re-embedded, not re-indexed
    for path in ("/pages/images/photo.png?size=100", "/sources/images/photo.png"):
        answer = app.get(path)
        assert answer.status_code == 409 and "changed since it was indexed" in answer.json()["error"], answer.text


def test_a_file_deleted_since_it_was_indexed_is_404(corpus, tmp_path, served):
    photo, app = indexed_photo(corpus, tmp_path, served)
    assert app.get("/sources/images/photo.png").status_code == 200
    photo.unlink()  # not re-embedded, not re-indexed
    for path in ("/pages/images/photo.png", "/sources/images/photo.png"):
        answer = app.get(path)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == ("corpus 'default': the file of document 'photo.png' is gone from the "
                                          "store")


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
    routes = ["/", "/static/app.js", "/openapi.json", "/corpora", "/search?q=cat", "/pages/images/photo.png",
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
    app = served(queries=corpus.queries(closed, max_retries=0, timeout=5, api_key="infinity-key-never-shown"))
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
    assert answer.status_code == 503
    assert "materialize the corpus's <corpus>/text_index asset" in answer.json()["error"]
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
    queries = {m: QuerySettings(ClientSettings(url=infinity_server.url, model_name=n, hidden_dim=128),
                                pinned=True) for m, n in (("text", TEXT_MODEL), ("images", "colqwen2-tiny"))}
    app = served(queries=queries, store=store)
    answer = app.get("/search", params={"q": "blue and red", "modality": "images"}).json()
    assert answer["similarity_map"] is False and "similarity_url" not in answer["hits"][0]
    refused = app.get("/similarity/images/photo.png", params={"q": "blue"})
    assert refused.status_code == 404 and "ColQwen2's grid follows the rendered size" in refused.json()["error"]


# ------------------------------------------------------------------------------------------------ the command
@contextlib.contextmanager
def _serving(args: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    """``infinity-assets serve ARGS`` with ``env`` and output to ``log``, once it answers /health; SIGINT after."""
    port = args[args.index("--port") + 1]
    with open(log, "wb") as out:
        process = subprocess.Popen([BIN / "infinity-assets", "serve", *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)


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
    url, headers = f"http://127.0.0.1:{port}", {"X-API-Key": key}
    with _serving(["--port", str(port)], env, log):
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


def test_infinity_assets_serve_serves_each_corpus_given_by_name_and_root(corpus, second, seaweedfs,
                                                                       infinity_server, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_", "AWS_"))}
    env |= {"AWS_ENDPOINT_URL": seaweedfs.endpoint_url, "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
            "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key}
    log = tmp_path / "serve.log"
    args = ["--port", str(port), "--url", infinity_server.url, "--corpus", f"docs=s3://{corpus.bucket}",
            "--corpus", f"memos=s3://{second.bucket}"]
    url = f"http://127.0.0.1:{port}"
    with _serving(args, env, log):
        listed = httpx.get(f"{url}/corpora", timeout=60).json()
        assert [(c["name"], c["indexes"]["text"]["model"]) for c in listed["corpora"]] == [
            ("docs", TEXT_MODEL), ("memos", "minilm-colbert")]
        answer = httpx.get(f"{url}/search", params={"q": "a string quartet", "corpus": "memos"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert [hit["doc_id"] for hit in answer.json()["hits"]] == ["violins.txt"]
    output = log.read_text()
    assert f"docs: s3://{corpus.bucket} (text queries by the index model at {infinity_server.url}" in output
    assert f"memos: s3://{second.bucket} (" in output
    assert seaweedfs.secret_key not in output and "Traceback" not in output


@pytest.mark.parametrize(("args", "message"), [
    (["--corpus", "docs"], "write NAME=ROOT, e.g. --corpus docs=s3://bucket/docs"),
    (["--corpus", "Docs=s3://b"], "the name 'Docs' must be lowercase letters"),
    (["--corpus", "a=s3://b", "--corpus", "a=s3://c"], "--corpus a is given twice"),
])
def test_serve_refuses_a_corpus_option_it_cannot_use_with_exit_2(args, message, capsys):
    from infinity_assets.cli import main

    try:
        code = main(["serve", *args])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err


def test_serve_says_which_corpus_has_a_bad_root(tmp_path, capsys):
    from infinity_assets.cli import main

    assert main(["serve", "--corpus", "docs=ftp://host/docs"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("infinity-assets: corpus 'docs' (--corpus docs=ftp://host/docs): "
                            "root='ftp://host/docs'")
    assert "use a local folder, file:// or s3://bucket/prefix" in error
