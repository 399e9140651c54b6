"""The client's decisions, shared by its sync and async paths: no I/O here, only what to do with what came back.

Which failures are retried and how long to wait (``Retry-After`` first, else exponential backoff with full
jitter), which error an HTTP status or a transport failure becomes, whether a detected ``hidden_dim`` fits the
configured one, how inputs become requests (batches, their preparation, how many a batch iterator may hold,
halving a rejected request to find the inputs the server refuses), and how results are merged back into input
order. The I/O layers (:mod:`.sync_io`, :mod:`.async_io`) differ only in how they send and wait, the way
openai-python's ``SyncAPIClient`` and ``AsyncAPIClient`` share their base client's decisions.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
import tenacity

from infinity_assets.client import wire
from infinity_assets.client.errors import (
    BatchEmbeddingError,
    InfinityAuthenticationError,
    InfinityBadRequestError,
    InfinityConnectionError,
    InfinityError,
    InfinityRateLimitError,
    InfinityResponseError,
    InfinityServerError,
    InfinityStatusError,
    InfinityTimeoutError,
    InvalidInputError,
)
from infinity_assets.client.wire import Encoding, Modality

Errors = Literal["raise", "collect"]
#: The text of the one float-encoded request that detects or verifies ``hidden_dim``.
PROBE_TEXT = "hidden_dim probe"
#: Longest wait a server's ``Retry-After`` may impose before a retry, in seconds.
MAX_RETRY_AFTER = 60.0
_T = TypeVar("_T")

# ---------------------------------------------------------------- retries


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed attempt is tried again: connection errors, timeouts, 408, 429, 5xx, damaged bodies."""
    return isinstance(exc, InfinityError) and exc.retryable


_exponential = tenacity.wait_random_exponential(multiplier=0.5, max=10.0)  # "full jitter"


def backoff(state: tenacity.RetryCallState) -> float:
    """Seconds before the next attempt: the server's ``Retry-After`` (at most a minute), else 0.5 s doubling
    per attempt up to 10 s, drawn uniformly below that bound (full jitter)."""
    exc = state.outcome.exception() if state.outcome else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(float(retry_after), MAX_RETRY_AFTER)
    return _exponential(state)


def retry_options(max_retries: int, before_sleep: Callable[[tenacity.RetryCallState], None]) -> dict[str, Any]:
    """tenacity's options for ``max_retries`` retries of retryable failures; the last error is raised as is."""
    return dict(stop=tenacity.stop_after_attempt(max_retries + 1), wait=backoff,
                retry=tenacity.retry_if_exception(is_retryable), before_sleep=before_sleep, reraise=True)


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (``None`` if absent or an HTTP date)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None

# ---------------------------------------------------------------- errors


def status_error(response: httpx.Response, where: str) -> InfinityStatusError:
    """The error for a non-200 answer (its body read), with what the server said; ``where`` names the
    request, the server and the model."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    text = response.text[:300] if payload is None else ""
    message = wire.server_message(payload, text or response.reason_phrase)
    status = response.status_code
    if status in (401, 403):
        return InfinityAuthenticationError(
            f"the Infinity server rejected the API key (HTTP {status}) for {where}: {message}; "
            "set api_key / INFINITY_API_KEY to the server's --api-key", status_code=status, server_message=message)
    if status in (400, 422):
        return InfinityBadRequestError(f"HTTP {status} from {where}: {message}", status_code=status,
                                       server_message=message)
    wait = retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return InfinityRateLimitError(f"the Infinity server is overloaded (HTTP 429) for {where}: {message}",
                                      status_code=status, server_message=message, retry_after=wait)
    if status >= 500 or status == 408:
        return InfinityServerError(f"HTTP {status} from {where}: {message}", status_code=status,
                                   server_message=message, retry_after=wait)
    return InfinityStatusError(f"unexpected HTTP {status} from {where}: {message}", status_code=status,
                               server_message=message)


def transport_error(exc: httpx.HTTPError, url: str, timeout: float) -> InfinityError:
    """The error for a request that got no answer (``url`` already redacted)."""
    if isinstance(exc, httpx.TimeoutException):
        return InfinityTimeoutError(
            f"no answer from the Infinity server at {url} within {timeout:g}s ({type(exc).__name__}); "
            "raise timeout or lower embed_batch_size")
    if isinstance(exc, httpx.ConnectError):
        return InfinityConnectionError(
            f"cannot reach the Infinity server at {url} ({exc}); check that it is running and that "
            "url / INFINITY_API_URL points at it")
    return InfinityConnectionError(
        f"the connection to the Infinity server at {url} broke mid-request ({type(exc).__name__}: {exc}); "
        "check the server's health and any proxy in between")


def checked_dim(configured: int | None, payload: Any, model: str, url: str) -> int:
    """The hidden_dim of a probe's answer; raises if it differs from a ``configured`` one."""
    detected = wire.detect_dim(payload)
    if configured is not None and detected != configured:
        raise InfinityResponseError(
            f"model {model!r} at {url} returns {detected}-dimensional vectors but hidden_dim is {configured}; "
            f"set hidden_dim={detected} (INFINITY_HIDDEN_DIM) or None to detect it")
    return detected

