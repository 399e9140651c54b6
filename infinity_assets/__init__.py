"""Dagster components that embed documents from object storage with a self-hosted Infinity server.

One corpus per :class:`InfinityCorpusComponent` instance in a Dagster project (``dg scaffold defs
infinity_assets.InfinityCorpusComponent manuals``). The Infinity client works without Dagster::

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
    "InfinityCorpusComponent",
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


#: Names that import Dagster (seconds): loaded when first asked for, so the client and the CLI start fast.
_DAGSTER_NAMES = {"InfinityResource": "resources", "DocumentStoreResource": "resources",
                  "InfinityCorpusComponent": "component"}


def __getattr__(name: str):
    if name in _DAGSTER_NAMES:
        import importlib

        return getattr(importlib.import_module(f"infinity_assets.orchestration.{_DAGSTER_NAMES[name]}"), name)
    raise AttributeError(f"module 'infinity_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    # `dg list components` finds the component by listing this module (dagster_dg_cli.registry_modules).
    return sorted([*globals(), *_DAGSTER_NAMES])
