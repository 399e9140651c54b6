"""`make demo` and `make dev` as a new user runs them, from this checkout, with the real servers and Dagster.

The demo must embed the sample documents of its two corpora (``docs``: text, ``pages``: PDF pages and images,
two component instances of this checkout's dg project) through the daemon (each corpus's sensor runs, each
corpus's index syncs), pass every check, answer through the CLI with a sample document and leave no process behind; `make dev` must
print the UI address, only INFO lines, and stop every process it started on Ctrl-C.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from infinity_assets_dev.ports import free_port
from infinity_assets_dev.samples import BATCHES, QUERY, QUERY_ANSWER, sample_objects

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: A run line of the demo: ``run <id> <launched by> <target> <status>; checks <name passed, ...>``.
RUN_LINE = re.compile(r"^  run (?P<id>\w{8}) (?P<origin>\S+) +(?P<target>\S+(?:, \S+)*) +(?P<status>[A-Z_]+); "
                      r"checks (?P<checks>.*)$", re.M)


def user_env() -> dict[str, str]:
    """This environment without the settings a test session may have exported (the demo brings its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_API", "INFINITY_MODEL",
                                                                    "INFINITY_IMAGE", "AWS_", "DAGSTER_"))}


def processes_using(path: str) -> list[str]:
    """Processes whose command line or working directory is under ``path``."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if path in " ".join(info["cmdline"] or []) or (info["cwd"] or "").startswith(path):
            found.append(f"{info['pid']} {' '.join(info['cmdline'] or [])[:200]}")
    return found


@pytest.mark.timeout(1500)  # under a minute of daemon work on a quiet machine; servers and make on top
def test_make_demo_embeds_the_samples_through_the_daemon_and_answers_through_the_cli():
    done = subprocess.run(["make", "--no-print-directory", "demo"], cwd=REPO, env=user_env(), capture_output=True,
                          text=True, timeout=1200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "demo finished: every run and check succeeded" in done.stdout

    runs = [match.groupdict() for match in RUN_LINE.finditer(done.stdout)]
    assert runs and all(run["status"] == "SUCCESS" for run in runs), runs
    # Each corpus's sensor launched exactly its own batches, of its own asset.
    asset = {"text": "docs/text_embeddings", "images": "pages/image_embeddings"}
    sensor = {"text": "docs_new_documents_sensor", "images": "pages_new_documents_sensor"}
    for modality, batches in BATCHES.items():
        embedded = {run["target"] for run in runs if run["origin"] == sensor[modality]}
        assert embedded == {f"{asset[modality]}[{batch}]" for batch in batches}, runs
    synced = {run["origin"]: run["target"] for run in runs if run["origin"].endswith("_index_automation_sensor")}
    # each index was synced by its own corpus's automation
    assert synced == {"docs_index_automation_sensor": "docs/text_index",
                      "pages_index_automation_sensor": "pages/image_index"}, runs
    for run in runs:
        if run["origin"] in sensor.values():  # each embedding run evaluated its four checks, all passed
            assert run["checks"] == ("artifact_schema passed, documents_accounted_for passed, "
                                     "failures_within_threshold passed, vectors_valid passed")
    latest = re.findall(r"^  (\S+)\.(\w+): (passed|FAILED) \(run \w+\)$", done.stdout, re.M)
    assert ("docs/text_index", "retrieval_quality", "passed") in latest  # measured on the labelled queries
    assert latest and all(verdict == "passed" for _, _, verdict in latest), latest
    # each corpus in its own bucket
    assert re.search(r"^docs/text_index: 7 rows .* at s3://docs/index/text\.lance$", done.stdout, re.M)
    assert re.search(r"^pages/image_index: 6 rows .* at s3://pages/index/images\.lance$", done.stdout, re.M)

    text_answer = done.stdout.split(f"$ infinity-assets search {QUERY!r}", 1)[1]
    first_hit = re.search(r"^ 1\. +[\d.]+ +(\S+)", text_answer, re.M)
    assert first_hit and first_hit.group(1) == QUERY_ANSWER, text_answer[:800]
    page_answer = done.stdout.split("--modality images", 1)[1]
    pages = set(re.findall(r"^ \d\. +[\d.]+ +(\S+)", page_answer, re.M))
    assert pages == {key.rsplit("/", 1)[1] for key in sample_objects() if key.endswith(".png")} | {
        f"annual-report.pdf#page={n}" for n in (1, 2, 3)}  # the three PNG pages and the PDF's three pages
    assert re.search(r"infinity-assets serve --corpus docs=s3://docs --corpus pages=s3://pages --host 127\.0\.0\.1 "
                     r"--port 8080$", done.stdout, re.M)

    [workdir] = re.findall(r"^workdir: (\S+)$", done.stdout, re.M)
    assert not processes_using(workdir), processes_using(workdir)  # servers, daemon, code server, run workers


class Lines:
    """A child's output read line by line in a thread (so the test can wait for a line without blocking)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float, process: subprocess.Popen) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert process.poll() is None, "\n".join(self.lines[-80:])
            time.sleep(0.5)
        raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s:\n" + "\n".join(self.lines[-80:]))

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "\n".join(self.lines)


@pytest.mark.timeout(1500)
def test_make_dev_prints_the_addresses_and_info_lines_and_ctrl_c_stops_every_process(tmp_path):
    port = free_port()
    dev = subprocess.Popen([sys.executable, "tools/dev.py", "--workdir", str(tmp_path), "--port", str(port)],
                           cwd=REPO, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)  # its own group, as a terminal's foreground job
    lines = Lines(dev.stdout)
    try:
        lines.wait_for(rf"^Dagster UI: http://127\.0\.0\.1:{port} ", 600, dev)
        assert httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=10).status_code == 200
        for key in sample_objects():
            if key.startswith("raw/"):  # what was uploaded, each corpus into its bucket
                bucket = "docs" if key.startswith("raw/text/") else "pages"
                lines.wait_for(rf"^  s3://{bucket}/{re.escape(key)}$", 5, dev)
        service = lines.wait_for(r"^search service \(API and page viewer\): (http://127\.0\.0\.1:\d+)$", 5, dev)
        assert httpx.get(f"{service.group(1)}/health", timeout=10).status_code == 200
        # The sensor's first tick runs at once: a run's INFO line (its asset's own log) reaches the terminal.
        lines.wait_for(r" - INFO - .*docs__text_embeddings", 600, dev)  # the step of docs/text_embeddings
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 4  # SeaweedFS, Infinity, dagster dev (webserver, daemon, ...), the service
        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C
        assert dev.wait(timeout=180) == 0, "\n".join(lines.lines[-80:])
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    _, alive = psutil.wait_procs(children, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    assert not processes_using(str(tmp_path)), processes_using(str(tmp_path))
    output = lines.text()
    assert not re.search(r" - DEBUG - ", output), [line for line in output.splitlines() if " - DEBUG - " in line][:5]
