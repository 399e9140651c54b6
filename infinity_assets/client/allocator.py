"""glibc's allocator tuned for the large buffers an embedding client churns through: opt-in, once per process.

A ColPali batch answer is ~7 MB, base64-decoded into ~5 MB of floats; a request of images is ~0.5 MB. glibc
serves blocks over its mmap threshold (128 KiB to start, adapting upwards) with a fresh ``mmap`` and returns
them with ``munmap``, and gives freed heap memory back to the kernel past its trim threshold: every such buffer
then costs a page fault per 4 KiB touched. :func:`tune` raises both thresholds to :data:`THRESHOLD_BYTES`
(32 MiB, glibc's largest mmap threshold), so such buffers are reused from the heap; each allocator arena then
keeps up to 32 MiB of freed memory for reuse instead of returning it. Peak memory is unchanged.

It changes ``malloc`` for the whole process, so nothing does it by default: a client built in a notebook or a
user's service leaves the allocator alone unless asked (``InfinityEmbeddings(tune_allocator=True)``), and the
embedding assets turn it on for their own run process (:func:`tune_if_enabled` with ``default=True``).
``$INFINITY_ASSETS_MALLOC_TUNING`` (``on`` / ``off``) overrides both defaults. Only on glibc; elsewhere
nothing happens. The CPU it saves per page is in ``benchmarks/README.md`` (``--only cpu``).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

#: The mmap and trim thresholds set by :func:`tune`.
THRESHOLD_BYTES = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)
#: malloc arenas a search process keeps (:func:`limit_arenas`); glibc's own default is 8 per core.
READER_ARENAS = 2
#: The variable glibc reads at start-up for its arena limit: when set, :func:`limit_arenas` leaves it be.
ARENA_VARIABLE = "MALLOC_ARENA_MAX"
#: ``on`` / ``off``: whether clients and the embedding assets tune the allocator (overrides their default).
SWITCH_VARIABLE = "INFINITY_ASSETS_MALLOC_TUNING"
_ON, _OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")


def enabled(default: bool) -> bool:
    """Whether to tune: ``$INFINITY_ASSETS_MALLOC_TUNING`` if set (``on`` / ``off``), else ``default``.

    Raises ``ValueError`` naming the variable for any other value.
    """
    raw = os.environ.get(SWITCH_VARIABLE, "").strip().lower()
    if not raw:
        return default
    if raw in _ON or raw in _OFF:
        return raw in _ON
    raise ValueError(f"{SWITCH_VARIABLE} must be 'on' or 'off', got {os.environ[SWITCH_VARIABLE]!r}")


def tune_if_enabled(default: bool) -> bool:
    """:func:`tune` if :func:`enabled` (``default`` when the variable is unset); ``True`` if the thresholds are set."""
    return tune() if enabled(default) else False


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply ``(parameter, value)`` pairs with glibc's ``mallopt``; ``True`` if every one was set (False off
    glibc)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(bool(mallopt(parameter, value)) for parameter, value in settings)


@functools.cache
def tune() -> bool:
    """Set glibc's mmap and trim thresholds for this whole process, once; ``True`` if they were set."""
    return _mallopt((_M_MMAP_THRESHOLD, THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, THRESHOLD_BYTES))


@functools.cache
def limit_arenas(arenas: int = READER_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this whole process at ``arenas`` (``M_ARENA_MAX``), once, unless
    ``$MALLOC_ARENA_MAX`` is set (glibc applies it itself); ``True`` if the cap was set.

    A search reader scans what its first stages hold through Lance, whose reader threads each allocate from
    an arena of their own; the freed read buffers stay spread over those arenas, and ``malloc_trim`` does not
    give all of them back (docs/search-at-scale.md). Threads that already have an arena keep it: the cap
    works fully only before the first scan, so :class:`~infinity_assets.index.reader.IndexReader` sets it
    when it opens. Only on glibc; elsewhere nothing happens."""
    return not os.environ.get(ARENA_VARIABLE, "").strip() and _mallopt((_M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Give the C allocator's free memory back to the OS (glibc's public ``malloc_trim``; a no-op where there
    is none): a scan leaves its freed read buffers in the allocator's arenas (docs/search-at-scale.md)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
