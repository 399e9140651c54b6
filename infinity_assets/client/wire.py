"""Infinity's wire protocol: request bodies, image data URIs, and decoding responses into numpy arrays.

Facts verified against the real server (infinity-emb 0.0.78):

* ``POST {url}/embeddings`` with ``{"model", "input", "encoding_format", "modality"}``; a body that says
  ``encoding`` instead of ``encoding_format`` is silently answered with floats.
* Images travel as ``data:<mime>;base64,...`` URIs; bare base64 gets HTTP 422. Images under 3x3 fail.
* ``base64`` embeddings are the little-endian float32 bytes of the row-major ``(n, dim)`` array (no shape is
  sent); ``float`` embeddings are nested lists ``[n][dim]``.
* ColPali pads with trailing and ColQwen2 with leading all-zero rows, as many as the server's batching needed.
* Per request at most 2048 texts and 32 images; a text at most 122,880 characters.
* Errors: 400 ``{"error": {"message": ...}}``, 422 ``{"detail": [...]}``, 429 (no Retry-After), 5xx.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import pybase64
from PIL import Image, UnidentifiedImageError

from infinity_assets.client.errors import InfinityResponseError, InvalidInputError

Modality = Literal["text", "image"]
Encoding = Literal["base64", "float"]
ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, io.BytesIO, Image.Image]

MAX_TEXTS_PER_REQUEST = 2048
MAX_IMAGES_PER_REQUEST = 32
MAX_TEXT_CHARS = 122_880
MIN_IMAGE_SIDE = 3

# Formats the server decodes as they are; anything else is converted to PNG (lossless).
_PASSTHROUGH_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The bit depths each PNG colour type allows (PNG specification, 11.2.2 IHDR).
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


class DataUri(str):
    """A data URI made by :func:`image_data_uri`: an ASCII prefix and base64, so it needs no JSON escaping."""


def request_body(model: str, inputs: list[str], modality: Modality, encoding: Encoding) -> bytes:
    """Serialise one ``/embeddings`` request body: the bytes ``json.dumps`` makes, faster for images.

    :class:`DataUri` inputs are joined as they are: ``json.dumps`` would scan the ~0.5 MB of base64 of an
    image request at ~0.5 GB/s.
    """
    if not inputs or not all(type(text) is DataUri for text in inputs):
        return json.dumps(
            {"model": model, "input": inputs, "encoding_format": encoding, "modality": modality},
            ensure_ascii=False,
        ).encode("utf-8")
    parts = [b'{"model": ', json.dumps(model, ensure_ascii=False).encode("utf-8"), b', "input": [']
    for text in inputs:
        parts += [b'"', text.encode("ascii"), b'", ']
    parts[-1] = b'"], "encoding_format": '
    parts += [json.dumps(encoding).encode(), b', "modality": ', json.dumps(modality).encode(), b"}"]
    return b"".join(parts)  # one copy of the whole body


def check_text(text: object) -> str:
    """Return ``text`` if the server can take it, else raise :class:`InvalidInputError` saying why."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a text input must be str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInputError(
            f"text of {len(text):,} characters is over Infinity's limit of {MAX_TEXT_CHARS:,}; split it into "
            "smaller documents"
        )
    return text


def image_data_uri(image: ImageInput) -> DataUri:
    """Turn an image input (path, bytes, BytesIO or PIL image) into the data URI the server expects.

    JPEG, PNG and WebP bytes are sent unchanged (no lossy re-encode); other formats and PIL images are
    converted to PNG. Every image is checked here, because a truncated image crashes the server's worker: a PNG
    by its structure (:func:`_png_size`: every chunk's CRC and the closing IEND chunk, truncation and corruption,
    without decoding the pixels, which would cost far more than the check), any other format by decoding.
    Raises :class:`InvalidInputError` for unreadable, truncated or non-image data and images under 3x3 pixels.
    """
    if isinstance(image, Image.Image):
        return _encode_pil(image, "PIL image")
    label, data = _image_bytes(image)
    if data.startswith(_PNG_SIGNATURE):
        _check_size(_png_size(data, label), label)
        return DataUri("data:image/png;base64," + pybase64.b64encode_as_string(data))
    try:
        with Image.open(io.BytesIO(data)) as opened:
            fmt, size = opened.format, opened.size
            _check_size(size, label)
            # A truncated image makes infinity-emb 0.0.78's worker crash and the server stop answering every
            # later request, so it must never reach the server. JPEG and WebP have no checksums to verify, so
            # they are decoded.
            opened.load()
            mime = _PASSTHROUGH_MIME.get(fmt or "")
            if mime is None:
                return _encode_pil(opened, label)
    except InvalidInputError:
        raise
    except UnidentifiedImageError:
        raise InvalidInputError(f"{label} is not an image Pillow can read (unknown format or corrupt header)") from None
    except Exception as exc:  # Pillow raises many types for bad data
        raise InvalidInputError(f"{label} is truncated or corrupt ({exc}); check the file") from None
    return DataUri(f"data:{mime};base64," + pybase64.b64encode_as_string(data))


