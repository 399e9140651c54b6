"""JSON Lines (``.jsonl``): one text document per non-blank line, streamed.

``doc_id`` = ``<key>#<id field>``; a line without an id (field missing, null or ``""``) gets
``<key>#L<line number>``, stable while the lines above it stay. The fingerprint is a SHA-256 of the text field's
value (the exact content embedded): editing other fields of a line does not re-embed it. Failures (each naming
the line number): invalid UTF-8, invalid JSON, not a JSON object, id neither string nor integer, text field
missing or not a string, duplicate id, empty or too long text; a file without any JSON line is one failure.
"""
from __future__ import annotations

import hashlib
import json

from infinity_assets.storage.backend import SourceObject
from infinity_assets.storage.formats.base import Document, Format
from infinity_assets.storage.formats.text import checked_text


class JsonlFormat(Format):
    """``.jsonl``: options ``jsonl_id_field`` (default ``id``) and ``jsonl_text_field`` (default ``text``)."""

    modality = "text"
    extensions = frozenset({".jsonl"})
    streamed = True

    def line_parser(self, source: SourceObject) -> _JsonlParser:
        return _JsonlParser(source, self.options.get("jsonl_id_field", "id"),
                            self.options.get("jsonl_text_field", "text"))


class _JsonlParser:
    """Turns the lines of one JSONL file into Documents, remembering ids to refuse duplicates."""

    empty_reason = "no JSON lines (the file is empty)"

    def __init__(self, source: SourceObject, id_field: str, text_field: str) -> None:
        self.source, self.id_field, self.text_field = source, id_field, text_field
        self.number = 0
        self.offset = 0
        self.documents = 0
        self.seen: set[str] = set()

    def line(self, raw: bytes) -> Document | None:
        self.number += 1
        start, self.offset = self.offset, self.offset + len(raw)
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            return None  # blank lines separate nothing and are not documents
        self.documents += 1
        source, number = self.source, self.number
        fallback_id = f"{source.key}#L{number}"

        def failed(reason: str, doc_id: str = fallback_id) -> Document:
            return Document(
                doc_id,
                source.uri,
                "sha256:" + hashlib.sha256(raw).hexdigest()[:32],
                error=f"line {number}: {reason}",
            )

        try:
            text_line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return failed(
                f"not valid UTF-8 (byte {start + exc.start} from the start of the file is "
                f"{raw[exc.start : exc.start + 1]!r}); save the file as UTF-8"
            )
        try:
            record = json.loads(text_line)
        except ValueError as exc:
            return failed(f"invalid JSON ({exc})")
        if not isinstance(record, dict):
            return failed(f"expected a JSON object, got a JSON {type(record).__name__}")
        raw_id = record.get(self.id_field)
        if raw_id is None or raw_id == "":
            doc_id = fallback_id
        elif isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool)):
            doc_id = f"{source.key}#{raw_id}"
        else:
            return failed(
                f"the id field {self.id_field!r} must be a string or an integer, "
                f"not a {type(raw_id).__name__}"
            )
        if doc_id in self.seen:
            return failed(f"duplicate {self.id_field!r} {raw_id!r} (an earlier line has the same id)")
        self.seen.add(doc_id)
        text = record.get(self.text_field)
        if not isinstance(text, str):
            problem = "missing" if text is None else f"a JSON {type(text).__name__}, not a string"
            return failed(f"the text field {self.text_field!r} is {problem}", doc_id)
        fingerprint = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return checked_text(Document(doc_id, source.uri, fingerprint), text, f"line {number}: ")
