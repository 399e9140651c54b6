"""The Dagster UI in headless Chromium: `dagster dev` serves the code location with the real servers behind it.

Finds both corpora's assets (``docs``: text, ``pages``: images, this checkout's two component instances) in the
asset graph, launches a materialization of one partition through the webserver's GraphQL API, and sees the run
succeed in the UI. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infinity_assets_dev.ports import free_port

pytestmark = pytest.mark.ui

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = """query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
RUN_ERRORS = """query Logs($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  ... on MessageEvent { message level } ... on ExecutionStepFailureEvent { error { message cause { message } errorChain { error { message } } } } } } } }"""


@pytest.fixture
def dagster_ui(tmp_path, infinity_server, seaweedfs, s3_bucket):
    fs = seaweedfs.filesystem()
    fs.pipe({f"{s3_bucket}/docs/raw/text/ui-batch/a.txt": b"clicked in the user interface",
             f"{s3_bucket}/docs/raw/text/ui-batch/b.txt": b"a second document"})
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "INFINITY_API_URL": infinity_server.url,
           "DEMO_TEXT_MODEL": "minilm-colbert-128", "DEMO_IMAGE_MODEL": "colqwen2-tiny",
           "DEMO_DOCS_ROOT": f"s3://{s3_bucket}/docs", "DEMO_PAGES_ROOT": f"s3://{s3_bucket}/pages",
           "AWS_ENDPOINT_URL": seaweedfs.endpoint_url,
           "AWS_ACCESS_KEY_ID": seaweedfs.access_key, "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key}
    port = free_port()
    log = open(tmp_path / "dagster-dev.log", "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200 and _location_loaded(url):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("dagster dev did not come up:\n" + (tmp_path / "dagster-dev.log").read_text()[-3000:])
        # The partition exists once the sensor has seen the batch; add it directly to not wait for a tick.
        subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "info"], env=env, check=True,
                       capture_output=True)
        _add_partition(env, "ui-batch")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _location_loaded(url: str) -> bool:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
    data = httpx.post(f"{url}/graphql", json={"query": query}, timeout=5).json()
    entries = data["data"]["workspaceOrError"]["locationEntries"]
    return any(e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
               for e in entries)


def _add_partition(env: dict[str, str], partition: str) -> None:
    code = ("import dagster as dg; "
            f"dg.DagsterInstance.get().add_dynamic_partitions('docs_text_batches', [{partition!r}])")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def graphql(url: str, query: str, variables: dict) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


def test_assets_are_in_the_graph_and_a_partition_materializes(dagster_ui):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # Each corpus's embedding asset's lineage: its raw documents upstream, its index downstream.
        for corpus, raw, asset, index in (("docs", "raw_text_documents", "text_embeddings", "text_index"),
                                          ("pages", "raw_image_documents", "image_embeddings", "image_index")):
            page.goto(f"{dagster_ui}/assets/{corpus}/{asset}?view=lineage&lineageScope=neighbors&lineageDepth=1",
                      wait_until="domcontentloaded")
            for name in (raw, asset, index):
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / f"lineage-{corpus}-{asset}.png"))

        launched = graphql(dagster_ui, LAUNCH, {"params": {
            "selector": {"repositoryLocationName": "infinity_assets", "repositoryName": "__repository__",
                         "jobName": "docs_embed_text_job"},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "ui-batch"}]},
            "runConfigData": {}, "mode": "default"}})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        status = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = graphql(dagster_ui, RUN_STATUS, {"id": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        page.goto(f"{dagster_ui}/runs/{run_id}", wait_until="domcontentloaded")
        page.get_by_text("RUN_SUCCESS").first.wait_for(timeout=60_000)  # the run's event log shows its end
        page.screenshot(path=str(ARTIFACTS / "run-success.png"), full_page=True)
        browser.close()
    if status != "SUCCESS":
        events = graphql(dagster_ui, RUN_ERRORS, {"id": run_id})["logsForRun"]["events"]
        pytest.fail(f"run {run_id} ended {status}:\n" + "\n".join(
            e["message"] + str(e.get("error") or "") for e in events
            if e and e.get("level") in ("ERROR", "CRITICAL", "WARNING")))
