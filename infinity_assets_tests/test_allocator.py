"""The glibc allocator tuning: opt-in, since it changes ``malloc`` for the whole process.

A 1 MiB buffer comes from the heap after tuning and from its own mmap without it (glibc's count of mmapped
blocks, mallinfo2), each probe in a fresh interpreter: a client built with the defaults leaves the allocator
alone, ``tune_allocator=True`` or ``INFINITY_ASSETS_MALLOC_TUNING=on`` tunes it, ``off`` overrides the embedding
assets' default, and a wrong value is refused naming the variable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infinity_assets.client import allocator

PROBE = """
import ctypes, json, sys
from infinity_assets.client import allocator
from infinity_assets.client.embeddings import InfinityEmbeddings

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
how = sys.argv[1]
if how == "tune":
    tuned = allocator.tune()
elif how == "assets":
    tuned = allocator.tune_if_enabled(default=True)
else:
    client = InfinityEmbeddings(url="http://infinity.test:7997", **json.loads(how))
    tuned = client.tune_allocator
before = libc.mallinfo2().hblks
buffer = bytearray(1 << 20)
print(json.dumps({"tuned": tuned, "mmapped_blocks_added": libc.mallinfo2().hblks - before}))
"""
TUNED = {"tuned": True, "mmapped_blocks_added": 0}
UNTOUCHED = {"tuned": False, "mmapped_blocks_added": 1}


def probe(how: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != allocator.SWITCH_VARIABLE}
    completed = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, check=True,
                               env={**clean, **env}, timeout=60)
    return json.loads(completed.stdout)


def test_tuned_large_buffers_come_from_the_heap():
    assert probe("tune") == TUNED


def test_a_client_leaves_the_allocator_alone_by_default():
    assert probe("{}") == UNTOUCHED


def test_a_client_tunes_it_when_asked():
    assert probe('{"tune_allocator": true}') == TUNED


def test_the_environment_turns_it_on_for_clients():
    assert probe("{}", INFINITY_ASSETS_MALLOC_TUNING="on") == TUNED


def test_an_explicit_setting_wins_over_the_environment():
    assert probe('{"tune_allocator": false}', INFINITY_ASSETS_MALLOC_TUNING="on") == UNTOUCHED


def test_the_embedding_assets_tune_their_run_process_unless_switched_off():
    assert probe("assets") == TUNED
    assert probe("assets", INFINITY_ASSETS_MALLOC_TUNING="off") == UNTOUCHED


def test_a_wrong_value_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(allocator.SWITCH_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match="INFINITY_ASSETS_MALLOC_TUNING must be 'on' or 'off', got 'sometimes'"):
        allocator.enabled(default=False)


ASSET_RUN = """
import ctypes, json, sys, tempfile
from dataclasses import dataclass
from pathlib import Path
import dagster as dg
from infinity_assets import InfinityEmbeddings
from infinity_assets.corpus import ClientSettings, CorpusSpec, StoreSettings
from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.testing.fake_infinity import FakeInfinity

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

fake = FakeInfinity(model="m", hidden_dim=128)

@dataclass(frozen=True)
class FakeNetwork(ClientSettings):
    def build_client(self):
        return InfinityEmbeddings(url=self.url, model_name=self.model_name, hidden_dim=self.hidden_dim,
                                  transport=fake.transport())

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
with tempfile.TemporaryDirectory() as root:
    (Path(root) / "raw" / "text" / "b1").mkdir(parents=True)
    (Path(root) / "raw" / "text" / "b1" / "a.txt").write_text("late interaction")
    spec = CorpusSpec(name="t", store=StoreSettings(root=root),
                      text=FakeNetwork(url="http://fake", model_name="m"))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(spec.modality("text").partitions_name, ["b1"])
    asset = build_corpus_definitions(spec).get_assets_def(dg.AssetKey(["t", "text_embeddings"]))
    result = dg.materialize([asset], partition_key="b1", instance=instance)
before = libc.mallinfo2().hblks
buffer = bytearray(1 << 20)
print(json.dumps({"success": result.success, "mmapped_blocks_added": libc.mallinfo2().hblks - before}))
"""


@pytest.mark.parametrize("switch, mmapped", [(None, 0), ("off", 1)], ids=["default", "switched-off"])
def test_an_embedding_asset_run_tunes_its_process_unless_switched_off(switch, mmapped):
    env = {allocator.SWITCH_VARIABLE: switch} if switch else {}
    clean = {k: v for k, v in os.environ.items() if k != allocator.SWITCH_VARIABLE}
    completed = subprocess.run([sys.executable, "-c", ASSET_RUN], capture_output=True, text=True, check=True,
                               env={**clean, **env}, timeout=120)
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == {"success": True, "mmapped_blocks_added": mmapped}


ARENAS = """
import ctypes, json, os, sys, tempfile, threading
from infinity_assets.index.reader import IndexReader
from infinity_assets.index.schema import SearchIndexError
from infinity_assets.storage.documents import DocumentStore

with tempfile.TemporaryDirectory() as root:
    try:
        IndexReader(DocumentStore(root), "text")
    except SearchIndexError:
        pass  # no index there: opening a reader still caps the arenas, before any table is read


def allocate():
    kept = [bytearray(1 << 16) for _ in range(64)]
    barrier.wait()


barrier = threading.Barrier(9)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
barrier.wait()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(json.dumps({"arenas": open(path).read().count("<heap nr=")}))
"""


def arenas_after_threads(**env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k != allocator.ARENA_VARIABLE}
    completed = subprocess.run([sys.executable, "-c", ARENAS], capture_output=True, text=True, check=True,
                               env={**clean, **env}, timeout=60)
    return json.loads(completed.stdout.strip().splitlines()[-1])["arenas"]


def test_a_search_reader_caps_the_malloc_arenas_of_its_process_unless_malloc_arena_max_says_otherwise():
    """Eight threads that allocate at once get an arena each (glibc's default allows 8 per core) unless the
    cap holds; ``MALLOC_ARENA_MAX`` set by the user wins over the reader's cap."""
    assert arenas_after_threads() <= allocator.READER_ARENAS
    assert arenas_after_threads(MALLOC_ARENA_MAX="16") > allocator.READER_ARENAS
