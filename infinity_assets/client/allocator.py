"""glibc's allocator, tuned once per process for the large buffers an embedding client churns through.

A ColPali batch answer is ~7 MB, read 1 MiB at a time, joined, base64-decoded into ~5 MB of floats; a request
of images is ~0.5 MB. glibc serves blocks over its mmap threshold (128 KiB to start) with a fresh ``mmap`` and
returns them with ``munmap``, and gives freed heap memory back to the kernel past its trim threshold: every such
buffer then costs a page fault per 4 KiB touched. Measured here: joining a 0.5 MB request body took 0.86 ms
instead of 0.05 ms, and the client spent 2.6 instead of 2.0 ms of CPU per ColPali page (benchmarks/cpu_cost.py).

:func:`tune` raises both thresholds to :data:`THRESHOLD_BYTES` (32 MiB, glibc's largest mmap threshold), so such
buffers are reused from the heap. Each allocator arena then keeps up to 32 MiB of freed memory for reuse
instead of returning it; peak memory is unchanged. Only on glibc (elsewhere nothing happens); turned off with
``INFINITY_ASSETS_MALLOC_TUNING=off`` (then the process keeps whatever ``MALLOC_*`` settings it has).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

#: The mmap and trim thresholds set by :func:`tune`.
THRESHOLD_BYTES = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
SWITCH_VARIABLE = "INFINITY_ASSETS_MALLOC_TUNING"


@functools.cache
def tune() -> bool:
    """Set glibc's mmap and trim thresholds for this process, once; ``True`` if they were set."""
    if os.environ.get(SWITCH_VARIABLE, "").strip().lower() in ("off", "0", "false", "no"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES))
