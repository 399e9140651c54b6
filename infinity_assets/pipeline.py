"""Embeds one partition: list its documents, reuse unchanged rows, embed the rest, publish one artifact.

Plain Python (no Dagster): the assets call :func:`embed_partition` and turn its :class:`PartitionReport` into
metadata; benchmarks and scripts can call it directly.
"""
from __future__ import annotations

import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from infinity_assets import __version__, artifacts
from infinity_assets.client.embeddings import InfinityEmbeddings
from infinity_assets.client.errors import InfinityError
from infinity_assets.storage import documents
from infinity_assets.storage.failures import FailureKind
from infinity_assets.storage.modality import Modality

logger = logging.getLogger(__name__)

#: Default memory budget of one partition materialization, in bytes (see :func:`embed_partition`).
DEFAULT_MEMORY_BUDGET = 192 << 20


class TooManyFailuresError(Exception):
    """More documents failed than the configured ratio allows; nothing was published."""


@dataclass
class PartitionReport:
    """What one partition materialization did."""

    modality: str
    partition: str
    artifact_uri: str
    data_version: str
    vector_encoding: str = artifacts.DEFAULT_VECTOR_ENCODING
    total: int = 0
    embedded: int = 0
    reused: int = 0
    failed: int = 0
    skipped: int = 0
    vectors: int = 0
    artifact_bytes: int = 0
    seconds: float = 0.0
    requests: int = 0
    retries: int = 0
    failovers: int = 0
    replicas: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped_keys: list[str] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        """Documents embedded (not reused) per second of wall time."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_partition(
    store: documents.DocumentStore,
    client: InfinityEmbeddings,
    modality: str,
    partition: str,
    *,
    row_group_size: int = 256,
    max_failure_ratio: float = 1.0,
    preview_rows: int = 5,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    vector_encoding: str | None = None,
) -> PartitionReport:
    """Embed the documents of one batch folder into its artifact, reusing rows whose fingerprint is unchanged.

    ``modality`` is ``"text"`` or ``"images"``. ``memory_budget`` (bytes) bounds the vectors held at once,
    whatever the documents' sizes: half for the client's batches in flight or waiting to be written
    (``max_buffered_bytes``), half for writing a row group (``row_group_bytes``); a smaller budget means fewer
    requests in flight and smaller row groups. Documents that cannot be read or embedded are listed in the
    report and the artifact's failures sidecar; if their share exceeds ``max_failure_ratio`` nothing is published
    and :class:`TooManyFailuresError` is raised. Server failures (unreachable, wrong hidden_dim) raise and publish
    nothing; the previous artifact stays intact.

    ``vector_encoding`` (``float32`` or ``float16``; default ``$INFINITY_ASSETS_VECTOR_ENCODING``, else
    float32) is how the artifact stores the vectors. Rows are reused only from a previous artifact of the same
    model, hidden_dim and encoding: a batch re-embedded with another encoding is rewritten whole (converting
    float16 rows to float32 would pass off rounded vectors as lossless ones; the other way would round them).
    """
    encoding = artifacts.vector_encoding(vector_encoding)  # a bad setting fails before anything is read
    started = time.monotonic()
    stats_before = (client.stats.requests, client.stats.retries, client.stats.failovers)
    listing = store.list_sources(modality, partition)
    path = store.artifact_path(modality, partition)
    configured_dim = client.hidden_dim  # before any detection: the schedule computes versions with it too
    report = PartitionReport(
        modality=modality, partition=partition, artifact_uri=store.uri(path), data_version="",
        vector_encoding=encoding, skipped=len(listing.skipped), skipped_keys=listing.skipped)
    previous_metadata, previous = _reusable_index(store, path, client, encoding)
    previous_files = _rows_by_file(previous, _failed_files(store, path) if previous else set())

    # Reuse: a file whose fingerprint is unchanged is not even read (all its rows are reused: the pages of a
    # PDF too); a streamed file (JSONL) is read (it is text, and small next to its embeddings) because reuse is
    # decided per line.
    failures: list[artifacts.Failure] = []
    reusable: set[str] = set()
    jsonl_new: list[documents.Document] = []
    others: list[documents.SourceObject] = []
    streamed = [s for s in listing.sources if documents.is_streamed(modality, s)]
    for source in listing.sources:
        if documents.is_streamed(modality, source):
            continue
        fingerprint, doc_ids = previous_files.get(source.key, ("", []))
        if fingerprint == source.fingerprint:
            reusable.update(doc_ids)
        else:
            others.append(source)
    for document in store.read_documents(modality, streamed):
        if document.error is not None:
            failures.append(_failure(document))
        elif previous.get(document.doc_id) == document.fingerprint:
            reusable.add(document.doc_id)
        else:
            jsonl_new.append(document)

    pending: deque[documents.Document] = deque()

    def inputs() -> Iterator[str | bytes]:
        for document in itertools.chain(jsonl_new, store.read_documents(modality, others)):
            if document.error is not None:
                failures.append(_failure(document))
            else:
                pending.append(document)
                yield document.content  # type: ignore[misc]

    embedded = _embedded_rows(client, modality, inputs(), pending, failures, memory_budget // 2)
    first = next(embedded, None)  # with hidden_dim=None, the first request tells the size
    hidden_dim = client.hidden_dim or int(previous_metadata.get("hidden_dim", 0)) or client.detect_hidden_dim()
    metadata = {"model": client.model_name, "hidden_dim": hidden_dim, "modality": modality,
                "encoding": client.encoding, "partition": partition, "package_version": __version__}
    if modality == "images":  # how its PDF pages were drawn: the page viewer draws them the same way
        metadata |= {"pdf_max_side": store.pdf.max_side, "pdf_dpi": store.pdf.dpi}
    store.ensure_artifact_dir(modality)
    try:
        with artifacts.ArtifactWriter(store.fs, path, hidden_dim=hidden_dim, metadata=metadata,
                                      row_group_size=row_group_size,
                                      row_group_bytes=memory_budget // 2 // artifacts.WRITE_AMPLIFICATION,
                                      vector_encoding=encoding) as writer:
            for row in _reused_rows(store, path, reusable):
                writer.write(*row)
            for row in itertools.chain([first] if first else [], embedded):
                writer.write(*row)
                if len(report.preview) < preview_rows:
                    report.preview.append(_preview(row))
            for failure in failures:
                writer.add_failure(failure)
            report.data_version = _data_version(listing, failures, client.model_name, configured_dim, encoding)
            writer.add_metadata("data_version", report.data_version)
            report.total, report.failed = writer.rows + len(failures), len(failures)
            if report.total and report.failed / report.total > max_failure_ratio:
                raise TooManyFailuresError(
                    f"{report.failed} of {report.total} documents of partition {partition!r} failed, over "
                    f"max_failure_ratio={max_failure_ratio}; nothing was published. First failures: "
                    + "; ".join(f"{f.doc_id}: {f.error}" for f in failures[:5]))
    except Exception as exc:
        if not (store.is_s3 and documents.is_storage_failure(exc)):
            raise
        raise store.store_error(exc, path) from exc  # an S3 write failed: which endpoint, what to check
    finally:
        report.seconds = time.monotonic() - started
    report.reused = len(reusable)
    report.embedded = writer.rows - report.reused
    report.vectors = writer.vectors
    report.failures = [(f.doc_id, f.error) for f in failures]
    report.artifact_bytes = writer.bytes_written
    report.requests = client.stats.requests - stats_before[0]
    report.retries = client.stats.retries - stats_before[1]
    report.failovers = client.stats.failovers - stats_before[2]
    report.replicas = client.replicas.stats() if len(client.replicas) > 1 else {}
    return report


def _failure(document: documents.Document) -> artifacts.Failure:
    """The failure of a document that could not be read or parsed, with its kind."""
    return artifacts.Failure(document.doc_id, document.source_uri, document.error or "", document.error_kind)


def _data_version(listing: documents.Listing, failures: list[artifacts.Failure], model: str,
                  hidden_dim: int | None, vector_encoding: str) -> str:
    """The data version of what was embedded: the sources' fingerprints, leaving out files whose failure is
    retryable (changed, deleted, unreadable for now), so the incremental schedule sees the batch as changed
    and runs it again."""
    retry = {f.doc_id for f in failures if f.kind.retryable}
    fingerprints = {key: fp for key, fp in listing.fingerprints.items() if key not in retry}
    return artifacts.data_version(fingerprints, model, hidden_dim, vector_encoding)


def _reusable_index(store: documents.DocumentStore, path: str, client: InfinityEmbeddings,
                    vector_encoding: str) -> tuple[dict[str, str], dict[str, str]]:
    """The previous artifact's metadata and ``{doc_id: fingerprint}``, if made with the same model, hidden_dim
    and vector encoding; without its PDF pages if they were drawn with other PDF settings (``max_side``,
    ``dpi``), so a batch's pages are all drawn as its artifact records."""
    found = artifacts.read_index(store.fs, path)
    if found is None:
        return {}, {}
    metadata, index = found
    if metadata.get("model") != client.model_name or (
            client.hidden_dim is not None and metadata.get("hidden_dim") != str(client.hidden_dim)) or (
            metadata["vector_encoding"] != vector_encoding):
        logger.info("previous artifact %s was made with other settings (model %s, hidden_dim %s, vector_encoding %s);"
                    " re-embedding everything", path, metadata.get("model"), metadata.get("hidden_dim"),
                    metadata["vector_encoding"])
        return {}, {}
    drawn = {"pdf_max_side": store.pdf.max_side, "pdf_dpi": store.pdf.dpi}
    if any(key in metadata and float(metadata[key]) != value for key, value in drawn.items()):
        logger.info("previous artifact %s drew its PDF pages with other settings (%s); re-embedding them", path,
                    {key: metadata.get(key) for key in drawn})
        index = {doc_id: fingerprint for doc_id, fingerprint in index.items() if not _PAGE_SUFFIX.search(doc_id)}
    return metadata, index


