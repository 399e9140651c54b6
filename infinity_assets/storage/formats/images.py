"""Images (PNG, JPEG, WebP, GIF, BMP, TIFF): the raw bytes, after a cheap check with Pillow.

The check reads the header and runs ``verify()`` (no full decode): zero-byte, unreadable or corrupt data, and
images under :data:`MIN_IMAGE_SIDE` pixels (Infinity rejects them) are failures.
"""
from __future__ import annotations

import io
from collections.abc import Iterator

from infinity_assets.storage.backend import SourceObject
from infinity_assets.storage.formats.base import Document, Format, first_line

#: Infinity's vision models reject images smaller than this in either dimension.
MIN_IMAGE_SIDE = 3


class ImageFormat(Format):
    """An image file is one document, ``doc_id`` = the key, ``content`` = its bytes as stored."""

    modality = "images"
    extensions = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

    def documents(self, source: SourceObject, data: bytes) -> Iterator[Document]:
        yield _image_document(source, data)


def _image_document(source: SourceObject, data: bytes) -> Document:
    from PIL import Image, UnidentifiedImageError

    document = Document(source.key, source.uri, source.fingerprint)
    if not data:
        document.error = "empty file (0 bytes)"
        return document
    image_format = "the image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image_format = f"the {image.format} image"
            image.verify()  # checks structure and checksums without decoding the pixels
    except UnidentifiedImageError:
        document.error = (
            f"not a readable image ({len(data):,} bytes that Pillow does not recognise); check the file"
        )
        return document
    except Image.DecompressionBombError as exc:
        document.error = f"image too large to embed safely ({first_line(exc)}); downscale it"
        return document
    except Exception as exc:  # noqa: BLE001 -- any decoder failure means a corrupt file
        document.error = (
            f"{image_format} is truncated or corrupt ({type(exc).__name__}: {first_line(exc)}); "
            "re-export the file"
        )
        return document
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        document.error = (
            f"image is {width}x{height} pixels; Infinity needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
        return document
    document.content = data
    return document
