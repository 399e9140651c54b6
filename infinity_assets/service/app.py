"""The Starlette application of ``infinity-assets serve``: the search API, page pictures, the viewer page.

Routes (the OpenAPI description at ``/openapi.json`` has the parameters and limits):
``GET /search``, ``GET /pages/<modality>/<doc_id>``, ``GET /sources/<modality>/<doc_id>``,
``GET /similarity/<modality>/<doc_id>``, ``GET /health``, ``GET /`` (the viewer, plain HTML and JS from
``static/``). Search is :func:`infinity_assets.index.search_text`, the CLI's; the store and the clients are
built from the CLI's environment (:mod:`infinity_assets.settings`); one index reader per modality stays open
across requests and follows the index's commits (:class:`~infinity_assets.service.pages.OpenReaders`).
Blocking work (embedding the query, LanceDB, rendering) runs in Starlette's thread pool, so a slow request does
not hold the others.
"""
from __future__ import annotations

import json
import logging
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

from infinity_assets import settings as env_settings
from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.index import SearchIndexError, search_text
from infinity_assets.service import pages, similarity
from infinity_assets.service.config import ServiceSettings, secrets
from infinity_assets.service.guard import (
    ApiKeyMiddleware, Invalid, answer_errors, bool_param, int_param, modality_param, text_param,
)
from infinity_assets.service.openapi import openapi_schema
from infinity_assets.storage.documents import DocumentStore

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
    """What the routes share: the store, one client per modality, the limits and the picture cache."""

    def __init__(self, store: DocumentStore, clients: dict[str, InfinityEmbeddings], limits: ServiceSettings,
                 client_keys: tuple[str | None, ...] = ()) -> None:
        self.store, self.clients, self.limits, self.client_keys = store, clients, limits, client_keys
        self.cache = pages.PictureCache(limits.cache_bytes)
        self.readers = pages.OpenReaders(store)

    def lookup(self, modality: str, doc_id: str, partition: str | None) -> pages.IndexedDocument:
        """The indexed row of a document, in the open reader's table (blocking: call in a worker thread)."""
        return pages.lookup(self.store, modality, doc_id, partition, self.readers.get(modality))

    def search(self, query: str, modality: str, k: int, exact: bool) -> list[Any]:
        """:func:`search_text` on the open reader of ``modality`` (blocking: call in a worker thread)."""
        reader = self.readers.get(modality)
        return search_text(self.store, self.clients[modality], query, modality, k, exact=exact, reader=reader)

    def hidden(self) -> list[str]:
        """The secrets to keep out of answers and logs (environment, clients' keys, store secret)."""
        store_secret = getattr(self.store.fs, "secret", None) if self.store.is_s3 else None
        return secrets((self.limits.api_key, store_secret, *self.client_keys))

    def close(self) -> None:
        """Close the clients."""
        for client in self.clients.values():
            client.close()


