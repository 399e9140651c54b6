"""Errors raised by the Infinity client.

Every error the client raises is an :class:`InfinityError`; its message says what happened, which server or
input it concerns, and what to do. The hierarchy::

    InfinityError
    ├── InvalidInputError            an input refused before sending (unreadable or tiny image, text too long)
    ├── InfinityConnectionError      the server could not be reached (refused, reset, DNS)   [retried]
    ├── InfinityTimeoutError         no answer within ``timeout`` seconds                     [retried]
    ├── InfinityResponseError        the server answered 200 with something unusable: invalid JSON [retried],
    │                                wrong number of embeddings, payload not a multiple of ``hidden_dim``
    ├── InfinityStatusError          the server answered with an HTTP error status
    │   ├── InfinityBadRequestError      400 / 422: the request (or one input in it) was rejected
    │   ├── InfinityAuthenticationError  401 / 403: missing or wrong API key
    │   ├── InfinityRateLimitError       429: the server's queue is full                      [retried]
    │   └── InfinityServerError          5xx, 408                                              [retried]
    └── BatchEmbeddingError          a batch call with ``errors="raise"`` in which some inputs failed;
                                     ``.failures`` maps input index -> the error of that input

Errors marked [retried] are retried with exponential backoff (``max_retries`` times) before they are raised.
"""
from __future__ import annotations


class InfinityError(Exception):
    """Base class of every error the Infinity client raises."""

    retryable: bool = False


class InvalidInputError(InfinityError):
    """An input was refused before anything was sent (e.g. an image smaller than 3x3 or not an image)."""


class InfinityConnectionError(InfinityError):
    """The server could not be reached: connection refused or reset, unknown host."""

    retryable = True


class InfinityTimeoutError(InfinityError):
    """The server did not answer within the configured ``timeout``."""

    retryable = True


class InfinityResponseError(InfinityError):
    """The server answered, but the answer cannot be turned into embeddings.

    ``retryable`` is True only for bodies that look damaged in transit (invalid JSON).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class InfinityStatusError(InfinityError):
    """The server answered with an HTTP error status; ``server_message`` is what it said."""

    def __init__(self, message: str, *, status_code: int, server_message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message
        self.retry_after = retry_after


class InfinityBadRequestError(InfinityStatusError):
    """HTTP 400 or 422: the server rejected the request or one of its inputs."""


class InfinityAuthenticationError(InfinityStatusError):
    """HTTP 401 or 403: the API key is missing or wrong."""


class InfinityRateLimitError(InfinityStatusError):
    """HTTP 429: the server's queue is full; retried with backoff."""

    retryable = True


class InfinityServerError(InfinityStatusError):
    """HTTP 5xx or 408: the server failed; retried with backoff."""

    retryable = True


class BatchEmbeddingError(InfinityError):
    """Some inputs of a batch call failed; ``failures`` maps each failed input's index to its error.

    Raised by the batch methods with ``errors="raise"`` after every other input was attempted.
    """

    def __init__(self, failures: dict[int, InfinityError], total: int) -> None:
        self.failures = dict(sorted(failures.items()))
        self.total = total
        lines = [f"  input {index}: {error}" for index, error in list(self.failures.items())[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more")
        super().__init__(
            f"{len(self.failures)} of {total} inputs failed to embed "
            f"(pass errors='collect' to keep the others):\n" + "\n".join(lines)
        )
