"""Dagster partition keys of batch folders: a reversible mapping that Dagster's key rules accept.

Dagster rejects ``...`` and control characters in partition keys (``INVALID_PARTITION_SUBSTRINGS`` in
dagster/_core/definitions/partitions/utils/base.py), and ``| , [ ]`` break partition selections
(``INVALID_STATIC_PARTITIONS_KEY_CHARACTERS``; the ``a...b`` and ``[a, b]`` selection syntax of the UI and CLI).
So every character outside ``[A-Za-z0-9_.~-]`` is percent-encoded (UTF-8), and so is every dot of a run of two
or more dots. Only canonical keys map back; anything else is refused.
"""
from __future__ import annotations

import re

_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-")
_DOT_RUN = re.compile(r"\.{2,}")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def partition_key_for_folder(folder: str) -> str:
    """The Dagster partition key of a batch folder name: unsafe characters percent-encoded, reversibly.

    ``"2026-11-24"`` stays as is; ``"q1, q2 [draft]"`` becomes ``"q1%2C%20q2%20%5Bdraft%5D"`` and ``"a...b"``
    becomes ``"a%2E%2E%2Eb"``. The inverse is :func:`folder_for_partition`.
    """
    if not folder:
        raise ValueError("a batch folder name cannot be empty")
    encoded = "".join(
        ch if ch in _SAFE_CHARS else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        for ch in folder
    )
    return _DOT_RUN.sub(lambda run: "%2E" * len(run.group()), encoded)


def folder_for_partition(partition_key: str) -> str:
    """The batch folder name of a partition key made by :func:`partition_key_for_folder`.

    Raises ``ValueError`` for a key that function cannot produce (e.g. ``"a%2eb"``, ``"50%"``, ``"a,b"``), so
    two keys never name the same folder.
    """
    try:
        folder = bytes(_unescape_bytes(partition_key)).decode("utf-8", "surrogatepass")
        canonical = partition_key_for_folder(folder)
    except (ValueError, UnicodeDecodeError):
        canonical = None
    if canonical != partition_key:
        raise ValueError(
            f"{partition_key!r} is not a partition key of this package (expected the form "
            "partition_key_for_folder(<batch folder>) produces)"
        )
    return folder


def _unescape_bytes(key: str) -> bytearray:
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(key):
        out += key[position : match.start()].encode("utf-8", "surrogatepass")
        out.append(int(match.group(1), 16))
        position = match.end()
    return out + key[position:].encode("utf-8", "surrogatepass")
