"""The OpenAPI 3.1 description of the service (``GET /openapi.json``), written by hand beside the routes.

Hand-written because the routes read their parameters themselves (bounds and messages of
:mod:`infinity_assets.service.guard`); the limits in it are the running service's.
"""
from __future__ import annotations

from typing import Any

from infinity_assets import __version__
from infinity_assets.service.config import ServiceSettings


def _param(name: str, schema: dict[str, Any], description: str, *, required: bool = False,
           where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": description}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {304: "Not modified (If-None-Match matched the ETag)", 401: "API key missing or wrong",
               404: "Not in the index, or no such corpus (the answer lists the served ones)",
               409: "Ambiguous doc_id or changed since indexed",
               413: "The source file is over the service's limit (named in the answer)",
               422: "A parameter is invalid or over its limit (named in the answer)",
               503: "The index, the Infinity server or the store cannot answer (the reason is given)"}
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(c): {"description": meaning[c], **(ref if c != 304 else {})} for c in codes}


def openapi_schema(settings: ServiceSettings, corpora: list[str] | None = None) -> dict[str, Any]:
    """The description of every route, with this service's limits and ``corpora`` (the default first)."""
    corpora = corpora or ["default"]
    modality = {"type": "string", "enum": ["text", "images"], "default": "text"}
    corpus = _param("corpus", {"type": "string", "enum": corpora, "default": corpora[0]},
                    "Which corpus (GET /corpora lists them with their indexes).")
    doc_path = [corpus, _param("modality", {"type": "string", "enum": ["text", "images"]}, "Which index.",
                               required=True, where="path"),
                _param("doc_id", {"type": "string"}, "The hit's doc_id, URL-encoded (a PDF page is "
                       "'<key>#page=<n>').", required=True, where="path"),
                _param("partition", {"type": "string"}, "The hit's batch (needed if the doc_id is in several).")]
    size = _param("size", {"type": "integer", "minimum": settings.min_size, "maximum": settings.max_size},
                  "Longest side of a thumbnail in pixels (PNG); absent: the page at its rendered size.")
    query = _param("q", {"type": "string", "minLength": 1, "maxLength": settings.max_query_chars},
                   "The query text.", required=True)
    security = [{"bearer": []}, {"apiKey": []}, {"basic": []}] if settings.api_key else []
    image = {"200": {"description": "The picture", "content": {"image/png": {}, "image/*": {}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "infinity-assets search API", "version": __version__,
                 "description": "Search the LanceDB index of the infinity_assets artifacts and see the pages."},
        "security": security,
        "paths": {
            "/health": {"get": {"summary": "Liveness (no API key needed)", "security": [],
                                "responses": {"200": {"description": "Running"}}}},
            "/corpora": {"get": {
                "summary": "The corpora served, each with its root and, per modality, its index's model",
                "responses": {"200": {"description": "The corpora, the default named", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Corpora"}}}},
                    **_errors(401)}}},
            "/search": {"get": {
                "summary": "Search an index of a corpus with a text query (two-stage by default)",
                "parameters": [query, corpus, _param("modality", modality, "Which index."),
                               _param("k", {"type": "integer", "minimum": 1, "maximum": settings.max_k,
                                            "default": settings.default_k}, "Number of hits."),
                               _param("exact", {"type": "boolean", "default": False}, "Exact full scan.")],
                "responses": {"200": {"description": "Hits, best first", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SearchAnswer"}}}},
                    **_errors(401, 404, 422, 503)}}},
            "/pages/{modality}/{doc_id}": {"get": {
                "summary": "The page picture of an indexed document (rendered PDF page or stored image)",
                "parameters": [*doc_path, size], "responses": {**image, **_errors(304, 401, 404, 409, 422, 503)}}},
            "/sources/{modality}/{doc_id}": {"get": {
                "summary": "The source file of an indexed document, as stored",
                "parameters": doc_path, "responses": {"200": {"description": "The file"},
                                                      **_errors(401, 404, 409, 413, 503)}}},
            "/similarity/{modality}/{doc_id}": {"get": {
                "summary": "Which patches of a page matched the query (ColPali-style models only)",
                "parameters": [*doc_path, query, _param("format", {"type": "string", "enum": ["json", "png"],
                                                                   "default": "json"}, "A grid or an overlay."),
                               size],
                "responses": {"200": {"description": "The grid (JSON) or an RGBA overlay (PNG)"},
                              **_errors(401, 404, 409, 422, 503)}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                                "basic": {"type": "http", "scheme": "basic",
                                          "description": "Any user name, the API key as password."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"}, "limit": {"type": "integer"},
                    "corpus": {"type": "string", "description": "The corpus the error is about."},
                    "corpora": {"type": "array", "items": {"type": "string"},
                                "description": "The corpora served (when the one asked for is not)."}}},
                "Index": {"type": "object", "description": "An index that answers (model, hidden_dim, "
                          "documents, query_model, local_copy) or why it cannot (error).", "properties": {
                              "model": {"type": "string"}, "hidden_dim": {"type": "integer"},
                              "documents": {"type": "integer"}, "query_model": {"type": "string"},
                              "local_copy": {"type": "object", "description": "Where the reader's local copy "
                                             "stands (copy: off, copying, ready or failed), where the "
                                             "rerank reads its rows (rerank_rows: the copy or the table, and "
                                             "why) and, while a column is being copied, how far it is "
                                             "(progress: 12 of 40 fragments of embedding copied).",
                                             "properties": {"copy": {"type": "string"},
                                                            "rerank_rows": {"type": "string"},
                                                            "progress": {"type": "string"}}},
                              "error": {"type": "string"}}},
                "Corpora": {"type": "object", "required": ["default", "corpora"], "properties": {
                    "default": {"type": "string"},
                    "corpora": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "root": {"type": "string"},
                        "modalities": {"type": "array", "items": {"type": "string"}},
                        "indexes": {"type": "object", "additionalProperties": {
                            "$ref": "#/components/schemas/Index"}}}}}}},
                "Hit": {"type": "object", "required": ["doc_id", "score", "source_uri", "page", "snippet"],
                        "properties": {
                            "doc_id": {"type": "string"}, "score": {"type": "number"},
                            "source_uri": {"type": "string"}, "partition": {"type": "string"},
                            "page": {"type": ["integer", "null"]}, "snippet": {"type": "string"},
                            "image_url": {"type": "string", "description": "Page picture (images only)."},
                            "source_url": {"type": "string"},
                            "similarity_url": {"type": "string", "description": "ColPali-style models only."}}},
                "SearchAnswer": {"type": "object", "properties": {
                    "corpus": {"type": "string"}, "query": {"type": "string"},
                    "modality": {"type": "string"}, "k": {"type": "integer"},
                    "model": {"type": "string"}, "similarity_map": {"type": "boolean"},
                    "seconds": {"type": "number"},
                    "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}}}},
            },
        },
    }
