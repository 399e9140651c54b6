"""The client's typed errors at their documented import path; they live in :mod:`infinity_assets.client.errors`."""
from infinity_assets.client.errors import (  # noqa: F401
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
