"""wire.decode_response: the base64 fast path gives exactly what the JSON path gives, results and errors."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from infinity_assets import InfinityResponseError

from infinity_assets.client import wire

DIM = 4


def vectors(rows: int, seed: int, padding: int = 0) -> np.ndarray:
    array = np.random.default_rng(seed).standard_normal((rows, DIM)).astype("<f4") + 0.01
    return np.concatenate([array, np.zeros((padding, DIM), "<f4")])


def item(index: int, array: np.ndarray | str) -> dict:
    embedding = array if isinstance(array, str) else base64.b64encode(array.tobytes()).decode()
    return {"object": "embedding", "embedding": embedding, "index": index}


def server_body(items: list[dict], **extra) -> bytes:
    """A body laid out the way infinity-emb (orjson) writes it: compact, in this key order."""
    payload = {"object": "list", "data": items, "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
               "id": "infinity-1", "created": 1, **extra}
    return json.dumps(payload, separators=(",", ":")).encode()


def json_path(body: bytes, expected: int) -> list[np.ndarray]:
    return wire.decode_embeddings(wire.parse_json(body, "http://x"), expected=expected, encoding="base64",
                                  hidden_dim=DIM, model="m")


def fast_path(body: bytes, expected: int) -> list[np.ndarray]:
    return wire.decode_response(body, expected=expected, encoding="base64", hidden_dim=DIM, model="m",
                                url="http://x")


def outcome(decode, body: bytes, expected: int):
    try:
        return [a.tolist() for a in decode(body, expected)]
    except InfinityResponseError as exc:
        return type(exc), str(exc), exc.retryable


def test_server_layout_takes_the_fast_path_and_equals_the_json_path(monkeypatch):
    arrays = [vectors(3, 1, padding=2), vectors(5, 2), vectors(1, 3, padding=1)]
    body = server_body([item(2, arrays[2]), item(0, arrays[0]), item(1, arrays[1])])
    expected = json_path(body, 3)
    monkeypatch.setattr(wire, "parse_json", lambda *a: pytest.fail("the fast path parsed the JSON"))
    decoded = fast_path(body, 3)
    for got, want in zip(decoded, expected):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(decoded[0], arrays[0][:3])  # padding rows dropped


A = vectors(2, 5)
GOOD = item(0, A)
B64 = GOOD["embedding"]


@pytest.mark.parametrize("body, expected", [
    (json.dumps({"object": "list", "data": [GOOD], "model": "m"}).encode(), 1),  # spaces after separators
    (server_body([item(0, B64.replace("/", "\\/") if "/" in B64 else B64[:-1] + "\\u0041")]), 1),  # escapes
    (server_body([GOOD, item(1, A)]), 1),  # more embeddings than inputs
    (server_body([GOOD]), 2),  # fewer
    (server_body([GOOD, item(0, A)]), 2),  # a repeated index
    (server_body([item(1, A)]), 1),  # an index out of range
    (server_body([item(0, "not base64!")]), 1),
    (server_body([item(0, vectors(1, 1)[:, :3].copy())]), 1),  # bytes that are not whole rows of hidden_dim
    (server_body([GOOD])[:-5], 1),  # truncated after the data
    (server_body([GOOD]).replace(b'"index":0', b'"index":00'), 1),  # not JSON
    (server_body([GOOD]).replace(b'"data":[', b'"more":{"data":[', 1).replace(b'],"model"', b']},"model"', 1), 1),
    (server_body([GOOD], data=[]), 1),  # a second "data" key: JSON keeps the last one
    (server_body([{"object": "embedding", "index": 0, "embedding": B64}]), 1),  # another key order
    (server_body([{"object": "embedding", "embedding": [[1.0, 2.0, 3.0, 4.0]], "index": 0}]), 1),  # floats
    (b"", 1),
], ids=["spaced", "escapes", "extra", "missing", "repeated-index", "index-range", "bad-base64", "not-rows",
        "truncated", "leading-zero", "nested-data", "duplicate-data-key", "key-order", "floats", "empty"])
def test_anything_unusual_gives_what_the_json_path_gives(body, expected):
    assert outcome(fast_path, body, expected) == outcome(json_path, body, expected)


def test_float_encoding_always_takes_the_json_path(monkeypatch):
    parsed = []
    monkeypatch.setattr(wire, "parse_json", lambda body, url: parsed.append(body) or json.loads(body))
    body = server_body([{"object": "embedding", "embedding": A.tolist(), "index": 0}])
    decoded = wire.decode_response(body, expected=1, encoding="float", hidden_dim=DIM, model="m", url="http://x")
    np.testing.assert_array_equal(decoded[0], A)
    assert parsed == [body]


@pytest.mark.parametrize("inputs", [
    [wire.DataUri("data:image/png;base64,iVBORw0KGgo="), wire.DataUri("data:image/jpeg;base64,/9j/4AAQ+/==")],
    ["data:image/png;base64,iVBORw0KGgo=", wire.DataUri("data:image/png;base64,AAAA")],
    ["plain ascii text", "another"],
    ['a "quoted" word', "back\\slash"],
    ["tab\there", "new\nline", "\x7f"],
    ["unicode: café ☕", "emoji 🙂"],
    [],
])
def test_request_body_is_exactly_what_json_dumps_makes(inputs):
    for model, modality in (("m", "image"), ('model "x" ☕', "text")):
        expected = json.dumps({"model": model, "input": inputs, "encoding_format": "base64", "modality": modality},
                              ensure_ascii=False).encode("utf-8")
        assert wire.request_body(model, inputs, modality, "base64") == expected


def test_image_data_uris_are_data_uri_instances():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    png = buffer.getvalue()
    uri = wire.image_data_uri(png)
    assert type(uri) is wire.DataUri and uri == "data:image/png;base64," + base64.b64encode(png).decode()


def _png(mode: str, size: tuple[int, int] = (17, 9), **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=1).save(buffer, format="PNG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode,options", [("RGB", {}), ("RGBA", {}), ("L", {}), ("LA", {}), ("P", {}),
                                          ("1", {}), ("I;16", {}), ("RGB", {"optimize": True}),
                                          ("L", {"bits": 4})])
def test_every_kind_of_png_is_accepted_and_sent_unchanged(mode, options):
    png = _png(mode, **options)
    uri = wire.image_data_uri(png)
    assert uri == "data:image/png;base64," + base64.b64encode(png).decode()
    with Image.open(io.BytesIO(png)) as opened:  # Pillow agrees it is whole
        opened.load()


def test_every_cut_of_a_png_is_refused():
    """The structure check (CRCs, IHDR, IDAT, IEND) refuses a PNG cut anywhere, as Pillow's verify() did."""
    png = _png("RGB", (40, 30))
    for cut in range(8, len(png)):
        with pytest.raises(wire.InvalidInputError, match="truncated or corrupt"):
            wire.image_data_uri(png[:cut])


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("name,png,reason", [
    ("bad-depth", b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", bytes.fromhex("0000001000000010" "05" "02" "000000"))
     + _chunk(b"IDAT", b"x") + _chunk(b"IEND", b""), "no valid IHDR"),
    ("ihdr-not-first", b"\x89PNG\r\n\x1a\n" + _chunk(b"tEXt", b"a\x00b") + _chunk(b"IEND", b""), "no valid IHDR"),
    ("no-pixels", b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", bytes.fromhex("0000001000000010" "08" "02" "000000"))
     + _chunk(b"IEND", b""), "no image data"),
    ("flipped-byte", None, "checksum"),
])
def test_a_damaged_png_is_refused_with_the_reason(name, png, reason):
    if png is None:
        good = _png("RGB")
        at = good.index(b"IHDR") + 6
        png = good[:at] + bytes([good[at] ^ 1]) + good[at + 1:]
    with pytest.raises(wire.InvalidInputError, match=reason):
        wire.image_data_uri(png)
