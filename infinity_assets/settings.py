"""Client, store and corpus settings from environment variables, in plain Python (no Dagster).

The one place that says what ``INFINITY_*`` (with an ``INFINITY_IMAGE_*``-style prefix read first),
``INFINITY_ASSETS_ROOT``, ``AWS_*``, ``INFINITY_PDF_*`` and ``INFINITY_ASSETS_*`` mean. The single
env-configured code location (:mod:`infinity_assets.definitions`) resolves them into a corpus with
:func:`corpus_from_env`; the Dagster resources (:mod:`infinity_assets.orchestration.resources`) fill the fields
their config leaves unset through these functions; the CLI and the service call them directly (typed:
:func:`store_from_env`, :func:`query_settings_from_env`), so they start without importing Dagster (seconds)
and read the environment exactly as a run does.

Nothing is read at import time: every function reads ``os.environ`` when it is called.

Example::

    from infinity_assets.settings import build_client, build_store

    store = build_store()                                  # $INFINITY_ASSETS_ROOT, AWS_*
    with build_client("INFINITY_IMAGE_") as client:        # INFINITY_IMAGE_MODEL, else INFINITY_MODEL, ...
        ...
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from infinity_assets.artifacts.schema import vector_encoding
from infinity_assets.client.embeddings import DEFAULT_MODEL, DEFAULT_URL, InfinityEmbeddings
from infinity_assets.corpus import ClientSettings, CorpusSpec, IndexSettings, StoreSettings
from infinity_assets.index.schema import EncodingSettings
from infinity_assets.index.staged import SearchSettings
from infinity_assets.storage.documents import DocumentStore, PdfSettings

#: The client option each environment variable sets (``<prefix>MODEL`` is read before ``INFINITY_MODEL``).
INFINITY_ENV = {
    "url": "INFINITY_API_URL",
    "model_name": "INFINITY_MODEL",
    "encoding": "INFINITY_ENCODING",
    "hidden_dim": "INFINITY_HIDDEN_DIM",
    "timeout": "INFINITY_TIMEOUT",
    "max_retries": "INFINITY_MAX_RETRIES",
    "embed_batch_size": "INFINITY_BATCH_SIZE",
    "max_concurrency": "INFINITY_MAX_CONCURRENCY",
    "api_key": "INFINITY_API_KEY",
}
#: The client options' defaults when neither config nor the environment sets them.
CLIENT_DEFAULTS: dict[str, Any] = {
    "url": DEFAULT_URL, "model_name": DEFAULT_MODEL, "encoding": "base64", "hidden_dim": 128, "timeout": 60.0,
    "max_retries": 3, "embed_batch_size": 10, "max_concurrency": 4, "api_key": None,
}
#: The store option each environment variable sets.
STORE_ENV = {"root": "INFINITY_ASSETS_ROOT", "endpoint_url": "AWS_ENDPOINT_URL",
             "access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
             "region": "AWS_REGION"}
DEFAULT_ROOT = "./.data"
#: The environment prefix of the image client (a second server or model for page images).
IMAGE_PREFIX = "INFINITY_IMAGE_"


def env_prefix_for(modality: str) -> str:
    """``INFINITY_IMAGE_`` for ``images``, ``INFINITY_`` for ``text``: whose variables are read first."""
    return IMAGE_PREFIX if modality in ("images", "image") else "INFINITY_"


def client_settings(env_prefix: str = "INFINITY_", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`InfinityEmbeddings` keyword arguments: ``overrides`` (None values ignored), then
    ``<env_prefix><NAME>``, then ``INFINITY_<NAME>``, then :data:`CLIENT_DEFAULTS`.

    ``INFINITY_HIDDEN_DIM=auto`` (or an override of 0) means "detect it from the server" (``hidden_dim=None``).
    Raises ``ValueError`` naming the variable for a value that does not parse.
    """
    overrides = overrides or {}
    settings: dict[str, Any] = {}
    for name, env_name in INFINITY_ENV.items():
        value = overrides.get(name)
        if value is None:
            own_name = env_prefix + env_name.removeprefix("INFINITY_")
            env_name = own_name if os.environ.get(own_name) else env_name
            raw = os.environ.get(env_name)
            value = _parse_env(name, env_name, raw) if raw not in (None, "") else CLIENT_DEFAULTS[name]
        settings[name] = value
    if settings["hidden_dim"] == 0:
        settings["hidden_dim"] = None
    if settings["encoding"] not in ("base64", "float"):
        raise ValueError(
            f"the Infinity encoding must be 'base64' or 'float', got {settings['encoding']!r} "
            f"(from config or ${env_prefix}ENCODING / ${INFINITY_ENV['encoding']})")
    return settings


def build_client(env_prefix: str = "INFINITY_", **overrides: Any) -> InfinityEmbeddings:
    """A new :class:`InfinityEmbeddings` with :func:`client_settings`; the caller closes it."""
    return InfinityEmbeddings(**client_settings(env_prefix, overrides))


def _parse_env(name: str, env_name: str, raw: str) -> Any:
    try:
        if name == "hidden_dim":
            return 0 if raw.strip().lower() in ("auto", "none", "detect") else int(raw)
        if name == "timeout":
            return float(raw)
        if name in ("max_retries", "embed_batch_size", "max_concurrency"):
            return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {env_name}={raw!r} is not a valid {name}") from None
    return raw