def _png_size(data: bytes, label: str) -> tuple[int, int]:
    """Width and height of a PNG whose structure is whole: a valid IHDR first, every chunk complete with a
    matching CRC, image data, and the closing IEND. This is what Pillow's ``verify()`` checks, without Pillow's
    per-image set-up (``Image.open`` and ``verify()``), which would dominate for small images."""
    view, position, size, has_pixels = memoryview(data), len(_PNG_SIGNATURE), None, False
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data):
            break
        if zlib.crc32(view[position + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise InvalidInputError(f"{label} is truncated or corrupt (its {kind.decode('latin-1')!r} chunk fails "
                                    "its checksum); check the file")
        if size is None:
            width, height, depth, colour = struct.unpack_from(">IIBB", data, position + 8) if length == 13 else [0] * 4
            if kind != b"IHDR" or depth not in _PNG_DEPTHS.get(colour, ()):
                raise InvalidInputError(f"{label} is truncated or corrupt (no valid IHDR chunk first); check the file")
            size = (width, height)
        has_pixels = has_pixels or kind == b"IDAT"
        if kind == b"IEND":
            if not has_pixels:
                raise InvalidInputError(f"{label} is truncated or corrupt (no image data); check the file")
            return size
        position = end
    raise InvalidInputError(f"{label} is truncated or corrupt (it ends before its IEND chunk); check the file")


def _image_bytes(image: ImageInput) -> tuple[str, bytes]:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return f"image file {str(path)!r}", path.read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from None
    if isinstance(image, io.BytesIO):
        return "image bytes", image.getvalue()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image bytes", bytes(image)
    raise InvalidInputError(
        f"an image input must be a path, bytes, BytesIO or PIL.Image.Image, got {type(image).__name__}"
    )


def _check_size(size: tuple[int, int], label: str) -> None:
    width, height = size
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise InvalidInputError(
            f"{label} is {width}x{height} pixels; Infinity needs at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )


def _encode_pil(image: Image.Image, label: str) -> DataUri:
    _check_size(image.size, label)
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return DataUri("data:image/png;base64," + pybase64.b64encode_as_string(buffer.getvalue()))


def parse_json(content: bytes, url: str) -> Any:
    """Parse a response body; damaged JSON raises a retryable :class:`InfinityResponseError`."""
    try:
        return json.loads(content)
    except ValueError:
        preview = content[:120].decode("utf-8", "replace")
        raise InfinityResponseError(
            f"the server at {url} answered with invalid JSON ({len(content)} bytes, starting {preview!r}); "
            "is INFINITY_API_URL pointing at an Infinity server?",
            retryable=True,
        ) from None


def server_message(payload: Any, fallback: str) -> str:
    """Extract the human message from either of Infinity's error body shapes."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = payload.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", ()))
                    parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        if detail:
            return str(detail)
    return fallback


def decode_response(
    body: bytes, *, expected: int, encoding: Encoding, hidden_dim: int, model: str, url: str
) -> list[np.ndarray]:
    """Decode the body of a 200 ``/embeddings`` response; the same result and errors as :func:`decode_embeddings`.

    A base64 body in the server's own layout is decoded straight from the bytes: no JSON parse (which would
    copy every embedding into a ``str``), SIMD base64 from a memoryview. Any other body, or anything unusual
    in this one (another layout, escapes, a wrong count or index, bad base64, a size that does not fit
    ``hidden_dim``), takes the JSON path, which raises the proper error.
    """
    if encoding == "base64":
        arrays = _decode_base64_body(body, expected, hidden_dim)
        if arrays is not None:
            return arrays
    return decode_embeddings(parse_json(body, url), expected=expected, encoding=encoding, hidden_dim=hidden_dim,
                             model=model)


# How infinity-emb (orjson) lays out a base64 answer: '{"object":"list","data":[' then items, no whitespace.
_DATA_KEY = b'"data":['
_ITEM_HEAD = b'{"object":"embedding","embedding":"'
_ITEM_TAIL = re.compile(rb'","index":(0|[1-9][0-9]*)\}([,\]])')


def _decode_base64_body(body: bytes, expected: int, hidden_dim: int) -> list[np.ndarray] | None:
    """The fast path of :func:`decode_response`; None whenever the body is not exactly the expected layout."""
    data_at = body.find(_DATA_KEY)
    if data_at < 0:
        return None
    view, row_bytes = memoryview(body), 4 * hidden_dim
    arrays: list[np.ndarray | None] = [None] * expected
    position, closer = data_at + len(_DATA_KEY), b","
    for _ in range(expected):
        if closer != b"," or not body.startswith(_ITEM_HEAD, position):
            return None
        start = position + len(_ITEM_HEAD)
        end = body.find(b'"', start)
        tail = _ITEM_TAIL.match(body, end) if end >= 0 else None
        if tail is None:
            return None
        index = int(tail[1])
        try:
            buffer = pybase64.b64decode(view[start:end], validate=True)
        except ValueError:
            return None
        if index >= expected or arrays[index] is not None or len(buffer) % row_bytes:
            return None
        arrays[index] = strip_padding(np.frombuffer(buffer, dtype="<f4").reshape(-1, hidden_dim))
        position, closer = tail.end(), tail[2]
    if closer != b"]":
        return None  # more embeddings than inputs (or none): the JSON path raises the proper error
    # Everything but the items must be valid JSON too, with this list as the top-level "data".
    try:
        skeleton = json.loads(body[:data_at + len(_DATA_KEY)] + body[position - 1:])
    except ValueError:
        return None
    if not isinstance(skeleton, dict) or skeleton.get("data") != []:
        return None
    return arrays  # type: ignore[return-value]


def decode_embeddings(
    payload: Any, *, expected: int, encoding: Encoding, hidden_dim: int, model: str
) -> list[np.ndarray]:
    """Decode a 200 response into one float32 ``(n_vectors, hidden_dim)`` array per input, in input order.

    base64 payloads are decoded zero-copy (``np.frombuffer`` over the decoded bytes, so the arrays are
    read-only); all-zero padding rows at either end are removed. Raises :class:`InfinityResponseError` when
    the response has the wrong number of embeddings or a payload that does not fit ``hidden_dim``.
    """
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise InfinityResponseError(f"the response of model {model!r} has no 'data' list")
    if len(data) != expected:
        raise InfinityResponseError(
            f"model {model!r} returned {len(data)} embeddings for {expected} inputs"
        )
    ordered: list[Any] = [None] * expected
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else position
        if not isinstance(index, int) or not 0 <= index < expected or ordered[index] is not None:
            raise InfinityResponseError(f"model {model!r} returned an embedding with invalid index {index!r}")
        ordered[index] = item.get("embedding") if isinstance(item, dict) else None
    return [_decode_one(raw, i, encoding, hidden_dim, model) for i, raw in enumerate(ordered)]


def _decode_one(raw: Any, index: int, encoding: Encoding, hidden_dim: int, model: str) -> np.ndarray:
    if isinstance(raw, str):
        try:
            buffer = base64.b64decode(raw, validate=True)
        except ValueError:
            raise InfinityResponseError(
                f"embedding {index} from model {model!r} is not valid base64 (encoding='{encoding}')"
            ) from None
        row_bytes = 4 * hidden_dim
        if len(buffer) % row_bytes:
            raise InfinityResponseError(
                f"embedding {index} from model {model!r} has {len(buffer)} bytes = {len(buffer) / 4:g} floats, "
                f"not a whole number of rows of hidden_dim={hidden_dim}; set hidden_dim to the model's "
                "embedding size (or None to detect it)"
            )
        array = np.frombuffer(buffer, dtype="<f4").reshape(-1, hidden_dim)
    elif isinstance(raw, list):
        try:
            array = np.asarray(raw, dtype=np.float32)
        except (ValueError, TypeError):
            raise InfinityResponseError(
                f"embedding {index} from model {model!r} is not a rectangular list of numbers"
            ) from None
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != hidden_dim:
            raise InfinityResponseError(
                f"embedding {index} from model {model!r} has shape {array.shape}, expected (n, {hidden_dim}); "
                "set hidden_dim to the model's embedding size (or None to detect it)"
            )
    else:
        raise InfinityResponseError(
            f"embedding {index} from model {model!r} is a {type(raw).__name__}, expected a base64 string or a "
            "list of floats"
        )
    return strip_padding(array)


def strip_padding(array: np.ndarray) -> np.ndarray:
    """Remove all-zero rows at the start and end (ColQwen2 / ColPali padding) without copying."""
    start, end = 0, len(array)
    while start < end and not array[start].any():
        start += 1
    while end > start and not array[end - 1].any():
        end -= 1
    return array[start:end]


def detect_dim(payload: Any) -> int:
    """The embedding size of the first embedding in a float-encoded response."""
    try:
        first = payload["data"][0]["embedding"]
        row = first[0] if first and isinstance(first[0], list) else first
        return len(row)
    except (KeyError, IndexError, TypeError):
        raise InfinityResponseError("cannot detect hidden_dim: the probe response has no float embedding") from None