# ---------------------------------------------------------------- batches


def batch_size(embed_batch_size: int, modality: Modality) -> int:
    """Inputs per request: ``embed_batch_size`` within the server's limit for ``modality``."""
    limit = wire.MAX_TEXTS_PER_REQUEST if modality == "text" else wire.MAX_IMAGES_PER_REQUEST
    return min(embed_batch_size, limit)


def batches(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def prepare(items: list[Any], modality: Modality) -> list[str | InvalidInputError]:
    """Each input as the string the server takes (a checked text, an image data URI), or why it cannot be."""
    convert = wire.check_text if modality == "text" else wire.image_data_uri
    prepared: list[str | InvalidInputError] = []
    for item in items:
        try:
            prepared.append(convert(item))
        except InvalidInputError as exc:
            prepared.append(exc)
    return prepared


def sendable(prepared: list[str | InvalidInputError]) -> list[str]:
    """The prepared inputs that go to the server (the others already have their error)."""
    return [p for p in prepared if not isinstance(p, InvalidInputError)]


def halves(inputs: list[_T]) -> tuple[list[_T], list[_T]]:
    """A rejected request's inputs in two, each sent again: bisecting finds the inputs the server refuses."""
    middle = len(inputs) // 2
    return inputs[:middle], inputs[middle:]


def merge(prepared: list[Any], sent_results: list[Any]) -> list[Any]:
    """One result per prepared input, in order: its error if it was refused before sending, else the next
    result of those sent."""
    results = iter(sent_results)
    return [item if isinstance(item, InvalidInputError) else next(results) for item in prepared]


def finish(results: list[Any], errors: Errors) -> list[Any]:
    """``results`` as a batch method returns them: with ``errors="raise"``, any failure raises them all."""
    failures = {i: r for i, r in enumerate(results) if isinstance(r, InfinityError)}
    if failures and errors == "raise":
        raise BatchEmbeddingError(failures, len(results))
    return results


def length(items: Iterable[Any]) -> int | None:
    """How many inputs there are, if that is known without reading them (for the progress bar)."""
    return len(items) if isinstance(items, Sequence) else None


def whole(chunks: list[bytes]) -> bytes:
    """A body from its chunks without copying a lone one (the ``http11`` transport hands a body over whole)."""
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Window:
    """How many batches an iterator may hold (in flight or waiting to be consumed).

    At most ``2 * max_concurrency``; with ``max_bytes``, also no more than fit in it at the largest footprint
    seen so far (until a batch has returned, ``max_concurrency``), and always at least one.
    """

    # Peak bytes of a batch per byte of its float32 vectors: the response body (base64 is 4/3 of the
    # vectors; JSON floats ~5 x, parsed into Python floats ~8 x more) plus the decoded vectors.
    FOOTPRINT = {"base64": 1 + 4 / 3, "float": 14.0}

    def __init__(self, max_concurrency: int, max_bytes: int | None, encoding: Encoding) -> None:
        self.max_concurrency, self.max_bytes = max_concurrency, max_bytes
        self.footprint_ratio = self.FOOTPRINT[encoding]
        self.batch_bytes = 0.0

    def has_room(self, held: int) -> bool:
        """Whether one more batch may be sent while ``held`` batches are held."""
        if held == 0:
            return True
        if held >= 2 * self.max_concurrency:
            return False
        if self.max_bytes is None:
            return True
        if not self.batch_bytes:
            return held < self.max_concurrency
        return (held + 1) * self.batch_bytes <= self.max_bytes

    def fill(self, pending: list[Any] | Any, chunks: Iterator[list[Any]], start: Callable[[list[Any]], Any]) -> None:
        """Start batches from ``chunks`` (appending what ``start`` returns to ``pending``) while there is room."""
        while self.has_room(len(pending)) and (chunk := next(chunks, None)) is not None:
            pending.append(start(chunk))

    def observe(self, results: list[Any]) -> None:
        """Take the size of a returned batch into account."""
        vectors = sum(r.nbytes for r in results if isinstance(r, np.ndarray))
        self.batch_bytes = max(self.batch_bytes, vectors * self.footprint_ratio)