#: The suffix of a page's doc_id: ``<key>#page=<n>``.
_PAGE_SUFFIX = re.compile(r"#page=[0-9]+$")


def _rows_by_file(previous: dict[str, str], failed: set[str]) -> dict[str, tuple[str, list[str]]]:
    """``{file key: (fingerprint, doc_ids)}`` of the previous artifact's whole-file rows (an image is one row, a
    PDF one row per page). A file with a failure in the previous publish (a page that did not render, say) is
    left out, so it is read and embedded again rather than reused with rows missing."""
    files: dict[str, tuple[str, list[str]]] = {}
    for doc_id, fingerprint in previous.items():
        key = _PAGE_SUFFIX.sub("", doc_id)
        known, doc_ids = files.setdefault(key, (fingerprint, []))
        doc_ids.append(doc_id)
        if known != fingerprint:
            files[key] = ("", doc_ids)  # rows of two versions of the file: never reuse them
    return {key: rows for key, rows in files.items() if key not in failed}


def _failed_files(store: documents.DocumentStore, path: str) -> set[str]:
    """The file keys with a failure recorded in the previous artifact's sidecar."""
    sidecar = artifacts.read_failures(store.fs, path) or {}
    return {_PAGE_SUFFIX.sub("", failure["doc_id"]) for failure in sidecar.get("failures", [])}


