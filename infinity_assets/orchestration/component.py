"""``InfinityCorpusComponent``: one corpus (documents in a bucket, a model per modality) in a user's Dagster project.

A thin wrapper: the YAML attributes below resolve into a :class:`~infinity_assets.corpus.CorpusSpec` once,
validated when the defs folder loads (a misspelt or missing attribute, a bad root, an unset environment
variable fail ``dg check yaml`` / ``dg check defs`` naming the file and attribute), and
:func:`~infinity_assets.orchestration.build.build_corpus_definitions` makes the definitions. Nothing contacts a
server at load time.

``defs.yaml`` (``dg scaffold defs infinity_assets.InfinityCorpusComponent manuals`` writes one)::

    type: infinity_assets.InfinityCorpusComponent
    attributes:
      name: manuals
      root: s3://acme-docs/manuals
      s3:
        secret_access_key: "{{ env.AWS_SECRET_ACCESS_KEY }}"
      text:
        url: "{{ env.INFINITY_API_URL }}"
        model_name: colbert-ir/colbertv2.0
    requirements:
      env: [AWS_SECRET_ACCESS_KEY, INFINITY_API_URL]
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from pydantic import Field

from infinity_assets.corpus import (
    ClientSettings,
    CorpusSettingsError,
    CorpusSpec,
    IndexSettings,
    ScheduleSettings,
    SensorSettings,
    StoreSettings,
)
from infinity_assets.index.schema import EncodingSettings
from infinity_assets.index.staged import SearchSettings
from infinity_assets.orchestration.build import build_corpus_definitions
from infinity_assets.orchestration.scaffolder import InfinityCorpusScaffolder
from infinity_assets.storage.documents import PdfSettings

_ENV_TEMPLATE = re.compile(r"{{\s*env\.([A-Za-z_][A-Za-z0-9_]*)\s*}}|{{\s*env\(\s*['\"]([^'\"]+)['\"]\s*\)\s*}}")


def _unset_env(context: dg.ResolutionContext, raw: Any) -> str | None:
    """The first environment variable a ``{{ env.X }}`` template in ``raw`` names that is not set, if any."""
    for match in _ENV_TEMPLATE.finditer(raw if isinstance(raw, str) else ""):
        name = match.group(1) or match.group(2)
        if not context.resolve_value(f"{{{{ env.{name} }}}}"):
            return name
    return None


def _resolve_required(context: dg.ResolutionContext, raw: Any) -> Any:
    """A required string attribute: rendered, or an error naming the unset variable its template needs."""
    name = _unset_env(context, raw)
    if name:
        raise CorpusSettingsError(
            f"{raw!r} needs the environment variable {name}, which is not set: set it where Dagster "
            f"runs (e.g. in .env beside the project) or write the value in defs.yaml")
    return context.resolve_value(raw)


def _resolve_optional(context: dg.ResolutionContext, raw: Any) -> Any:
    """An optional string attribute (a secret, an S3 setting): unset when its template's variable is unset, so
    definitions load without secrets (``dg check defs`` in CI) and the run falls back to ``AWS_*``."""
    return None if _unset_env(context, raw) else context.resolve_value(raw)


def _templated(description: str, examples: list[Any] | None = None) -> dg.Resolver:
    return dg.Resolver(_resolve_required, model_field_type=str, inject_before_resolve=False,
                       description=description, examples=examples)


def _optional_templated(description: str) -> dg.Resolver:
    return dg.Resolver(_resolve_optional, model_field_type=str | None,  # type: ignore[arg-type]
                       inject_before_resolve=False, description=description)


class S3Attributes(dg.Model, dg.Resolvable):
    """How to reach an S3 root; unset fields fall back to the standard ``AWS_*`` variables at run time."""

    endpoint_url: Annotated[str | None, _optional_templated("S3 endpoint (SeaweedFS, MinIO, ...).")] = None
    access_key_id: Annotated[str | None, _optional_templated("S3 access key id.")] = None
    secret_access_key: Annotated[str | None, _optional_templated(
        'S3 secret; template it ("{{ env.AWS_SECRET_ACCESS_KEY }}"), never a literal.')] = None
    region: Annotated[str | None, _optional_templated("S3 region (default us-east-1).")] = None


class ClientAttributes(dg.Model, dg.Resolvable):
    """The Infinity server and model of one modality (the client's option names)."""

    url: Annotated[str, _templated("Infinity server URL, or several comma-separated replicas of one model.",
                                   ["http://localhost:7997"])]
    model_name: Annotated[str, _templated("The model the server serves (its --model-id).",
                                          ["colbert-ir/colbertv2.0", "vidore/colpali-v1.3"])]
    hidden_dim: int | Literal["auto"] = Field(
        128, description="Size of each vector (128 for ColPali/ColQwen2/ColBERTv2); auto detects it at run time.")
    encoding: Literal["base64", "float"] = Field("base64", description="Wire encoding of the vectors.")
    timeout: float = Field(60.0, description="Seconds to wait for one request.")
    max_retries: int = Field(3, description="Retries of a failed request (timeouts, 429, 5xx).")
    embed_batch_size: int = Field(10, description="Inputs per request.")
    max_concurrency: int = Field(4, description="Requests in flight at once.")
    api_key: Annotated[str | None, _optional_templated(
        'The server\'s --api-key; template it ("{{ env.INFINITY_API_KEY }}"), never a literal.')] = None
    http_transport: Literal["httpcore", "http11"] | None = Field(
        None, description="The client's HTTP transport (default httpcore; http11 for plain http:// only).")

    def settings(self) -> ClientSettings:
        """The typed client settings."""
        return ClientSettings(
            url=self.url, model_name=self.model_name, encoding=self.encoding,
            hidden_dim=None if self.hidden_dim == "auto" else self.hidden_dim, timeout=self.timeout,
            max_retries=self.max_retries, embed_batch_size=self.embed_batch_size,
            max_concurrency=self.max_concurrency, api_key=self.api_key, http_transport=self.http_transport)


class TextAttributes(ClientAttributes):
    """The text modality (.txt, .md, .jsonl under raw/text/<batch>/)."""

    jsonl_id_field: str = Field("id", description="Field of a JSONL line holding the document id.")
    jsonl_text_field: str = Field("text", description="Field of a JSONL line holding the text.")


class PdfAttributes(dg.Model, dg.Resolvable):
    """How PDF pages are rendered before they are embedded."""

    max_side: int = Field(1024, description="Longest side of a rendered page, in pixels.")
    dpi: float = Field(144.0, description="Render resolution below that cap.")
    max_pages: int = Field(2000, description="A PDF with more pages fails whole (named in the failures).")
    page_timeout_seconds: float = Field(60.0, description="Seconds one page may take to render.")

    def settings(self) -> PdfSettings:
        """The typed PDF settings (validated)."""
        if self.max_side < 64 or self.dpi <= 0 or self.max_pages < 1 or self.page_timeout_seconds <= 0:
            raise CorpusSettingsError(f"images.pdf {self.model_dump()}: needs max_side >= 64, dpi > 0, "
                                      "max_pages >= 1 and page_timeout_seconds > 0")
        return PdfSettings(max_side=self.max_side, dpi=self.dpi, max_pages=self.max_pages,
                           page_timeout=self.page_timeout_seconds)


class ImagesAttributes(ClientAttributes):
    """The image modality (images and PDF pages under raw/images/<batch>/)."""

    pdf: PdfAttributes | None = Field(None, description="How PDF pages are rendered.")


class SensorAttributes(dg.Model, dg.Resolvable):
    """The new-documents sensor's limits."""

    enabled: bool = Field(True, description="Running by default; false starts it stopped.")
    minimum_interval_seconds: int = Field(60, description="Seconds between ticks.")
    max_runs_per_tick: int = Field(25, description="Run requests per tick at most.")
    backfill_over: int = Field(100, description="More changed batches than this in one tick become one backfill.")
    max_backfill_batches: int = Field(10_000, description="Batches in one backfill at most.")
    time_budget_seconds: float = Field(40.0, description="A tick's work budget (Dagster times out at 60 s).")
    lookback_seconds: float = Field(30.0, description="How far behind the watermark late objects are caught.")


class ScheduleAttributes(dg.Model, dg.Resolvable):
    """The incremental schedule (re-embeds batches whose sources, model or encoding changed)."""

    enabled: bool = Field(True, description="Running by default; false starts it stopped.")
    cron: str = Field("0 * * * *", description="When it runs (cron, five fields).")
    max_runs_per_tick: int = Field(500, description="Runs one tick queues at most.")


class IndexAttributes(dg.Model, dg.Resolvable):
    """The LanceDB index of the corpus and its staged search."""

    enabled: bool = Field(True, description="Make the index assets (false: embeddings only).")
    encoding: dict[str, Any] | None = Field(
        None, description="Index encoding (fde_repetitions, fde_simhash_bits, fde_projection_dim, fde_seed, "
                          "bits_pool_threshold, fde_source, originals, ...); recorded in the table, a change rebuilds it.")
    search: dict[str, Any] | None = Field(
        None, description="Search stage settings (fde_candidates, hamming_candidates, pooled_candidates, ...) of the drift measurement.")
    drift_queries: int = Field(32, description="Known-item queries measured after each sync (0: off).")
    sync_interval_seconds: int = Field(30, description="Seconds between the index automation sensor's ticks.")

    def settings(self) -> IndexSettings:
        """The typed index settings; an unknown or invalid key names itself."""
        return IndexSettings(enabled=self.enabled, encoding=_dataclass("index.encoding", EncodingSettings,
                                                                       self.encoding),
                             search=_dataclass("index.search", SearchSettings, self.search),
                             drift_queries=self.drift_queries, sync_interval_seconds=self.sync_interval_seconds)


def _dataclass(where: str, cls: type, values: dict[str, Any] | None) -> Any:
    known = {f for f in cls.__dataclass_fields__}  # type: ignore[attr-defined]
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise CorpusSettingsError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**(values or {}))
    except (TypeError, ValueError) as exc:
        raise CorpusSettingsError(f"{where}: {exc}") from None


