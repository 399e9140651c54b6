"""DocumentStore on the local filesystem and the real SeaweedFS: layout, keys, listing, reading, failures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

import dagster as dg
import pytest
from PIL import Image

from infinity_assets.storage.documents import (
    MAX_TEXT_CHARS,
    DocumentStore,
    DocumentStoreError,
    FailureKind,
    folder_for_partition,
    partition_key_for_folder,
)
from infinity_assets.storage.local import LocalBackend

from infinity_assets_dev.ports import free_port
from infinity_assets_dev.seaweedfs import SeaweedFS


def image_bytes(size: tuple[int, int] = (16, 12), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def documents_by_id(store: DocumentStore, modality: str, partition: str) -> dict:
    listing = store.list_sources(modality, partition)
    return {d.doc_id: d for d in store.read_documents(modality, listing.sources)}


# --- partition keys
TRICKY_FOLDERS = [
    "2026-11-24",
    "a.b",
    "a..b",
    "a...b",
    "....",
    ".hidden",
    "q1, q2 [draft]",
    "x|y",
    "50%",
    "50%25",
    "caf\u00e9 \u65e5\u672c",
    "tab\there",
    "new\nline",
    "a%2Eb",
    "~user",
    "a+b=c&d?e#f",
    "emoji \U0001f600",
]


@pytest.mark.parametrize("folder", TRICKY_FOLDERS)
def test_partition_keys_round_trip_and_are_accepted_by_dagster(folder):
    key = partition_key_for_folder(folder)
    assert folder_for_partition(key) == folder
    assert not set(key) & {"|", ",", "[", "]", "/", " "}
    dg.StaticPartitionsDefinition([key])  # raises for "...", control characters and duplicates


def test_partition_keys_of_distinct_folders_are_distinct():
    keys = [partition_key_for_folder(f) for f in TRICKY_FOLDERS]
    assert len(set(keys)) == len(keys)


def test_plain_folder_names_are_their_own_keys():
    assert [partition_key_for_folder(f) for f in ("2026-11-24", "batch_01", "v1.2")] == [
        "2026-11-24",
        "batch_01",
        "v1.2",
    ]


@pytest.mark.parametrize("key", ["a%2eb", "50%", "a,b", "a%41", "a b", "", "a...b", "%zz"])
def test_keys_the_mapping_cannot_produce_are_refused(key):
    with pytest.raises(ValueError, match="not a partition key"):
        folder_for_partition(key)


# --- layout, paths
def test_layout_paths_and_uris(store_root):
    store = store_root.store()
    assert store.artifact_path("text", "b1") == store.path("embeddings/text/b1.parquet")
    assert store.artifact_path("image", "b1") == store.path("embeddings/images/b1.parquet")
    assert store.artifact_path("images", partition_key_for_folder("q1, q2")).endswith(
        "/embeddings/images/q1, q2.parquet"
    )
    assert store.uri_for("raw/text/b/a.txt") == store.uri(store.path("raw/text/b/a.txt"))
    assert store.uri_for("raw/text/b/a.txt").startswith("s3://" if store_root.is_s3 else "/")
    assert store.uri_for("raw/text/b/a.txt").endswith("/raw/text/b/a.txt")


@pytest.mark.parametrize(
    "key", ["../outside.txt", "/etc/passwd", "raw/../../outside", "a/\x00b", "", ".", "..\\..\\outside"]
)
def test_keys_outside_the_root_are_refused(tmp_path, key):
    store = DocumentStore(str(tmp_path / "root"))
    with pytest.raises(DocumentStoreError, match="inside the store root"):
        store.path(key)


def test_dot_segments_that_stay_inside_are_normalised(tmp_path):
    store = DocumentStore(str(tmp_path))
    assert store.path("raw/text/b/../c/./d.txt") == f"{store.root}/raw/text/c/d.txt"


@pytest.mark.parametrize("folder", ["..", "."])
def test_partition_keys_naming_parent_folders_are_refused(tmp_path, folder):
    store = DocumentStore(str(tmp_path))
    key = partition_key_for_folder(folder)
    with pytest.raises(DocumentStoreError, match="not a single safe path segment"):
        store.list_sources("text", key)
    with pytest.raises(DocumentStoreError, match="not a single safe path segment"):
        store.artifact_path("text", key)


def test_a_symlink_out_of_the_root_is_listed_but_never_read(tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("private text outside the store")
    batch = tmp_path / "root" / "raw" / "text" / "b"
    batch.mkdir(parents=True)
    (batch / "link.txt").symlink_to(secret)
    (batch / "fine.txt").write_text("inside")
    docs = documents_by_id(DocumentStore(str(tmp_path / "root")), "text", "b")
    assert docs["fine.txt"].content == "inside"
    assert docs["link.txt"].content is None and "outside the store root" in docs["link.txt"].error


# --- listing
def test_batch_folders_are_partitions_and_nested_folders_belong_to_them(store_root):
    store_root.put_many(
        {
            "raw/text/b2/a.txt": "a",
            "raw/text/b1/x/y/deep.md": "deep",
            "raw/text/b1/top.txt": "t",
            "raw/text/loose.txt": "in no batch",
            "raw/images/scan/p.png": image_bytes(),
            f"raw/text/{'q1, q2'}/c.txt": "c",
        }
    )
    store = store_root.store()
    assert store.list_partitions("text") == sorted(["b1", "b2", partition_key_for_folder("q1, q2")])
    assert store.list_partitions("images") == ["scan"]
    assert [s.key for s in store.list_sources("text", "b1").sources] == ["top.txt", "x/y/deep.md"]
    assert [s.key for s in store.list_sources("text", partition_key_for_folder("q1, q2")).sources] == [
        "c.txt"
    ]


def test_a_folder_prefix_is_not_a_match(store_root):
    store_root.put_many({"raw/text/b/a.txt": "a", "raw/text/b2/z.txt": "z", "raw/text/b-c/y.txt": "y"})
    assert [s.key for s in store_root.store().list_sources("text", "b").sources] == ["a.txt"]


def test_missing_folders_list_as_empty(store_root):
    store = store_root.store()
    assert store.list_partitions("text") == []
    listing = store.list_sources("images", "nothing-here")
    assert listing.sources == [] and listing.skipped == []
    assert store.scan("text") == {}


def test_unsupported_extensions_are_skipped_and_named(store_root):
    store_root.put_many(
        {
            "raw/text/b/a.TXT": "upper",
            "raw/text/b/notes.docx": b"PK",
            "raw/text/b/data.csv": "x",
            "raw/text/b/sub/README": "no ext",
            "raw/text/b/p.png": image_bytes(),
            "raw/images/b/p.PNG": image_bytes(),
            "raw/images/b/a.txt": "text",
        }
    )
    store = store_root.store()
    text = store.list_sources("text", "b")
    assert [s.key for s in text.sources] == ["a.TXT"]
    assert text.skipped == ["data.csv", "notes.docx", "p.png", "sub/README"]
    images = store.list_sources("images", "b")
    assert [s.key for s in images.sources] == ["p.PNG"] and images.skipped == ["a.txt"]


def test_sources_carry_uri_size_and_fingerprint(store_root):
    uri = store_root.put("raw/text/b/sub/a.txt", "hello world")
    store = store_root.store()
    (source,) = store.list_sources("text", "b").sources
    assert (source.key, source.uri, source.size) == ("sub/a.txt", uri, 11)
    assert store.fs.cat_file(source.path) == b"hello world"
    if store_root.is_s3:
        assert (
            source.fingerprint == hashlib.md5(b"hello world").hexdigest()
        )  # the ETag of a single-part upload
    else:
        info = os.stat(source.path)
        assert source.fingerprint == f"{info.st_size}-{info.st_mtime_ns}"
    assert abs(source.last_modified - time.time()) < 120


def test_listings_are_never_stale(store_root):
    store = store_root.store()
    store_root.put("raw/text/b/a.txt", "first")
    assert store.list_partitions("text") == ["b"]
    before = store.list_sources("text", "b").fingerprints
    store_root.put("raw/text/b/new.txt", "added")
    store_root.put("raw/text/c/other.txt", "new batch")
    store_root.put("raw/text/b/a.txt", "first, edited")
    assert store.list_partitions("text") == ["b", "c"]
    after = store.list_sources("text", "b").fingerprints
    assert set(after) == {"a.txt", "new.txt"} and after["a.txt"] != before["a.txt"]
    store_root.delete("raw/text/b/new.txt")
    assert set(store.scan("text")["b"].fingerprints) == {"a.txt"}
    assert set(store.list_sources("text", "b").fingerprints) == {"a.txt"}


def test_scan_matches_list_sources_of_every_partition(store_root):
    objects = {f"raw/text/b{i % 3}/{'sub/' if i % 2 else ''}doc{i}.txt": f"document {i}" for i in range(20)}
    objects["raw/text/b1/skip.csv"] = "x"
    store_root.put_many(objects)
    store = store_root.store()
    scanned = store.scan("text", page_size=4)
    assert list(scanned) == ["b0", "b1", "b2"]
    for partition, listing in scanned.items():
        assert listing == store.list_sources("text", partition)
    assert scanned["b1"].skipped == ["skip.csv"]


def test_object_pages_are_bounded_and_cover_everything(store_root):
    store_root.put_many(
        {f"raw/images/b{i % 4}/p{i:02d}.png": b"x" for i in range(25)} | {"raw/images/loose.png": b"x"}
    )
    pages = list(store_root.store().iter_object_pages("images", page_size=6))
    assert all(len(page) <= 6 for page in pages)
    found = sorted((item.partition, item.source.key) for page in pages for item in page)
    assert found == sorted((f"b{i % 4}", f"p{i:02d}.png") for i in range(25))


@pytest.mark.slow
def test_scanning_10000_objects_on_seaweedfs_is_paged_and_complete(seaweedfs, s3_bucket):
    """Listing pages of at most 1,000 objects, every object once, grouped by batch. How long it takes is measured
    by `make bench` (section `sensor`: one sensor tick over 100,000 SeaweedFS objects), not asserted here."""
    fs = seaweedfs.filesystem()
    fs.pipe(
        {f"{s3_bucket}/raw/text/batch-{i % 50:03d}/doc-{i:06d}.txt": b"x" for i in range(10_000)},
        batch_size=64,
    )
    store = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
    pages = [len(page) for page in store.iter_object_pages("text")]
    listings = store.scan("text")
    assert sum(pages) == 10_000 and len(pages) >= 10 and max(pages) <= 1000
    assert len(listings) == 50 and all(len(listing.sources) == 200 for listing in listings.values())


# --- reading text
def test_text_files_become_one_document_each(store_root):
    store_root.put_many(
        {
            "raw/text/b/a.txt": "plain text",
            "raw/text/b/sub/n.md": "# Title\n\nbody",
            "raw/text/b/bom.txt": "\ufeffwith a BOM".encode("utf-8"),
        }
    )
    store = store_root.store()
    listing = store.list_sources("text", "b")
    docs = {d.doc_id: d for d in store.read_documents("text", listing.sources)}
    assert {k: d.content for k, d in docs.items()} == {
        "a.txt": "plain text",
        "sub/n.md": "# Title\n\nbody",
        "bom.txt": "with a BOM",
    }
    for source in listing.sources:
        assert (docs[source.key].source_uri, docs[source.key].fingerprint) == (source.uri, source.fingerprint)
        assert docs[source.key].error is None


def test_bad_text_files_are_reported_with_their_reason(store_root):
    store_root.put_many(
        {
            "raw/text/b/latin1.txt": "na\u00efve caf\u00e9".encode("latin-1"),
            "raw/text/b/zero.txt": b"",
            "raw/text/b/blank.md": " \n\t\n",
            "raw/text/b/limit.txt": "x" * MAX_TEXT_CHARS,
            "raw/text/b/over.txt": "\u00e9" * (MAX_TEXT_CHARS + 1),
        }
    )
    docs = documents_by_id(store_root.store(), "text", "b")
    assert "not valid UTF-8 (byte 2 " in docs["latin1.txt"].error and "b'\\xef'" in docs["latin1.txt"].error
    assert docs["zero.txt"].error == "empty file (0 bytes)"
    assert "empty document" in docs["blank.md"].error
    assert docs["limit.txt"].error is None and len(docs["limit.txt"].content) == MAX_TEXT_CHARS
    assert "122,881 characters is over Infinity's limit of 122,880" in docs["over.txt"].error
    assert all(d.content is None for k, d in docs.items() if k != "limit.txt")


# --- reading JSONL
def jsonl(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def test_jsonl_lines_become_documents_with_ids(store_root):
    store_root.put(
        "raw/text/b/set.jsonl",
        jsonl(
            {"id": "a", "text": "alpha"},
            "",
            {"id": 7, "text": "seven"},
            {"text": "no id"},
            {"id": "", "text": "empty id"},
        )
        + "\r\n",
    )
    docs = documents_by_id(store_root.store(), "text", "b")
    assert {k: d.content for k, d in docs.items()} == {
        "set.jsonl#a": "alpha",
        "set.jsonl#7": "seven",
        "set.jsonl#L4": "no id",
        "set.jsonl#L5": "empty id",
    }
    assert all(d.source_uri.endswith("/raw/text/b/set.jsonl") for d in docs.values())


def test_jsonl_fingerprints_hash_the_text_only(store_root):
    store_root.put(
        "raw/text/b/one.jsonl", jsonl({"id": "a", "text": "same", "meta": 1}, {"id": "b", "text": "other"})
    )
    first = documents_by_id(store_root.store(), "text", "b")
    store_root.put(
        "raw/text/b/one.jsonl", jsonl({"id": "a", "text": "same", "meta": 2}, {"id": "b", "text": "changed"})
    )
    second = documents_by_id(store_root.store(), "text", "b")
    assert first["one.jsonl#a"].fingerprint == second["one.jsonl#a"].fingerprint
    assert first["one.jsonl#b"].fingerprint != second["one.jsonl#b"].fingerprint
    assert first["one.jsonl#a"].fingerprint == "sha256:" + hashlib.sha256(b"same").hexdigest()[:32]


def test_jsonl_field_names_are_configurable(store_root):
    store_root.put("raw/text/b/c.jsonl", jsonl({"uid": "u1", "body": "custom fields", "text": "ignored"}))
    docs = documents_by_id(store_root.store(jsonl_id_field="uid", jsonl_text_field="body"), "text", "b")
    assert {k: d.content for k, d in docs.items()} == {"c.jsonl#u1": "custom fields"}


def test_bad_jsonl_lines_are_reported_by_line_and_the_others_kept(store_root):
    lines = jsonl(
        {"id": "ok", "text": "fine"},
        "{not json",
        "[1, 2]",
        {"id": "m"},
        {"id": "n", "text": 3},
        {"id": ["x"], "text": "t"},
        {"id": "ok", "text": "dup"},
        {"id": "e", "text": "  "},
        {"id": "long", "text": "y" * (MAX_TEXT_CHARS + 1)},
        {"id": "last", "text": "still read"},
    )
    store_root.put("raw/text/b/bad.jsonl", lines.encode() + b'{"id": "u", "text": "caf\xe9"}\n')
    docs = documents_by_id(store_root.store(), "text", "b")
    errors = {k: d.error for k, d in docs.items() if d.error}
    assert {k: d.content for k, d in docs.items() if not d.error} == {
        "bad.jsonl#ok": "fine",
        "bad.jsonl#last": "still read",
    }
    assert errors["bad.jsonl#L2"].startswith("line 2: invalid JSON")
    assert errors["bad.jsonl#L3"] == "line 3: expected a JSON object, got a JSON list"
    assert errors["bad.jsonl#m"] == "line 4: the text field 'text' is missing"
    assert errors["bad.jsonl#n"] == "line 5: the text field 'text' is a JSON int, not a string"
    assert errors["bad.jsonl#L6"] == "line 6: the id field 'id' must be a string or an integer, not a list"
    assert errors["bad.jsonl#L7"].startswith("line 7: duplicate 'id' 'ok'")
    assert errors["bad.jsonl#e"].startswith("line 8: empty document")
    assert errors["bad.jsonl#long"].startswith("line 9: 122,881 characters")
    offset = len(lines.encode()) + len(b'{"id": "u", "text": "caf')
    assert (
        errors["bad.jsonl#L11"] == f"line 11: not valid UTF-8 (byte {offset} from the start of the file is "
        "b'\\xe9'); save the file as UTF-8"
    )
    assert len(docs) == 11


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_a_jsonl_file_without_lines_is_one_failure(store_root, content):
    store_root.put("raw/text/b/empty.jsonl", content)
    docs = documents_by_id(store_root.store(), "text", "b")
    assert {k: d.error for k, d in docs.items()} == {"empty.jsonl": "no JSON lines (the file is empty)"}


# --- reading images
def test_images_are_read_as_bytes(store_root):
    originals = {
        f"p.{ext}": image_bytes(fmt=fmt)
        for ext, fmt in [
            ("png", "PNG"),
            ("jpg", "JPEG"),
            ("webp", "WEBP"),
            ("gif", "GIF"),
            ("bmp", "BMP"),
            ("tiff", "TIFF"),
        ]
    }
    originals["sub/smallest.png"] = image_bytes((3, 3))
    store_root.put_many({f"raw/images/b/{k}": v for k, v in originals.items()})
    docs = documents_by_id(store_root.store(), "images", "b")
    assert {k: d.content for k, d in docs.items()} == originals


def test_bad_images_are_reported_with_their_reason(store_root):
    png = image_bytes((64, 64))
    store_root.put_many(
        {
            "raw/images/b/zero.png": b"",
            "raw/images/b/text.png": b"this is not an image at all",
            "raw/images/b/truncated.png": png[: len(png) // 2],
            "raw/images/b/tiny.png": image_bytes((2, 5)),
            "raw/images/b/good.png": png,
        }
    )
    docs = documents_by_id(store_root.store(), "images", "b")
    assert docs["good.png"].content == png
    assert docs["zero.png"].error == "empty file (0 bytes)"
    assert docs["text.png"].error.startswith("not a readable image")
    assert docs["truncated.png"].error.startswith("the PNG image is truncated or corrupt")
    assert docs["tiny.png"].error == "image is 2x5 pixels; Infinity needs at least 3x3"


# --- consistency
def test_a_file_changed_after_listing_is_a_retry_later_failure(store_root):
    store_root.put_many({"raw/text/b/a.txt": "old", "raw/images/b/p.png": image_bytes()})
    store = store_root.store()
    text, images = store.list_sources("text", "b").sources, store.list_sources("images", "b").sources
    store_root.put("raw/text/b/a.txt", "new and longer")
    store_root.put("raw/images/b/p.png", image_bytes((20, 20)))
    for modality, sources in (("text", text), ("images", images)):
        (document,) = store.read_documents(modality, sources)
        assert document.content is None
        assert "changed since it was listed" in document.error and "retry later" in document.error
        assert document.error_kind is FailureKind.CHANGED


def test_a_file_deleted_after_listing_is_a_failure_not_a_crash(store_root):
    store_root.put_many({"raw/text/b/a.txt": "a", "raw/text/b/gone.txt": "b", "raw/text/b/gone.jsonl": "{}"})
    store = store_root.store()
    sources = store.list_sources("text", "b").sources
    store_root.delete("raw/text/b/gone.txt")
    store_root.delete("raw/text/b/gone.jsonl")
    docs = {d.doc_id: d for d in store.read_documents("text", sources)}
    assert docs["a.txt"].content == "a"
    assert "deleted after it was listed" in docs["gone.txt"].error
    assert "deleted after it was listed" in docs["gone.jsonl"].error
    assert docs["gone.txt"].error_kind is docs["gone.jsonl"].error_kind is FailureKind.DELETED


def test_a_jsonl_file_overwritten_while_streamed_ends_in_a_retry_later_failure(store_root):
    lines = [json.dumps({"id": i, "text": f"line {i} " + "z" * 200}) for i in range(2000)]  # ~420 KB
    store_root.put("raw/text/b/big.jsonl", "\n".join(lines))
    store = store_root.store()
    store.stream_block_size = 64 * 1024
    documents = store.read_documents("text", store.list_sources("text", "b").sources)
    first = next(documents)
    assert first.doc_id == "big.jsonl#0" and first.error is None
    store_root.put("raw/text/b/big.jsonl", "\n".join(reversed(lines)) + "\n")
    rest = list(documents)
    assert "changed while it was read" in rest[-1].error and "retry later" in rest[-1].error
    assert rest[-1].doc_id == "big.jsonl" and rest[-1].error_kind is FailureKind.CHANGED
    if store_root.is_s3:  # s3fs pins the ETag: the next block fetched after the overwrite fails
        assert len(rest) < 1999


def test_a_files_own_problem_is_a_document_failure(store_root):
    store_root.put_many({"raw/text/b/latin1.txt": "caf\u00e9".encode("latin-1"), "raw/text/b/zero.txt": b"",
                         "raw/text/b/lines.jsonl": '{"id": "a"}\nnot json\n',
                         "raw/images/b/text.png": b"not one"})
    store = store_root.store()
    failed = [d for m in ("text", "images") for d in documents_by_id(store, m, "b").values() if d.error]
    assert len(failed) == 5
    assert {d.error_kind for d in failed} == {FailureKind.DOCUMENT}
    assert not FailureKind.DOCUMENT.retryable


def test_a_store_error_reading_one_file_is_an_unreadable_failure_for_now(tmp_path, monkeypatch):
    (tmp_path / "raw/text/b").mkdir(parents=True)
    (tmp_path / "raw/text/b/a.txt").write_text("a")
    (tmp_path / "raw/text/b/b.txt").write_text("b")
    read = LocalBackend.read
    monkeypatch.setattr(LocalBackend, "read", lambda self, source: OSError("I/O error") if source.key == "b.txt"
                        else read(self, source))
    docs = documents_by_id(DocumentStore(str(tmp_path)), "text", "b")
    assert docs["a.txt"].content == "a" and docs["a.txt"].error is None
    assert docs["b.txt"].error == "could not be read (OSError: I/O error); retry later"
    assert docs["b.txt"].error_kind is FailureKind.UNREADABLE and FailureKind.UNREADABLE.retryable


def test_reads_are_chunked_and_lazy(store_root):
    store_root.put_many({f"raw/text/b/d{i:02d}.txt": f"document {i}" for i in range(30)})
    store = store_root.store(read_concurrency=4)
    documents = store.read_documents("text", store.list_sources("text", "b").sources, chunk_size=10)
    assert next(documents).content == "document 0"
    store_root.delete("raw/text/b/d25.txt")  # not fetched yet: chunks are read only when reached
    rest = list(documents)
    assert [d.doc_id for d in rest] == [f"d{i:02d}.txt" for i in range(1, 30)]
    assert [d.content for d in rest if d.doc_id != "d25.txt"] == [
        f"document {i}" for i in range(1, 30) if i != 25
    ]
    assert "deleted" in rest[24].error


# --- S3 settings, errors
def test_s3_settings_fall_back_to_the_aws_environment(seaweedfs, s3_bucket, monkeypatch):
    seaweedfs.filesystem().pipe_file(f"{s3_bucket}/raw/text/b/a.txt", b"from env")
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    store = DocumentStore(f"s3://{s3_bucket}")
    assert [d.content for d in store.read_documents("text", store.list_sources("text", "b").sources)] == [
        "from env"
    ]
    assert seaweedfs.secret_key not in repr(store) and seaweedfs.endpoint_url in repr(store)


def test_wrong_secret_is_an_authentication_error_naming_what_to_check(seaweedfs, s3_bucket):
    store = DocumentStore(
        f"s3://{s3_bucket}/docs",
        endpoint_url=seaweedfs.endpoint_url,
        key=seaweedfs.access_key,
        secret="not-the-secret",
    )
    for action in (
        lambda: store.list_partitions("text"),
        lambda: store.list_sources("text", "b"),
        lambda: store.scan("images"),
    ):
        with pytest.raises(DocumentStoreError) as info:
            action()
        message = str(info.value)
        assert "authentication failed" in message and "SignatureDoesNotMatch" in message
        assert seaweedfs.endpoint_url in message and repr(s3_bucket) in message
        assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert "not-the-secret" not in message and seaweedfs.secret_key not in message


def test_wrong_credentials_while_reading_raise_instead_of_failing_every_document(seaweedfs, s3_bucket):
    seaweedfs.filesystem().pipe(
        {f"{s3_bucket}/raw/text/b/a.txt": b"a", f"{s3_bucket}/raw/text/b/c.jsonl": b"{}"}
    )
    good = DocumentStore(f"s3://{s3_bucket}", **seaweedfs.storage_options())
    bad = DocumentStore(
        f"s3://{s3_bucket}", endpoint_url=seaweedfs.endpoint_url, key="unknown-key", secret="x"
    )
    for source in good.list_sources("text", "b").sources:
        with pytest.raises(DocumentStoreError, match="authentication failed.*AWS_SECRET_ACCESS_KEY"):
            list(bad.read_documents("text", [source]))


def test_a_missing_bucket_says_so(seaweedfs):
    store = DocumentStore("s3://no-such-bucket-here/x", **seaweedfs.storage_options())
    with pytest.raises(
        DocumentStoreError, match="'no-such-bucket-here' .*the bucket does not exist; create it"
    ):
        store.list_partitions("text")


def test_an_unreachable_endpoint_says_which():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = DocumentStore("s3://documents", endpoint_url=endpoint, key="k", secret="s")
    with pytest.raises(
        DocumentStoreError, match=f"cannot reach the S3 endpoint {endpoint}.*AWS_ENDPOINT_URL"
    ):
        store.list_sources("text", "b")


def test_the_local_default_root_needs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = DocumentStore("./.data")
    assert store.root == f"{tmp_path}/.data" and not store.is_s3
    assert store.list_partitions("text") == [] and store.scan("images") == {}


# --- the server itself
def test_seaweedfs_checks_signatures_and_restarts_on_the_same_ports_and_data(tmp_path):
    with SeaweedFS(tmp_path / "own") as server:
        bucket = server.create_bucket()
        server.filesystem().pipe_file(f"{bucket}/kept.txt", b"survives restarts")
        endpoint, ports = server.endpoint_url, dict(server.ports)
        server.restart()
        assert (server.endpoint_url, server.ports) == (endpoint, ports)
        assert server.filesystem().cat_file(f"{bucket}/kept.txt") == b"survives restarts"
        server.kill()
        server.start()
        assert server.filesystem().cat_file(f"{bucket}/kept.txt") == b"survives restarts"
        pid = server.pid
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_seaweedfs_on_a_nearly_full_disk_refuses_to_start_and_says_why(tmp_path, monkeypatch):
    # Below its floor the volume server turns read-only and writes wait forever; the start says so instead.
    import infinity_assets_dev.seaweedfs as seaweedfs_module

    usage = seaweedfs_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(seaweedfs_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=seaweedfs_module.MIN_FREE_SPACE))
    server = SeaweedFS(tmp_path / "full")
    with pytest.raises(RuntimeError, match=r"needs free disk .*/full: 256 MiB free.*free some disk"):
        server.start()
    assert server.pid is None