def _embedded_rows(client: InfinityEmbeddings, modality: str, inputs: Iterator[str | bytes],
                   pending: deque[documents.Document], failures: list[artifacts.Failure],
                   max_buffered_bytes: int) -> Iterator[tuple]:
    """A writer row for each newly embedded document, in input order; failed documents go to ``failures``."""
    now = datetime.now(timezone.utc)
    for result in client.iter_embeddings(inputs, modality=Modality.of(modality).wire,
                                         max_buffered_bytes=max_buffered_bytes):
        document = pending.popleft()
        if isinstance(result, InfinityError):
            failures.append(artifacts.Failure(document.doc_id, document.source_uri, str(result),
                                              FailureKind.EMBEDDING))
        elif len(result) == 0:
            failures.append(artifacts.Failure(document.doc_id, document.source_uri,
                                              "the server returned only padding rows (no vectors)",
                                              FailureKind.EMBEDDING))
        else:
            yield (document.doc_id, document.source_uri, document.fingerprint, result, now, document.page,
                   document.page_text)


def _reused_rows(store: documents.DocumentStore, path: str, reusable: set[str]) -> Iterator[tuple]:
    """Writer rows copied from the previous artifact (vectors as zero-copy views of the stored floats, of the
    encoding being written), one row group at a time."""
    if not reusable:
        return
    for group in artifacts.iter_rows(store.fs, path, reusable, stored_dtype=True):
        embedding = group.column("embedding").combine_chunks()
        offsets = embedding.offsets.to_numpy()
        hidden_dim = embedding.type.value_type.list_size
        flat = embedding.flatten().flatten().to_numpy(zero_copy_only=True).reshape(-1, hidden_dim)
        base = offsets[0]
        pages = [group.column(c).to_pylist() if c in group.column_names else [None] * group.num_rows
                 for c in artifacts.PAGE_COLUMNS]  # artifacts written before PDF pages have no page columns
        for i, (doc_id, uri, fingerprint, at, page, page_text) in enumerate(zip(
                *(group.column(c).to_pylist() for c in ("doc_id", "source_uri", "fingerprint", "embedded_at")),
                *pages)):
            yield doc_id, uri, fingerprint, flat[offsets[i] - base:offsets[i + 1] - base], at, page, page_text


def _preview(row: tuple) -> dict[str, Any]:
    doc_id, source_uri, _, vectors = row[:4]
    return {"doc_id": doc_id, "n_vectors": int(len(vectors)), "norm_first": round(float(np.linalg.norm(vectors[0])), 4),
            "source_uri": source_uri}
