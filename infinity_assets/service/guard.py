"""What stands between a request and the search: the API key, bounded parameters, and errors as JSON answers.

* :class:`ApiKeyMiddleware`: with a key set, every route but ``/health`` needs it, as ``Authorization: Bearer
  <key>``, ``X-API-Key: <key>``, or HTTP Basic with the key as password (what a browser sends after its own
  login prompt, so ``<img>`` thumbnails work too). Compared with :func:`hmac.compare_digest`.
* :class:`Invalid` and the ``*_param`` readers: a bad or out-of-bounds parameter is a 422 naming it and its
  limit.
* :func:`answer_errors`: an endpoint's exceptions become JSON answers: 404 (not indexed, or no such corpus:
  the answer lists the served ones), 409 (ambiguous or changed), 413 (a source file over the limit), 422, 503
  (no index, Infinity or the store unreachable, with the reason) and, for a bug, a 500 without the stack trace
  (which goes to the log). An answer about a corpus's data names the corpus (``corpus 'docs': ...``). Every
  message is redacted of secrets first.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hmac
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from infinity_assets.client.errors import InfinityError
from infinity_assets.index import SearchIndexError
from infinity_assets.service.config import redact
from infinity_assets.service.corpora import UnknownCorpus
from infinity_assets.service.pages import DocumentConflict, DocumentNotFound, DocumentTooLarge
from infinity_assets.storage.documents import DocumentStoreError
from infinity_assets.storage.modality import MODALITIES

logger = logging.getLogger("infinity_assets.service")
PUBLIC_PATHS = frozenset({"/health"})
#: The answers about a corpus's data, whose message starts with the corpus's name (and which carry it).
CORPUS_ERRORS = frozenset({404, 409, 413, 503})


class Invalid(ValueError):
    """A request parameter is missing, malformed or out of bounds (a 422; ``limit`` names the bound)."""

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class ApiKeyMiddleware:
    """Refuses requests without the API key (401) on every path but :data:`PUBLIC_PATHS`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.key = app, api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if any(hmac.compare_digest(given, self.key) for given in _offered_keys(headers)):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"error": "this service needs its API key (INFINITY_ASSETS_SERVE_API_KEY): send "
                      "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"},
            status_code=401, headers={"WWW-Authenticate": 'Basic realm="infinity-assets", charset="UTF-8"'})
        await response(scope, receive, send)


def _offered_keys(headers: dict[bytes, bytes]) -> list[bytes]:
    offered = [headers[b"x-api-key"]] if b"x-api-key" in headers else []
    scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
    if scheme.lower() == b"bearer":
        offered.append(value.strip())
    elif scheme.lower() == b"basic":
        try:
            offered.append(base64.b64decode(value.strip(), validate=True).partition(b":")[2])
        except (binascii.Error, ValueError):
            pass
    return offered


# ------------------------------------------------------------------------------------------- parameters
def modality_param(value: str | None) -> str:
    """``text`` (default) or ``images``."""
    value = value or "text"
    if value not in MODALITIES:
        raise Invalid(f"modality must be 'text' or 'images', got {value[:40]!r}")
    return value


def text_param(request: Request, name: str, limit: int) -> str:
    """A required text parameter of at most ``limit`` characters."""
    value = request.query_params.get(name, "")
    if not value.strip():
        raise Invalid(f"parameter {name!r} is required (the query text)")
    if len(value) > limit:
        raise Invalid(f"parameter {name!r} is {len(value):,} characters long; the limit is {limit:,}", limit)
    return value


def int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An optional integer parameter within ``[low, high]``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"parameter {name!r} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise Invalid(f"parameter {name!r} is {value}; it must be between {low} and {high} (limit {high})", high)
    return value


def bool_param(request: Request, name: str) -> bool:
    """An optional boolean parameter (``true``/``1``/``yes`` or ``false``/``0``/``no``; default false)."""
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "1", "yes", "false", "0", "no", ""):
        raise Invalid(f"parameter {name!r} must be true or false, got {raw[:40]!r}")
    return raw in ("true", "1", "yes")


# ------------------------------------------------------------------------------------------- errors
Endpoint = Callable[[Request], Awaitable[Response]]


def answer_errors(hidden: Callable[[], list[str]]) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint so its exceptions are JSON answers (see the module docstring); ``hidden`` gives
    the secret values to remove from every message."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Exception as exc:  # noqa: BLE001 -- every failure becomes an answer, never a trace
                status, body = _error_answer(exc)
                corpus = getattr(request.state, "corpus", None)
                if corpus is not None and status in CORPUS_ERRORS:
                    body = {"error": f"corpus {corpus!r}: {body['error']}", "corpus": corpus,
                            **{k: v for k, v in body.items() if k != "error"}}
                body["error"] = redact(str(body["error"]), hidden())
                if status >= 500 and status != 503:
                    logger.error("%s %s failed: %s", request.method, request.url.path,
                                 redact(traceback.format_exc(), hidden()))
                elif status == 503:
                    logger.warning("%s %s: %s", request.method, request.url.path, body["error"])
                return JSONResponse(body, status_code=status)

        return guarded

    return decorate


def _error_answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, UnknownCorpus):
        return 404, {"error": str(exc), "corpora": exc.known}
    if isinstance(exc, Invalid):
        return 422, {"error": str(exc), **({"limit": exc.limit} if exc.limit is not None else {})}
    if isinstance(exc, DocumentNotFound):
        return 404, {"error": str(exc)}
    if isinstance(exc, DocumentConflict):
        return 409, {"error": str(exc)}
    if isinstance(exc, DocumentTooLarge):
        return 413, {"error": str(exc)}
    if isinstance(exc, SearchIndexError):
        return 503, {"error": f"the index cannot answer: {exc}"}
    if isinstance(exc, InfinityError):
        return 503, {"error": f"the Infinity server cannot embed the query: {exc}"}
    if isinstance(exc, DocumentStoreError):
        return 503, {"error": f"the document store cannot be read: {exc}"}
    return 500, {"error": f"internal error ({type(exc).__name__}); the service log has the details"}


class RedactingFilter(logging.Filter):
    """A logging filter that removes secrets from every record it passes: the message, each string argument
    (the arguments keep their shape: uvicorn's access formatter unpacks them) and the exception text."""

    def __init__(self, hidden: Callable[[], list[str]]) -> None:
        super().__init__()
        self.hidden = hidden

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.hidden()

        def clean(value: Any) -> Any:
            return redact(value, secrets) if isinstance(value, str) else value

        record.msg = clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: clean(value) for key, value in record.args.items()}
        if record.exc_info:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)), secrets)
            record.exc_info = None
        return True
