"""allocator.tune: a 1 MiB buffer comes from the heap after tuning, from its own mmap before (glibc's count of
mmapped blocks, mallinfo2), in a fresh interpreter each time; and the switch turns it off."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import ctypes, json
from infinity_assets.client import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
tuned = allocator.tune()
before = libc.mallinfo2().hblks
buffer = bytearray(1 << 20)
print(json.dumps({"tuned": tuned, "mmapped_blocks_added": libc.mallinfo2().hblks - before}))
"""


def probe(**env: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                               env={**os.environ, **env}, timeout=60)
    return json.loads(completed.stdout)


def test_tuned_large_buffers_come_from_the_heap():
    assert probe() == {"tuned": True, "mmapped_blocks_added": 0}


def test_switched_off_glibc_maps_each_large_buffer():
    assert probe(INFINITY_ASSETS_MALLOC_TUNING="off") == {"tuned": False, "mmapped_blocks_added": 1}
