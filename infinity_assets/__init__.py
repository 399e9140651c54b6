"""Dagster assets that embed documents from object storage with a self-hosted Infinity server.

The Infinity client works without Dagster::

    from infinity_assets import InfinityEmbeddings
"""
from infinity_assets.client.embeddings import ClientStats, InfinityEmbeddings
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

__version__ = "0.1.0"

__all__ = [
    "BatchEmbeddingError",
    "ClientStats",
    "DocumentStoreResource",
    "InfinityAuthenticationError",
    "InfinityBadRequestError",
    "InfinityConnectionError",
    "InfinityEmbeddings",
    "InfinityError",
    "InfinityRateLimitError",
    "InfinityResponseError",
    "InfinityServerError",
    "InfinityStatusError",
    "InfinityResource",
    "InfinityTimeoutError",
    "InvalidInputError",
    "__version__",
]


def __getattr__(name: str):
    # The Dagster resources import dagster (slow); load them only when asked for.
    if name in ("InfinityResource", "DocumentStoreResource"):
        from infinity_assets.orchestration import resources

        return getattr(resources, name)
    raise AttributeError(f"module 'infinity_assets' has no attribute {name!r}")