def create_app(store: DocumentStore | None = None, clients: dict[str, InfinityEmbeddings] | None = None,
               limits: ServiceSettings | None = None) -> Starlette:
    """The application; unset parts come from the environment (as ``infinity-assets search`` reads it).

    ``clients`` maps ``text`` and ``images`` to their :class:`InfinityEmbeddings` (closed with the app); their
    API keys are kept out of answers when they come from the environment (``INFINITY_*API_KEY``)."""
    store = store or env_settings.build_store()
    keys: list[str | None] = []
    if clients is None:
        options = {m: env_settings.client_settings(env_settings.env_prefix_for(m)) for m in ("text", "images")}
        clients = {m: InfinityEmbeddings(**o) for m, o in options.items()}
        keys = [o["api_key"] for o in options.values()]
    service = Service(store, clients, limits or ServiceSettings.from_env(), tuple(keys))
    guarded = answer_errors(service.hidden)
    files = {path: ((STATIC / name).read_bytes(), kind) for path, (name, kind) in STATIC_FILES.items()}

    async def static_file(request: Request) -> Response:
        body, kind = files[request.url.path]
        return Response(body, media_type=kind, headers={"Content-Security-Policy": CSP,
                                                        "X-Content-Type-Options": "nosniff",
                                                        "Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    schema = openapi_schema(service.limits)

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    @guarded
    async def search(request: Request) -> Response:
        limits = service.limits
        query = text_param(request, "q", limits.max_query_chars)
        modality = modality_param(request.query_params.get("modality"))
        k = int_param(request, "k", limits.default_k, 1, limits.max_k)
        exact = bool_param(request, "exact")
        client = service.clients[modality]
        started = time.perf_counter()
        hits = await run_in_threadpool(service.search, query, modality, k, exact)
        maps = modality == "images" and similarity.has_patch_grid(client.model_name)
        answers = []
        for hit in hits:
            answer = hit.to_json()
            where = _doc_path(modality, hit.doc_id, hit.partition)
            answer["source_url"] = f"/sources/{where}"
            if modality == "images":
                answer["image_url"] = f"/pages/{where}"
                if maps:
                    answer["similarity_url"] = f"/similarity/{where}&{urlencode({'q': query})}"
            answers.append(answer)
        return _json({"query": query, "modality": modality, "k": k, "model": client.model_name,
                      "similarity_map": maps, "seconds": round(time.perf_counter() - started, 6),
                      "hits": answers})

    @guarded
    async def page_picture(request: Request) -> Response:
        modality, doc_id, partition = _doc_params(request)
        size = int_param(request, "size", None, service.limits.min_size, service.limits.max_size)
        document = await run_in_threadpool(service.lookup, modality, doc_id, partition)
        tag = pages.etag(service.store, document, size)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"}
        if _matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        found = service.cache.get(tag)
        if found is None:
            found = await run_in_threadpool(pages.picture, service.store, document, size)
            service.cache.put(tag, found)
        return Response(found[0], media_type=found[1], headers=headers)

    @guarded
    async def source_file(request: Request) -> Response:
        modality, doc_id, partition = _doc_params(request)
        document = await run_in_threadpool(service.lookup, modality, doc_id, partition)
        tag = pages.etag(service.store, document, -1)
        headers = {"ETag": tag, "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": "sandbox",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(pages.source_key(document))}"}
        if _matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
        data = await run_in_threadpool(pages.read_source, service.store, document,
                                       service.limits.max_source_bytes)
        return Response(data, media_type=pages.media_type(document), headers=headers)

    @guarded
    async def similarity_map(request: Request) -> Response:
        modality, doc_id, partition = _doc_params(request)
        query = text_param(request, "q", service.limits.max_query_chars)
        kind = request.query_params.get("format", "json")
        if kind not in ("json", "png"):
            raise Invalid(f"parameter 'format' must be 'json' or 'png', got {kind[:40]!r}")
        size = int_param(request, "size", DEFAULT_OVERLAY_SIZE, service.limits.min_size, service.limits.max_size)
        client = service.clients[modality]
        document = await run_in_threadpool(service.lookup, modality, doc_id, partition)
        grid_shape = similarity.patch_grid(document.model, document.n_vectors)
        if grid_shape is None:
            raise pages.DocumentNotFound(f"no similarity map for {doc_id!r}: "
                                         + similarity.no_map_reason(document.model))
        if client.model_name != document.model:
            raise SearchIndexError(f"the {modality} index was built with model {document.model!r} but queries are "
                                   f"embedded with {client.model_name!r}")
        query_vectors = await run_in_threadpool(client.embed_query, query)
        vectors = await run_in_threadpool(similarity.page_vectors, service.store, document)
        grid = similarity.similarity_grid(query_vectors, vectors, grid_shape)
        if kind == "png":
            return Response(similarity.overlay_png(grid, size), media_type="image/png",
                            headers={"Cache-Control": "private, no-cache"})
        return _json({"doc_id": document.doc_id, "partition": document.partition, "model": document.model,
                      "rows": grid_shape[0], "cols": grid_shape[1],
                      "aggregate": "max over query tokens of the cosine similarity with each patch",
                      "grid": [[round(float(v), 5) for v in row] for row in grid]})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    routes = [Route(path, static_file) for path in STATIC_FILES] + [
        Route("/health", health), Route("/openapi.json", openapi), Route("/search", search),
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


def _doc_path(modality: str, doc_id: str, partition: str) -> str:
    return f"{modality}/{quote(doc_id, safe='')}?{urlencode({'partition': partition})}"


def _doc_params(request: Request) -> tuple[str, str, str | None]:
    modality = request.path_params["modality"]
    if modality not in ("text", "images"):
        raise pages.DocumentNotFound(f"no index {modality[:40]!r}: use text or images")
    return modality, request.path_params["doc_id"], request.query_params.get("partition")


def _matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    offered = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in offered or tag in offered


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
