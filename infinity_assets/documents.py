"""Documents in object storage: list and read them under one root (a local folder or ``s3://bucket/prefix``).

Layout under the root::

    raw/text/<batch>/...      .txt .md (one document each, UTF-8), .jsonl (one document per line)
    raw/images/<batch>/...    .png .jpg .jpeg .webp .gif .bmp .tif .tiff
    embeddings/text/<batch>.parquet, embeddings/images/<batch>.parquet   (artifacts, see artifacts.py)

A batch folder is a partition (nested folders inside it belong to it); its partition key is the folder name
with unsafe characters percent-encoded (:func:`partition_key_for_folder`). A document's id is its key
relative to the batch folder; a JSONL line's id is ``<key>#<id field>`` (``#L<line>`` without an id).

Example::

    store = DocumentStore("s3://docs/prod", endpoint_url="http://127.0.0.1:8333")
    listing = store.list_sources("text", "2026-11-24")
    for document in store.read_documents("text", listing.sources):
        print(document.doc_id, document.error or len(document.content))
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

import fsspec

MODALITIES = ("text", "images")
TEXT_EXTENSIONS = frozenset({".txt", ".md", ".jsonl"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
EXTENSIONS = {"text": TEXT_EXTENSIONS, "images": IMAGE_EXTENSIONS}
MAX_TEXT_CHARS = 122_880  # Infinity's per-string limit


class DocumentStoreError(Exception):
    """The store cannot be used: bad credentials, missing bucket, unreachable endpoint, or an unsafe key."""


# ---------------------------------------------------------------------------------------------- partition keys
_DOT_RUN = re.compile(r"\.(?=\.)|(?<=\.)\.")


def partition_key_for_folder(folder: str) -> str:
    """The Dagster partition key of a batch folder: unsafe characters percent-encoded, reversibly.

    Dagster rejects ``...`` and control characters, and commas/brackets/pipes break partition selections, so
    everything outside ``[A-Za-z0-9_.-]`` is encoded, and so is every dot in a run of dots.
    """
    return _DOT_RUN.sub("%2E", quote(folder, safe="_.-"))


def folder_for_partition(partition_key: str) -> str:
    """The batch folder of a partition key (the inverse of :func:`partition_key_for_folder`)."""
    return unquote(partition_key)


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SourceObject:
    """One file in a batch folder: ``key`` relative to the folder, full ``uri``, ``fingerprint`` for changes."""

    key: str
    uri: str
    path: str
    size: int
    fingerprint: str
    last_modified: float

    @property
    def is_jsonl(self) -> bool:
        """True for a JSONL file (many documents)."""
        return self.key.lower().endswith(".jsonl")


@dataclass
class Listing:
    """The sources of one batch folder, and the files skipped because of their extension."""

    sources: list[SourceObject] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def fingerprints(self) -> dict[str, str]:
        """``{key: fingerprint}`` of the sources: what data versions and run keys are computed from."""
        return {s.key: s.fingerprint for s in self.sources}


@dataclass
class Document:
    """One document to embed: ``content`` (str for text, bytes for images) or the ``error`` that prevents it."""

    doc_id: str
    source_uri: str
    fingerprint: str
    content: str | bytes | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------- the store
class DocumentStore:
    """Lists and reads documents under ``root``, a local folder or ``s3://bucket/prefix`` (via s3fs).

    S3 credentials come from the arguments, else the standard variables ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``. Listings never use s3fs's listing cache
    (it misses new objects). The secret never appears in ``repr`` or error messages.
    """

    def __init__(self, root: str, *, endpoint_url: str | None = None, key: str | None = None,
                 secret: str | None = None, region: str | None = None, jsonl_id_field: str = "id",
                 jsonl_text_field: str = "text", read_concurrency: int = 32) -> None:
        self.is_s3 = root.startswith("s3://")
        self.jsonl_id_field, self.jsonl_text_field = jsonl_id_field, jsonl_text_field
        self.read_concurrency = read_concurrency
        if self.is_s3:
            import s3fs

            self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
            client_kwargs = {"region_name": region or os.environ.get("AWS_REGION") or "us-east-1"}
            if self.endpoint_url:
                client_kwargs["endpoint_url"] = self.endpoint_url
            self.fs: fsspec.AbstractFileSystem = s3fs.S3FileSystem(
                key=key or os.environ.get("AWS_ACCESS_KEY_ID"),
                secret=secret or os.environ.get("AWS_SECRET_ACCESS_KEY"),
                client_kwargs=client_kwargs, use_listings_cache=False, skip_instance_cache=True,
                max_concurrency=read_concurrency,
            )
            self.root = root[len("s3://"):].rstrip("/")
            self.root_uri = f"s3://{self.root}"
        else:
            self.endpoint_url = None
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(root).replace(os.sep, "/").rstrip("/")
            self.root_uri = self.root

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"DocumentStore({self.root_uri!r}{endpoint})"

    # ------------------------------------------------------------------ paths
    def path(self, relative: str) -> str:
        """The filesystem path of a key relative to the root; refuses keys that would leave the root."""
        normalized = posixpath.normpath(relative.replace("\\", "/"))
        if normalized.startswith(("/", "../")) or normalized == ".." or "\x00" in normalized:
            raise DocumentStoreError(f"key {relative!r} points outside the store root {self.root_uri!r}")
        return f"{self.root}/{normalized}"

    def uri(self, path: str) -> str:
        """The URI of a filesystem path of this store (``s3://...`` or a local absolute path)."""
        return f"s3://{path}" if self.is_s3 else path

    def artifact_path(self, modality: str, partition_key: str) -> str:
        """Where the artifact of a partition lives (``embeddings/<modality>/<folder>.parquet``)."""
        return self.path(f"embeddings/{_modality(modality)}/{_safe_segment(folder_for_partition(partition_key))}.parquet")

    def ensure_artifact_dir(self, modality: str) -> None:
        """Create the artifact folder on a local root (S3 has no folders)."""
        if not self.is_s3:
            os.makedirs(self.path(f"embeddings/{_modality(modality)}"), exist_ok=True)

    # ------------------------------------------------------------------ listing
    def list_partitions(self, modality: str) -> list[str]:
        """The partition keys of the batch folders under ``raw/<modality>/``, sorted."""
        base = self.path(f"raw/{_modality(modality)}")
        entries = self._call(lambda: self.fs.ls(base, detail=True, refresh=True) if self.is_s3
                             else self.fs.ls(base, detail=True), base, missing=[])
        folders = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]
        return sorted(partition_key_for_folder(f) for f in folders)

    def list_sources(self, modality: str, partition_key: str) -> Listing:
        """The documents' source files of one batch folder (recursive), with fingerprints; others skipped."""
        folder = _safe_segment(folder_for_partition(partition_key))
        base = self.path(f"raw/{_modality(modality)}/{folder}")
        return self._listing(modality, base, self._find(base))

    def scan(self, modality: str) -> dict[str, Listing]:
        """One recursive listing of ``raw/<modality>/``: ``{partition key: Listing}`` (for sensors)."""
        base = self.path(f"raw/{_modality(modality)}")
        by_folder: dict[str, dict[str, dict[str, Any]]] = {}
        for path, info in self._find(base).items():
            relative = path[len(base) + 1:]
            if "/" not in relative:
                continue  # a file directly under raw/<modality>/ belongs to no batch
            folder = relative.split("/", 1)[0]
            by_folder.setdefault(folder, {})[path] = info
        return {partition_key_for_folder(folder): self._listing(modality, f"{base}/{folder}", infos)
                for folder, infos in sorted(by_folder.items())}

    def _find(self, base: str) -> dict[str, dict[str, Any]]:
        if self.is_s3:
            self.fs.invalidate_cache(base)
        elif not os.path.isdir(base):
            return {}
        return self._call(lambda: self.fs.find(base, detail=True), base, missing={})

    def _listing(self, modality: str, base: str, infos: dict[str, dict[str, Any]]) -> Listing:
        listing = Listing()
        for path in sorted(infos):
            info = infos[path]
            if info.get("type") == "directory":
                continue
            key = path[len(base) + 1:]
            if posixpath.splitext(key)[1].lower() not in EXTENSIONS[_modality(modality)]:
                listing.skipped.append(key)
                continue
            listing.sources.append(SourceObject(
                key=key, uri=self.uri(path), path=path, size=int(info.get("size") or 0),
                fingerprint=_fingerprint(info), last_modified=_last_modified(info)))
        return listing

    # ------------------------------------------------------------------ reading
    def read_documents(self, modality: str, sources: Iterable[SourceObject], *, chunk_size: int = 64) -> Iterator[Document]:
        """Yield the documents of ``sources`` in order, reading ``chunk_size`` files at a time (concurrently on S3).

        A file that cannot be read or parsed yields a :class:`Document` with ``error`` set, never an exception.
        """
        batch: list[SourceObject] = []
        for source in sources:
            batch.append(source)
            if len(batch) >= chunk_size:
                yield from self._read_batch(modality, batch)
                batch = []
        if batch:
            yield from self._read_batch(modality, batch)

    def _read_batch(self, modality: str, batch: list[SourceObject]) -> Iterator[Document]:
        paths = [s.path for s in batch]
        if self.is_s3:
            contents = self.fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: self._cat_one(paths[0])}
        else:
            contents = {p: self._cat_one(p) for p in paths}
        for source in batch:
            data = contents.get(source.path)
            if isinstance(data, BaseException):
                yield Document(source.key, source.uri, source.fingerprint, error=_read_error(data))
            elif _modality(modality) == "images":
                yield _image_document(source, data)
            elif source.is_jsonl:
                yield from self._jsonl_documents(source, data)
            else:
                yield _text_document(source, data)

    def _cat_one(self, path: str) -> bytes | BaseException:
        try:
            return self.fs.cat_file(path)
        except Exception as exc:  # reported per document
            return exc

    def _jsonl_documents(self, source: SourceObject, data: bytes) -> Iterator[Document]:
        seen: set[str] = set()
        lines = data.split(b"\n")
        if not data.strip():
            yield Document(source.key, source.uri, source.fingerprint, error="empty file: no JSON lines")
            return
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            fingerprint = hashlib.sha256(raw).hexdigest()[:20]
            fallback_id = f"{source.key}#L{number}"
            try:
                record = json.loads(raw)
            except ValueError as exc:
                yield Document(fallback_id, source.uri, fingerprint, error=f"line {number}: invalid JSON ({exc})")
                continue
            if not isinstance(record, dict):
                yield Document(fallback_id, source.uri, fingerprint,
                               error=f"line {number}: expected a JSON object, got {type(record).__name__}")
                continue
            raw_id = record.get(self.jsonl_id_field)
            doc_id = f"{source.key}#{raw_id}" if raw_id not in (None, "") else fallback_id
            text = record.get(self.jsonl_text_field)
            if doc_id in seen:
                yield Document(fallback_id, source.uri, fingerprint,
                               error=f"line {number}: duplicate {self.jsonl_id_field!r} {raw_id!r}")
                continue
            seen.add(doc_id)
            if not isinstance(text, str):
                problem = "missing" if text is None else f"a {type(text).__name__}, not a string"
                yield Document(doc_id, source.uri, fingerprint,
                               error=f"line {number}: the text field {self.jsonl_text_field!r} is {problem}")
                continue
            yield _checked_text(Document(doc_id, source.uri, fingerprint), text, f"line {number}: ")

    # ------------------------------------------------------------------ errors
    def _call(self, action: Any, path: str, missing: Any) -> Any:
        try:
            return action()
        except PermissionError as exc:
            raise DocumentStoreError(
                f"access to {self.uri(path)!r} at {self.endpoint_url or 'AWS'} was denied ({_first_line(exc)}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the resource's key/secret)") from None
        except FileNotFoundError:
            bucket = self.root.split("/", 1)[0]
            if self.is_s3 and not self._call(lambda: self.fs.exists(bucket), bucket, missing=False):
                raise DocumentStoreError(
                    f"bucket {bucket!r} does not exist at {self.endpoint_url or 'AWS'}; create it or fix the "
                    "root URL") from None
            return missing
        except OSError as exc:
            raise DocumentStoreError(
                f"cannot list {self.uri(path)!r} at {self.endpoint_url or 'the filesystem'}: {_first_line(exc)}"
            ) from None