def store_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``root``, ``endpoint_url``, ``access_key_id``, ``secret_access_key``, ``region``: ``overrides`` (None
    ignored), then ``INFINITY_ASSETS_ROOT`` (default ``./.data``) and the store's own ``AWS_*`` reading."""
    overrides = overrides or {}
    settings = {name: overrides.get(name) for name in STORE_ENV}
    settings["root"] = settings["root"] or os.environ.get(STORE_ENV["root"]) or DEFAULT_ROOT
    return settings  # unset AWS_* fields stay None: ObjectStore reads those variables itself


def build_store(*, pdf: PdfSettings | None = None, jsonl_id_field: str = "id", jsonl_text_field: str = "text",
                **overrides: Any) -> DocumentStore:
    """A :class:`DocumentStore` from :func:`store_settings` (``pdf`` defaults to ``INFINITY_PDF_*``)."""
    settings = store_settings(overrides)
    return DocumentStore(
        settings["root"], endpoint_url=settings["endpoint_url"], key=settings["access_key_id"],
        secret=settings["secret_access_key"], region=settings["region"], jsonl_id_field=jsonl_id_field,
        jsonl_text_field=jsonl_text_field, pdf=pdf or PdfSettings.from_env())


def client_from_env(env_prefix: str = "INFINITY_") -> ClientSettings:
    """The :class:`ClientSettings` of :func:`client_settings` (``hidden_dim`` None: detect it), with
    ``$<prefix>HTTP_TRANSPORT`` / ``$INFINITY_HTTP_TRANSPORT``."""
    own = os.environ.get(env_prefix + "HTTP_TRANSPORT") or os.environ.get("INFINITY_HTTP_TRANSPORT") or None
    return ClientSettings(**client_settings(env_prefix), http_transport=own)


def store_from_env(**overrides: Any) -> StoreSettings:
    """The :class:`StoreSettings` of :func:`store_settings` (S3 fields left unset read ``AWS_*`` in the store)."""
    return StoreSettings(**store_settings(overrides))


def model_from_env(env_prefix: str = "INFINITY_") -> str | None:
    """The model ``$<prefix>MODEL``, else ``$INFINITY_MODEL`` names; None when neither is set."""
    return os.environ.get(env_prefix + "MODEL") or os.environ.get("INFINITY_MODEL") or None


@dataclass(frozen=True)
class QuerySettings:
    """How the queries of one index are embedded: the Infinity server's client settings, and whether the model
    is ``pinned`` (a flag or ``INFINITY_MODEL`` named it) or the one the index records.

    An index table records the model and hidden_dim it was built with, so an unpinned query needs only the
    server (one Infinity server normally serves several models). A pinned model that differs from the index's
    is refused by the search with a message saying so (:meth:`IndexReader.check_settings`).

    Example::

        queries = query_settings_from_env("images")   # $INFINITY_IMAGE_API_URL, else $INFINITY_API_URL
        reader = IndexReader(store, "images")
        with queries.for_index(reader.model, reader.hidden_dim).build_client() as client:
            ...
    """

    client: ClientSettings
    pinned: bool = False

    def for_index(self, model: str, hidden_dim: int | None) -> ClientSettings:
        """The client settings for an index of ``model`` / ``hidden_dim`` (unless the model is pinned)."""
        if self.pinned:
            return self.client
        return replace(self.client, model_name=model, hidden_dim=hidden_dim)

    @property
    def model(self) -> str | None:
        """The pinned model, or None (each index's own)."""
        return self.client.model_name if self.pinned else None


def query_settings_from_env(modality: str, *, url: str | None = None, model: str | None = None,
                            env_model: bool = True) -> QuerySettings:
    """The :class:`QuerySettings` of ``modality`` (``text`` or ``images``): ``url`` else ``$INFINITY_API_URL``
    (``INFINITY_IMAGE_*`` read first for images), the API key and client options from the environment; the
    model pinned by ``model``, else by ``$INFINITY_MODEL`` / ``$INFINITY_IMAGE_MODEL`` when ``env_model``, else
    left to each index. Raises ``ValueError`` naming the variable or setting that does not parse."""
    prefix = env_prefix_for(modality)
    client = client_from_env(prefix)
    pinned = model or (model_from_env(prefix) if env_model else None)
    if url:
        client = replace(client, url=url)
    if pinned:
        client = replace(client, model_name=pinned)
    return QuerySettings(client, pinned=bool(pinned))


def corpus_from_env(name: str = "default") -> CorpusSpec:
    """One corpus with both modalities from the environment: what earlier versions' single code location read.

    Text: ``INFINITY_*``; images: ``INFINITY_IMAGE_*`` then ``INFINITY_*``; store: ``INFINITY_ASSETS_ROOT`` and
    ``AWS_*``; PDF pages: ``INFINITY_PDF_*``; ``INFINITY_ASSETS_VECTOR_ENCODING``;
    ``INFINITY_BACKFILL_PARTITIONS_PER_RUN``; the index's ``INFINITY_ASSETS_INDEX_*`` and
    ``INFINITY_ASSETS_SEARCH_*``. Raises ``ValueError`` naming the variable whose value does not parse.
    """
    per_run = os.environ.get("INFINITY_BACKFILL_PARTITIONS_PER_RUN", "100")
    if not per_run.isdigit() or int(per_run) < 1:
        raise ValueError(f"INFINITY_BACKFILL_PARTITIONS_PER_RUN must be a whole number >= 1, got {per_run!r}")
    return CorpusSpec(
        name=name, store=store_from_env(), text=client_from_env("INFINITY_"), images=client_from_env(IMAGE_PREFIX),
        pdf=PdfSettings.from_env(), vector_encoding=vector_encoding(), backfill_partitions_per_run=int(per_run),
        index=IndexSettings(encoding=EncodingSettings.from_env(), search=SearchSettings.from_env()))
