"""A corpus's settings, resolved once: where its documents live, which model embeds each modality, how it is indexed.

Plain Python (no Dagster). The Dagster component (:mod:`infinity_assets.orchestration.component`) resolves a
``defs.yaml`` into a :class:`CorpusSpec`, the single env-configured location (:mod:`infinity_assets.definitions`)
resolves environment variables into one (:func:`infinity_assets.settings.corpus_from_env`), and
:func:`infinity_assets.orchestration.build_corpus_definitions` turns it into assets, checks, sensors, schedules
and jobs. Every name Dagster gives a corpus comes from here, so two corpora never collide.

Example::

    spec = CorpusSpec(
        name="manuals",
        store=StoreSettings(root="s3://acme-docs/manuals"),
        text=ClientSettings(url="http://infinity:7997", model_name="colbert-ir/colbertv2.0"),
    )
    [m.asset_name("embeddings") for m in spec.modalities]   # ['text_embeddings']
    spec.modalities[0].key("text_embeddings")                # ('manuals', 'text_embeddings')
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from infinity_assets.artifacts.schema import VECTOR_ENCODINGS
from infinity_assets.client.embeddings import DEFAULT_MODEL, DEFAULT_URL, InfinityEmbeddings
from infinity_assets.index.schema import EncodingSettings
from infinity_assets.index.staged import SearchSettings
from infinity_assets.storage.documents import DocumentStore, PdfSettings
from infinity_assets.storage.modality import Modality

#: What a corpus name must look like: it prefixes asset keys and names jobs, sensors and partitions.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


class CorpusSettingsError(ValueError):
    """A corpus setting is invalid; the message names the setting and says what to do."""


@dataclass(frozen=True)
class ClientSettings:
    """The Infinity server and model of one modality: the :class:`InfinityEmbeddings` options.

    ``hidden_dim=None`` means "detect it from the server at run time"; ``url`` may list several replicas
    separated by commas.
    """

    url: str = DEFAULT_URL
    model_name: str = DEFAULT_MODEL
    encoding: Literal["base64", "float"] = "base64"
    hidden_dim: int | None = 128
    timeout: float = 60.0
    max_retries: int = 3
    embed_batch_size: int = 10
    max_concurrency: int = 4
    api_key: str | None = field(default=None, repr=False)
    http_transport: str | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ("base64", "float"):
            raise CorpusSettingsError(f"encoding={self.encoding!r}: use 'base64' (fast) or 'float'")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise CorpusSettingsError(f"hidden_dim={self.hidden_dim}: a positive size, or auto to detect it")
        for name in ("max_retries",):
            if getattr(self, name) < 0:
                raise CorpusSettingsError(f"{name}={getattr(self, name)}: must be at least 0")
        for name in ("timeout", "embed_batch_size", "max_concurrency"):
            if getattr(self, name) <= 0:
                raise CorpusSettingsError(f"{name}={getattr(self, name)}: must be positive")
        if not self.url.strip():
            raise CorpusSettingsError("url is empty: give the Infinity server's URL, e.g. http://localhost:7997")
        if not self.model_name.strip():
            raise CorpusSettingsError("model_name is empty: give the model the Infinity server serves")

    def build_client(self) -> InfinityEmbeddings:
        """A new client with these settings; the caller closes it (``with settings.build_client() as c``)."""
        return InfinityEmbeddings(
            url=self.url, model_name=self.model_name, encoding=self.encoding, hidden_dim=self.hidden_dim,
            timeout=self.timeout, max_retries=self.max_retries, embed_batch_size=self.embed_batch_size,
            max_concurrency=self.max_concurrency, api_key=self.api_key, transport=self.http_transport)


@dataclass(frozen=True)
class StoreSettings:
    """Where a corpus lives (a local folder or ``s3://bucket/prefix``) and how to reach it.

    Unset S3 fields fall back to the standard ``AWS_*`` variables inside the store (as boto does).
    """

    root: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None
    jsonl_id_field: str = "id"
    jsonl_text_field: str = "text"

    def __post_init__(self) -> None:
        scheme = self.root.split("://", 1)[0] if "://" in self.root else ""
        if not self.root.strip():
            raise CorpusSettingsError("root is empty: give a local folder or s3://bucket/prefix")
        if scheme and scheme not in ("s3", "file"):
            raise CorpusSettingsError(f"root={self.root!r}: the scheme {scheme!r} is not supported; use a local "
                                      "folder, file:// or s3://bucket/prefix")
        if scheme == "s3" and not self.root[len("s3://"):].strip("/"):
            raise CorpusSettingsError(f"root={self.root!r} names no bucket: use s3://bucket/prefix")

    def build_store(self, pdf: PdfSettings | None = None) -> DocumentStore:
        """A :class:`DocumentStore` on this root (``pdf``: how its PDF pages are rendered)."""
        return DocumentStore(self.root, endpoint_url=self.endpoint_url, key=self.access_key_id,
                             secret=self.secret_access_key, region=self.region, jsonl_id_field=self.jsonl_id_field,
                             jsonl_text_field=self.jsonl_text_field, pdf=pdf or PdfSettings())


@dataclass(frozen=True)
class SensorSettings:
    """The limits of a corpus's new-documents sensor (see :mod:`infinity_assets.orchestration.sensors`)."""

    enabled: bool = True
    minimum_interval_seconds: int = 60
    max_runs_per_tick: int = 25
    backfill_over: int = 100
    max_backfill_batches: int = 10_000
    time_budget_seconds: float = 40.0
    lookback_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_runs_per_tick < 1 or self.time_budget_seconds <= 0 or self.lookback_seconds < 0:
            raise CorpusSettingsError(
                "sensor needs max_runs_per_tick >= 1, time_budget_seconds > 0 and lookback_seconds >= 0 (got "
                f"{self.max_runs_per_tick}, {self.time_budget_seconds}, {self.lookback_seconds})")
        if self.backfill_over < 1 or self.max_backfill_batches <= self.backfill_over:
            raise CorpusSettingsError("sensor needs backfill_over >= 1 and max_backfill_batches > backfill_over "
                                      f"(got {self.backfill_over}, {self.max_backfill_batches})")
        if self.minimum_interval_seconds < 1:
            raise CorpusSettingsError(f"sensor minimum_interval_seconds={self.minimum_interval_seconds}: at least 1")


@dataclass(frozen=True)
class ScheduleSettings:
    """The incremental schedule of a corpus: when it compares every batch with its last materialization."""

    enabled: bool = True
    cron: str = "0 * * * *"
    max_runs_per_tick: int = 500

    def __post_init__(self) -> None:
        if self.max_runs_per_tick < 1:
            raise CorpusSettingsError(f"schedule max_runs_per_tick={self.max_runs_per_tick}: at least 1")
        if len(self.cron.split()) != 5:
            raise CorpusSettingsError(f"schedule cron={self.cron!r}: five fields, e.g. '0 * * * *' (hourly)")


@dataclass(frozen=True)
class IndexSettings:
    """Whether a corpus is indexed, how (recorded in the table; a change rebuilds it) and searched."""

    enabled: bool = True
    encoding: EncodingSettings = field(default_factory=EncodingSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    drift_queries: int = 32
    sync_interval_seconds: int = 30

    def __post_init__(self) -> None:
        if self.drift_queries < 0:
            raise CorpusSettingsError(f"index drift_queries={self.drift_queries}: 0 (off) or more")
        if self.sync_interval_seconds < 1:
            raise CorpusSettingsError(f"index sync_interval_seconds={self.sync_interval_seconds}: at least 1")


@dataclass(frozen=True)
class CorpusModality:
    """One modality of one corpus: its model and every name it has (folders, table, Dagster names).

    ``kind`` (:class:`~infinity_assets.storage.modality.Modality`, a ``str``) knows the folder under ``raw/`` and
    ``embeddings/``, the wire modality and the index table.
    """

    corpus: str
    kind: Modality
    client: ClientSettings

    @property
    def stem(self) -> str:
        """``text`` or ``image``: how asset names of this modality start."""
        return self.kind.stem

    def asset_name(self, what: Literal["embeddings", "index", "raw"]) -> str:
        """The asset's name within the corpus: ``text_embeddings``, ``image_index``, ``raw_text_documents``."""
        return f"raw_{self.stem}_documents" if what == "raw" else f"{self.stem}_{what}"

    def key(self, name: str) -> tuple[str, str]:
        """An asset key path inside the corpus: ``(corpus, name)``."""
        return (self.corpus, name)

    @property
    def partitions_name(self) -> str:
        """The dynamic partitions of this modality's batches: ``<corpus>_text_batches``."""
        return f"{self.corpus}_{self.stem}_batches"

    @property
    def job_name(self) -> str:
        """The job that embeds one batch: ``<corpus>_embed_text_job`` / ``<corpus>_embed_images_job``."""
        return f"{self.corpus}_embed_{self.kind}_job"

    @property
    def schedule_name(self) -> str:
        """The incremental schedule: ``<corpus>_text_incremental_schedule``."""
        return f"{self.corpus}_{self.kind}_incremental_schedule"


@dataclass(frozen=True)
class CorpusSpec:
    """Everything Dagster needs to embed, index and watch one corpus; validated when made.

    At least one of ``text`` / ``images`` is set. ``pool`` is the Dagster pool of the embedding steps (shared
    by every corpus by default: one GPU server); ``vector_encoding`` is how artifacts store vectors, one
    setting for the asset, the schedule and the checks.
    """

    name: str
    store: StoreSettings
    text: ClientSettings | None = None
    images: ClientSettings | None = None
    pdf: PdfSettings = field(default_factory=PdfSettings)
    vector_encoding: str = "float32"
    max_failure_ratio: float = 0.0
    pool: str = "infinity"
    backfill_partitions_per_run: int = 100
    memory_budget_mb: int = 192
    row_group_size: int = 256
    sensor: SensorSettings = field(default_factory=SensorSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    index: IndexSettings = field(default_factory=IndexSettings)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name or ""):
            raise CorpusSettingsError(
                f"name={self.name!r}: a corpus name is lowercase letters, digits and _, starting with a letter "
                "(it prefixes asset keys, jobs, sensors and partitions), e.g. manuals")
        if self.text is None and self.images is None:
            raise CorpusSettingsError(f"corpus {self.name!r} embeds nothing: add a text block, an images block "
                                      "or both (each with the url and model_name of an Infinity server)")
        if self.vector_encoding not in VECTOR_ENCODINGS:
            raise CorpusSettingsError(f"vector_encoding={self.vector_encoding!r}: use one of "
                                      f"{sorted(VECTOR_ENCODINGS)} (float32 lossless, float16 half the bytes)")
        if not 0.0 <= self.max_failure_ratio <= 1.0:
            raise CorpusSettingsError(f"max_failure_ratio={self.max_failure_ratio}: a share between 0 and 1")
        for name in ("backfill_partitions_per_run", "memory_budget_mb", "row_group_size"):
            if getattr(self, name) < 1:
                raise CorpusSettingsError(f"{name}={getattr(self, name)}: must be at least 1")
        if not self.pool.strip():
            raise CorpusSettingsError("pool is empty: name a Dagster pool (default 'infinity')")

    @property
    def modalities(self) -> list[CorpusModality]:
        """The configured modalities, text first."""
        return [CorpusModality(self.name, kind, client) for kind, client in ((Modality.TEXT, self.text),
                                                                             (Modality.IMAGES, self.images)) if client]

    def modality(self, kind: str) -> CorpusModality:
        """The modality ``kind`` (``text`` or ``images``); ``KeyError`` naming the configured ones if absent."""
        for modality in self.modalities:
            if modality.kind == kind:
                return modality
        raise KeyError(f"corpus {self.name!r} has no {kind} block (it has: "
                       f"{', '.join(m.kind for m in self.modalities)})")

    def build_store(self) -> DocumentStore:
        """The corpus's document store, rendering PDF pages with its PDF settings."""
        return self.store.build_store(self.pdf)