# ---------------------------------------------------------------------------------------------- helpers
def _modality(modality: str) -> str:
    if modality in ("image", "images"):
        return "images"
    if modality == "text":
        return "text"
    raise ValueError(f"modality must be 'text' or 'images', got {modality!r}")


def _safe_segment(folder: str) -> str:
    if not folder or "/" in folder or folder in (".", "..") or "\x00" in folder:
        raise DocumentStoreError(f"batch folder {folder!r} is not a single safe path segment")
    return folder


def _fingerprint(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    return f"{int(info.get('size') or 0)}-{info.get('mtime') or info.get('created') or 0}"


def _last_modified(info: dict[str, Any]) -> float:
    value = info.get("LastModified") or info.get("mtime") or 0
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _read_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the file disappeared before it could be read; it will be listed again on the next run"
    return (f"could not be read ({type(exc).__name__}: {_first_line(exc)}); if it was being overwritten, "
            "the next run will pick up the new version")


def _text_document(source: SourceObject, data: bytes) -> Document:
    document = Document(source.key, source.uri, source.fingerprint)
    if not data:
        document.error = "empty file (0 bytes)"
        return document
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        document.error = f"not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 4]!r}); save it as UTF-8"
        return document
    return _checked_text(document, text.removeprefix("\ufeff"), "")


def _checked_text(document: Document, text: str, where: str) -> Document:
    if not text.strip():
        document.error = f"{where}empty document (no text)"
    elif len(text) > MAX_TEXT_CHARS:
        document.error = (f"{where}{len(text):,} characters is over Infinity's limit of {MAX_TEXT_CHARS:,}; "
                          "split the document")
    else:
        document.content = text
    return document


def _image_document(source: SourceObject, data: bytes) -> Document:
    if not data:
        return Document(source.key, source.uri, source.fingerprint, error="empty file (0 bytes)")
    return Document(source.key, source.uri, source.fingerprint, content=data)