@dg.scaffold_with(InfinityCorpusScaffolder)
class InfinityCorpusComponent(dg.Component, dg.Model, dg.Resolvable):
    """One corpus: documents under a root (local folder or ``s3://``) embedded by Infinity, indexed, watched.

    Makes, for ``name: manuals``, the assets ``manuals/raw_text_documents``, ``manuals/text_embeddings``,
    ``manuals/text_index`` (and the ``image`` ones with an ``images`` block), their checks, the
    ``manuals_new_documents_sensor``, ``manuals_index_automation_sensor``, one incremental schedule and job
    per modality, and the dynamic partitions ``manuals_text_batches`` / ``manuals_image_batches``. Several
    instances coexist: no resource key is shared. Documentation: docs/component.md.
    """

    name: Annotated[str, dg.Resolver.default(
        description="The corpus name, [a-z][a-z0-9_]*: prefixes every asset key, job, sensor and partition.",
        examples=["manuals"])]
    root: Annotated[str, _templated("Where the corpus lives: a local folder or s3://bucket/prefix (raw/<modality>/"
                                    "<batch>/ documents, embeddings/ artifacts, index/).",
                                    ["s3://acme-docs/manuals"])]
    s3: S3Attributes | None = Field(None, description="S3 endpoint and credentials (unset: AWS_* at run time).")
    text: TextAttributes | None = Field(None, description="Embed text documents with this server and model.")
    images: ImagesAttributes | None = Field(None, description="Embed images and PDF pages with this server and model.")
    vector_encoding: Literal["float32", "float16"] = Field(
        "float32", description="How artifacts store vectors (float16: half the bytes); the asset, the schedule and "
                               "the checks share it.")
    max_failure_ratio: float = Field(0.0, description="Share of a batch's documents allowed to fail.")
    pool: str = Field("infinity", description="Dagster pool of the embedding steps (shared by default: one GPU "
                                              "server); limit it with `dagster instance concurrency set`.")
    backfill_partitions_per_run: int = Field(100, description="Batches one backfill run embeds.")
    memory_budget_mb: int = Field(192, description="MiB of vectors held at once while embedding a batch.")
    row_group_size: int = Field(256, description="Documents per Parquet row group at most.")
    sensor: SensorAttributes | None = Field(None, description="The new-documents sensor's limits.")
    schedule: ScheduleAttributes | None = Field(None, description="The incremental schedule.")
    index: IndexAttributes | None = Field(None, description="The index and its search settings.")

    def corpus_spec(self) -> CorpusSpec:
        """The typed, validated corpus settings these attributes resolve to."""
        s3 = self.s3 or S3Attributes()
        text_jsonl = {"jsonl_id_field": self.text.jsonl_id_field,
                      "jsonl_text_field": self.text.jsonl_text_field} if self.text else {}
        return CorpusSpec(
            name=self.name,
            store=StoreSettings(root=self.root, endpoint_url=s3.endpoint_url, access_key_id=s3.access_key_id,
                                secret_access_key=s3.secret_access_key, region=s3.region, **text_jsonl),
            text=self.text.settings() if self.text else None,
            images=self.images.settings() if self.images else None,
            pdf=self.images.pdf.settings() if self.images and self.images.pdf else PdfSettings(),
            vector_encoding=self.vector_encoding, max_failure_ratio=self.max_failure_ratio, pool=self.pool,
            backfill_partitions_per_run=self.backfill_partitions_per_run, memory_budget_mb=self.memory_budget_mb,
            row_group_size=self.row_group_size,
            sensor=SensorSettings(**self.sensor.model_dump()) if self.sensor else SensorSettings(),
            schedule=ScheduleSettings(**self.schedule.model_dump()) if self.schedule else ScheduleSettings(),
            index=self.index.settings() if self.index else IndexSettings())

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The corpus's definitions (:func:`~infinity_assets.orchestration.build.build_corpus_definitions`);
        every setting is checked here, when the defs folder loads, not when a run starts."""
        try:
            spec = self.corpus_spec()
        except CorpusSettingsError as exc:
            raise CorpusSettingsError(f"{context.path / 'defs.yaml'}: attributes: {exc}") from None
        _claim_name(context, self.name)
        return build_corpus_definitions(spec)


_claimed: dict[int, tuple[object, dict[str, Path]]] = {}
_claimed_lock = threading.Lock()


def _claim_name(context: dg.ComponentLoadContext, name: str) -> None:
    """Fail with both files when two instances of one project use the same corpus name (their keys would
    collide, and Dagster's duplicate-key error would not say where)."""
    tree = context.component_tree
    with _claimed_lock:
        _, names = _claimed.setdefault(id(tree), (tree, {}))
        other = names.setdefault(name, context.path)
    if other != context.path:
        raise CorpusSettingsError(
            f"corpus name {name!r} is used by two instances: {other} and {context.path}; every instance needs its "
            "own name (it prefixes asset keys, jobs, sensors and partitions)")
