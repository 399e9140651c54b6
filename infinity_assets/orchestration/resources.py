"""Dagster resources that build the plain-Python clients from Dagster config and environment variables.

Nothing here reads the environment at import time: values come from resource config, and whatever config
leaves unset is filled from environment variables when a run starts (``setup_for_execution``), by the same
functions the CLI and the service use (:mod:`infinity_assets.settings`).
"""
from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from infinity_assets import settings
from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.storage.documents import DocumentStore, PdfSettings

#: Environment variables read by :class:`InfinityResource` when its config leaves a field unset.
INFINITY_ENV = settings.INFINITY_ENV


class InfinityResource(dg.ConfigurableResource):
    """An Infinity embedding server, as a Dagster resource.

    Every field is optional: an unset field is read from its environment variable when the run starts
    (``INFINITY_API_URL``, ``INFINITY_MODEL``, ``INFINITY_ENCODING``, ``INFINITY_HIDDEN_DIM`` (a number, or
    ``auto`` to detect it), ``INFINITY_TIMEOUT``, ``INFINITY_MAX_RETRIES``, ``INFINITY_BATCH_SIZE``,
    ``INFINITY_MAX_CONCURRENCY``, ``INFINITY_API_KEY``), else the client's default. Pass secrets as
    ``dg.EnvVar("INFINITY_API_KEY")`` so the value never appears in the UI.

    In an asset: ``client = infinity.get_client()`` returns the :class:`InfinityEmbeddings` built for this run.
    """

    url: str | None = Field(default=None, description="Server URL, or several comma-separated (a fleet of replicas "
                            "serving the same model); default $INFINITY_API_URL, else http://localhost:7997.")
    model_name: str | None = Field(default=None, description="Served model name; default $INFINITY_MODEL.")
    encoding: str | None = Field(default=None, description="'base64' (fast, default) or 'float'.")
    hidden_dim: int | None = Field(
        default=None, description="Embedding size (128 for ColPali/ColQwen2); 0 detects it from the server.")
    timeout: float | None = Field(default=None, description="Seconds to wait for one request (default 60).")
    max_retries: int | None = Field(default=None, description="Retries of a failed request (default 3).")
    embed_batch_size: int | None = Field(default=None, description="Inputs per request (default 10).")
    max_concurrency: int | None = Field(default=None, description="Requests in flight at once (default 4).")
    api_key: str | None = Field(default=None, repr=False, description="The server's --api-key; use EnvVar, never a literal.")
    env_prefix: str = Field(
        default="INFINITY_", description="Read <prefix>MODEL etc. first, then INFINITY_MODEL etc. "
        "(e.g. INFINITY_IMAGE_ for a second server or model for images).")
    http_transport: str | None = Field(
        default=None, description="The client's HTTP transport: 'httpcore' (default) or 'http11' (plain http:// "
        "only); default $INFINITY_HTTP_TRANSPORT.")

    _client: InfinityEmbeddings | None = PrivateAttr(default=None)

    def effective_settings(self) -> dict[str, Any]:
        """The effective client options: config, then environment variables, then defaults
        (:func:`infinity_assets.settings.client_settings`)."""
        return settings.client_settings(self.env_prefix, {name: getattr(self, name) for name in INFINITY_ENV})

    def build_client(self) -> InfinityEmbeddings:
        """A new :class:`InfinityEmbeddings` with the effective settings; the caller closes it."""
        return InfinityEmbeddings(**self.effective_settings(), transport=self.http_transport)  # type: ignore[arg-type]

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client = self.build_client()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def get_client(self) -> InfinityEmbeddings:
        """The client of this run (built at setup; built now when used outside a run)."""
        if self._client is None:
            self._client = self.build_client()
        return self._client


class DocumentStoreResource(dg.ConfigurableResource):
    """Where documents are read and artifacts written: a local folder or ``s3://bucket/prefix``.

    Unset fields come from environment variables at run time: ``INFINITY_ASSETS_ROOT`` (default ``./.data``),
    and the standard ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``.
    Pass the secret as ``dg.EnvVar("AWS_SECRET_ACCESS_KEY")``; it is never logged.
    """

    root: str | None = Field(default=None, description="Local folder or s3://bucket/prefix; default $INFINITY_ASSETS_ROOT or ./.data.")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint (SeaweedFS, MinIO, ...); default $AWS_ENDPOINT_URL.")
    access_key_id: str | None = Field(default=None, description="S3 access key; default $AWS_ACCESS_KEY_ID.")
    secret_access_key: str | None = Field(default=None, repr=False, description="S3 secret; default $AWS_SECRET_ACCESS_KEY. Use EnvVar.")
    region: str | None = Field(default=None, description="S3 region; default $AWS_REGION or us-east-1.")
    jsonl_id_field: str = Field(default="id", description="Field of a JSONL line holding the document id.")
    jsonl_text_field: str = Field(default="text", description="Field of a JSONL line holding the text.")

    def get_store(self, pdf: PdfSettings | None = None) -> DocumentStore:
        """A :class:`DocumentStore` for this configuration (environment variables fill unset fields; ``pdf``
        defaults to ``INFINITY_PDF_*``)."""
        return settings.build_store(
            root=self.root, endpoint_url=self.endpoint_url, access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key, region=self.region, jsonl_id_field=self.jsonl_id_field,
            jsonl_text_field=self.jsonl_text_field, pdf=pdf)
