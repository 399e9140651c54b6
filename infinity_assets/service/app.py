"""The Starlette application of ``infinity-assets serve``: the search API, page pictures, the viewer page.

Routes (the OpenAPI description at ``/openapi.json`` has the parameters and limits):
``GET /corpora``, ``GET /search``, ``GET /pages/<modality>/<doc_id>``, ``GET /sources/<modality>/<doc_id>``,
``GET /similarity/<modality>/<doc_id>``, ``GET /health``, ``GET /`` (the viewer, plain HTML and JS from
``static/``). Every route but ``/health`` and ``/corpora`` takes ``?corpus=<name>`` (default: the first
corpus served; :mod:`.corpora`). Search is :func:`infinity_assets.index.search_text`, the CLI's; each corpus
keeps one index reader per modality open across requests, following the index's commits
(:class:`~infinity_assets.service.pages.OpenReaders`), and its queries are embedded with the model the index
records (one client per distinct setting, shared by the corpora). Blocking work (embedding the query,
LanceDB, rendering) runs in Starlette's thread pool, so a slow request does not hold the others.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.corpus import ClientSettings
from infinity_assets.index import Hit, IndexReader, SearchIndexError, search_text
from infinity_assets.service import pages, similarity
from infinity_assets.service.config import ServiceSettings, redact, secrets
from infinity_assets.service.corpora import ServedCorpus, UnknownCorpus, corpora_from_env
from infinity_assets.storage.modality import MODALITIES
from infinity_assets.service.guard import (
    ApiKeyMiddleware,
    Invalid,
    answer_errors,
    bool_param,
    int_param,
    modality_param,
    text_param,
)
from infinity_assets.service.openapi import openapi_schema

logger = logging.getLogger("infinity_assets.service")
STATIC = Path(__file__).parent / "static"
#: The viewer's files (served from memory; nothing else under static/ is reachable).
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/static/app.css": ("app.css", "text/css; charset=utf-8")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DEFAULT_OVERLAY_SIZE = 448


class Service:
    """What the routes share: the corpora (the first is the default), one client per distinct client setting,
    the limits and the picture cache."""

    def __init__(self, corpora: list[ServedCorpus], limits: ServiceSettings) -> None:
        if not corpora:
            raise ValueError("the service needs at least one corpus (--corpus NAME=ROOT, or "
                             "$INFINITY_ASSETS_ROOT)")
        self.corpora = {c.name: c for c in corpora}
        if len(self.corpora) != len(corpora):
            names = [c.name for c in corpora]
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"corpus name {', '.join(map(repr, twice))} is given twice: give each --corpus "
                             "its own name")
        self.default = corpora[0].name
        self.limits = limits
        self.cache = pages.PictureCache(limits.cache_bytes)
        self._clients: dict[ClientSettings, InfinityEmbeddings] = {}
        self._lock = threading.Lock()

    def corpus(self, name: str | None) -> ServedCorpus:
        """The corpus ``name`` (None or empty: the default); :class:`UnknownCorpus` names the others."""
        found = self.corpora.get(name or self.default)
        if found is None:
            raise UnknownCorpus(name or "", list(self.corpora))
        return found

    def client(self, corpus: ServedCorpus, modality: str, reader: IndexReader) -> InfinityEmbeddings:
        """The client that embeds queries for ``reader``'s index (its model, unless the corpus pins one)."""
        wanted = corpus.queries[modality].for_index(reader.model, reader.hidden_dim)
        with self._lock:
            client = self._clients.get(wanted)
            if client is None:
                client = self._clients[wanted] = wanted.build_client()
            return client

    def lookup(self, corpus: ServedCorpus, modality: str, doc_id: str,
               partition: str | None) -> pages.IndexedDocument:
        """The indexed row of a document, in the open reader's table (blocking: call in a worker thread)."""
        return pages.lookup(corpus.store, modality, doc_id, partition, corpus.readers.get(modality))

    def search(self, corpus: ServedCorpus, query: str, modality: str, k: int,
               exact: bool) -> tuple[list[Hit], str]:
        """:func:`search_text` on the open reader of ``modality``, and the query model (blocking)."""
        reader = corpus.readers.get(modality)
        client = self.client(corpus, modality, reader)
        hits = search_text(corpus.store, client, query, modality, k, exact=exact, settings=corpus.search,
                           reader=reader)
        return hits, client.model_name

    def catalog(self) -> list[dict[str, Any]]:
        """What ``GET /corpora`` answers: each corpus's name, root and, per modality, its index's model,
        hidden_dim, documents and where its reader's local copy stands, or why it cannot answer (blocking:
        opens the readers)."""
        answer = []
        for corpus in self.corpora.values():
            indexes: dict[str, Any] = {}
            for modality in MODALITIES:
                try:
                    reader = corpus.readers.get(modality)
                except SearchIndexError as exc:
                    indexes[modality] = {"error": redact(str(exc), self.hidden())}
                    continue
                indexes[modality] = {"model": reader.model, "hidden_dim": reader.hidden_dim,
                                     "documents": reader.rows,
                                     "query_model": corpus.queries[modality].model or reader.model,
                                     "local_copy": reader.copy_status()}
            answer.append({"name": corpus.name, "root": redact(corpus.store.root_uri, self.hidden()),
                           "modalities": [m for m in MODALITIES if "model" in indexes[m]],
                           "indexes": indexes})
        return answer

    def hidden(self) -> list[str]:
        """The secrets to keep out of answers and logs (environment, clients' keys, stores' secrets)."""
        extra: list[str | None] = [self.limits.api_key]
        for corpus in self.corpora.values():
            extra.append(getattr(corpus.store.fs, "secret", None) if corpus.store.is_s3 else None)
            extra.extend(q.client.api_key for q in corpus.queries.values())
        return secrets(tuple(extra))

    def close(self) -> None:
        """Close the clients."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def create_app(corpora: list[ServedCorpus] | None = None, limits: ServiceSettings | None = None) -> Starlette:
    """The application over ``corpora`` (None: the ``default`` corpus of the environment, as
    ``infinity-assets search`` reads it; :func:`~infinity_assets.service.corpora.corpora_from_env`); the first
    corpus answers requests that name none. Clients are built on first use and closed with the app."""
    service = Service(corpora if corpora is not None else corpora_from_env(),
                      limits or ServiceSettings.from_env())
    guarded = answer_errors(service.hidden)
    files = {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in STATIC_FILES.items()}

    async def static_file(request: Request) -> Response:
        body, kind = files[request.url.path]
        return Response(body, media_type=kind, headers={"Content-Security-Policy": CSP,
                                                        "X-Content-Type-Options": "nosniff",
                                                        "Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    schema = openapi_schema(service.limits, list(service.corpora))

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    @guarded
    async def corpora_list(request: Request) -> Response:
        return _json({"default": service.default, "corpora": await run_in_threadpool(service.catalog)})

    @guarded
    async def search(request: Request) -> Response:
        limits = service.limits
        corpus = _corpus(request, service)
        query = text_param(request, "q", limits.max_query_chars)
        modality = modality_param(request.query_params.get("modality"))
        k = int_param(request, "k", limits.default_k, 1, limits.max_k)
        exact = bool_param(request, "exact")
        started = time.perf_counter()
        hits, model = await run_in_threadpool(service.search, corpus, query, modality, k, exact)
        maps = modality == "images" and similarity.has_patch_grid(model)
        answers = []
        for hit in hits:
            answer = hit.to_json()
            where = _doc_path(corpus.name, modality, hit.doc_id, hit.partition)
            answer["source_url"] = f"/sources/{where}"
            if modality == "images":
                answer["image_url"] = f"/pages/{where}"
                if maps:
                    answer["similarity_url"] = f"/similarity/{where}&{urlencode({'q': query})}"
            answers.append(answer)
        return _json({"corpus": corpus.name, "query": query, "modality": modality, "k": k, "model": model,
                      "similarity_map": maps, "seconds": round(time.perf_counter() - started, 6),
                      "hits": answers})

    @guarded
    async def page_picture(request: Request) -> Response:
        corpus, modality, doc_id, partition = _doc_params(request, service)
        size = int_param(request, "size", None, service.limits.min_size, service.limits.max_size)
        document = await run_in_threadpool(service.lookup, corpus, modality, doc_id, partition)
        tag = pages.etag(corpus.store, document, size)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"}
        if _matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        found = service.cache.get(tag)
        if found is None:
            found = await run_in_threadpool(pages.picture, corpus.store, document, size)
            service.cache.put(tag, found)
        return Response(found[0], media_type=found[1], headers=headers)

    @guarded
    async def source_file(request: Request) -> Response:
        corpus, modality, doc_id, partition = _doc_params(request, service)
        document = await run_in_threadpool(service.lookup, corpus, modality, doc_id, partition)
        tag = pages.etag(corpus.store, document, -1)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": "sandbox",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(pages.source_key(document))}"}
        if _matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        data = await run_in_threadpool(pages.read_source, corpus.store, document,
                                       service.limits.max_source_bytes)
        return Response(data, media_type=pages.media_type(document), headers=headers)

    @guarded
    async def similarity_map(request: Request) -> Response:
        corpus, modality, doc_id, partition = _doc_params(request, service)
        query = text_param(request, "q", service.limits.max_query_chars)
        kind = request.query_params.get("format", "json")
        if kind not in ("json", "png"):
            raise Invalid(f"parameter 'format' must be 'json' or 'png', got {kind[:40]!r}")
        size = int_param(request, "size", DEFAULT_OVERLAY_SIZE, service.limits.min_size, service.limits.max_size)
        document = await run_in_threadpool(service.lookup, corpus, modality, doc_id, partition)
        grid_shape = similarity.patch_grid(document.model, document.n_vectors)
        if grid_shape is None:
            raise pages.DocumentNotFound(f"no similarity map for {doc_id!r}: "
                                         + similarity.no_map_reason(document.model))
        reader = await run_in_threadpool(corpus.readers.get, modality)
        client = service.client(corpus, modality, reader)
        if client.model_name != document.model:
            reader.check_settings(client.model_name, client.hidden_dim)  # the index's clear error
        query_vectors = await run_in_threadpool(client.embed_query, query)
        vectors = await run_in_threadpool(similarity.page_vectors, corpus.store, document)
        grid = similarity.similarity_grid(query_vectors, vectors, grid_shape)
        if kind == "png":
            return Response(similarity.overlay_png(grid, size), media_type="image/png",
                            headers={"Cache-Control": "private, no-cache"})
        return _json({"corpus": corpus.name, "doc_id": document.doc_id, "partition": document.partition,
                      "model": document.model, "rows": grid_shape[0], "cols": grid_shape[1],
                      "aggregate": "max over query tokens of the cosine similarity with each patch",
                      "grid": [[round(float(v), 5) for v in row] for row in grid]})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    routes = [Route(path, static_file) for path in STATIC_FILES] + [
        Route("/health", health), Route("/openapi.json", openapi), Route("/corpora", corpora_list),
        Route("/search", search),
        Route("/pages/{modality}/{doc_id:path}", page_picture),
        Route("/sources/{modality}/{doc_id:path}", source_file),
        Route("/similarity/{modality}/{doc_id:path}", similarity_map),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(ApiKeyMiddleware, api_key=service.limits.api_key)],
                    exception_handlers={404: _not_found, 405: _not_found})
    app.state.service = service
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    code = getattr(exc, "status_code", 404)
    return JSONResponse({"error": f"no route {request.method} {request.url.path[:200]}"}, status_code=code)


def _doc_path(corpus: str, modality: str, doc_id: str, partition: str) -> str:
    return f"{modality}/{quote(doc_id, safe='')}?{urlencode({'corpus': corpus, 'partition': partition})}"


def _corpus(request: Request, service: Service) -> ServedCorpus:
    """The corpus of ``?corpus=`` (default: the service's first), noted on the request for error answers."""
    corpus = service.corpus(request.query_params.get("corpus"))
    request.state.corpus = corpus.name
    return corpus


def _doc_params(request: Request, service: Service) -> tuple[ServedCorpus, str, str, str | None]:
    corpus = _corpus(request, service)
    modality = request.path_params["modality"]
    if modality not in MODALITIES:
        raise pages.DocumentNotFound(f"no index {modality[:40]!r}: use text or images")
    return corpus, modality, request.path_params["doc_id"], request.query_params.get("partition")


def _matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    offered = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in offered or tag in offered


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
