"""`make demo`: the whole flow on this machine, with real servers, through a real Dagster instance.

Starts SeaweedFS and the real Infinity server on 127.0.0.1, uploads sample documents, runs one sensor tick and
the runs it requests, prints a summary and one MaxSim search answer, syncs the LanceDB index and answers a
query through the ``infinity-assets search`` CLI, stops the servers. Exits non-zero if
anything failed. ``tools/dev.py`` (``make dev``) reuses :class:`DemoEnvironment` and adds the Dagster UI.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infinity_assets_dev.infinity import InfinityServer  # noqa: E402
from infinity_assets_dev.seaweedfs import SeaweedFS  # noqa: E402

TEXT_MODEL, IMAGE_MODEL = "minilm-colbert-128", "colqwen2-tiny"
BUCKET = "documents"
TEXTS = {
    "raw/text/getting-started/lighthouse.txt":
        "The lighthouse keeper painted the spiral staircase bright red every spring.",
    "raw/text/getting-started/vineyards.md":
        "# Island wines\nVolcanic soil makes the vineyards on the island produce unusually sweet grapes.",
    "raw/text/getting-started/notes.jsonl":
        '{"id": "orchestra", "text": "The orchestra rehearsed the symphony twice before the premiere."}\n'
        '{"id": "comet", "text": "Astronomers detected a faint comet passing close to Jupiter."}\n'
        '{"id": "bridge", "text": "Engineers reinforced the suspension bridge after the winter storms."}\n',
    "raw/text/field-reports/cranes.txt": "A migrating flock of cranes rested on the frozen lake at dawn.",
    "raw/text/field-reports/harvest.txt": "Farmers harvested pumpkins early because of the approaching frost.",
}
QUERY = "comet near jupiter"
#: Asked of the page images (PNG pages and the pages of the sample PDF); the tiny demo image model is randomly
#: initialised, so its ranking means nothing: the answer shows the path (PDF page -> index -> CLI) works.
PAGE_QUERY = "outlook for the next year"


def rendered_page(lines: list[str]) -> bytes:
    """A small 'scanned page' rendered with Pillow."""
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((6, 6 + 14 * row), line, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pdf_of_pages(pages: list[list[str]]) -> bytes:
    """A small multi-page PDF: one Pillow-rendered page image per page (each becomes one embedding row)."""
    images = [Image.open(io.BytesIO(rendered_page(lines))).convert("RGB") for lines in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=36.0)
    return buffer.getvalue()


class DemoEnvironment:
    """SeaweedFS + Infinity on 127.0.0.1 with the sample documents, a DAGSTER_HOME, and the env the code needs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack = ExitStack()
        self.env: dict[str, str] = {}

    def __enter__(self) -> DemoEnvironment:
        print("starting SeaweedFS and the Infinity server on 127.0.0.1 ...", flush=True)
        self.s3 = self._stack.enter_context(SeaweedFS(self.workdir / "seaweedfs"))
        self.infinity = self._stack.enter_context(
            InfinityServer([TEXT_MODEL, IMAGE_MODEL], log_dir=self.workdir / "logs"))
        self.upload_samples()
        home = self.workdir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(home)) as instance:  # the pool exists before any run (README)
            instance.event_log_storage.initialize_concurrency_limit_to_default("infinity")
            instance.event_log_storage.set_concurrency_slots("index_writer", 1)  # one index sync at a time
        self.env = {
            "DAGSTER_HOME": str(home),
            "INFINITY_API_URL": self.infinity.url, "INFINITY_MODEL": TEXT_MODEL, "INFINITY_HIDDEN_DIM": "128",
            "INFINITY_IMAGE_MODEL": IMAGE_MODEL,
            "INFINITY_ASSETS_ROOT": f"s3://{BUCKET}", "AWS_ENDPOINT_URL": self.s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_REGION": "us-east-1",
        }
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc_info: object) -> None:
        print("stopping the servers", flush=True)
        self._stack.close()

    def upload_samples(self) -> None:
        fs = self.s3.filesystem()
        if not fs.exists(BUCKET):
            self.s3.create_bucket(BUCKET)
        objects = {f"{BUCKET}/{key}": text.encode() for key, text in TEXTS.items()}
        for number in range(1, 4):
            objects[f"{BUCKET}/raw/images/scanned-pages/page-{number}.png"] = rendered_page(
                [f"Quarterly report, page {number}", "Revenue grew 12%", "in the third quarter."])
        objects[f"{BUCKET}/raw/images/scanned-pages/annual-report.pdf"] = pdf_of_pages([
            [f"Annual report, page {number}", "Outlook for the next year", "and the risks we see."]
            for number in range(1, 4)])
        fs.pipe(objects)
        print(f"uploaded {len(objects)} sample documents to s3://{BUCKET}/raw/", flush=True)


def run_demo() -> int:
    """Sensor tick -> runs -> summary -> search. Returns the process exit code."""

    from infinity_assets import InfinityEmbeddings, artifacts
    from infinity_assets.definitions import defs
    from infinity_assets.storage.documents import DocumentStore
    from infinity_assets.index.maxsim import search
    from infinity_assets.orchestration.sensors import new_documents_sensor

    failed = False
    with dg.DagsterInstance.get() as instance:
        repository = defs.get_repository_def()
        with dg.build_sensor_context(instance=instance, repository_def=repository,
                                     resources={"document_store": defs.resources["document_store"]}) as context:
            result = new_documents_sensor(context)
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        print(f"sensor tick: {len(result.run_requests)} run requests", flush=True)
        for request in result.run_requests:
            job = defs.resolve_job_def(request.job_name)
            outcome = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                             tags=request.tags, raise_on_error=False)
            checks = {e.check_name: e.passed for e in outcome.get_asset_check_evaluations()}
            failed |= not outcome.success or not all(checks.values())
            print(f"  run {outcome.run_id[:8]} {request.job_name}[{request.partition_key}]: "
                  f"{'SUCCESS' if outcome.success else 'FAILURE'}; checks "
                  + ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in sorted(checks.items())),
                  flush=True)

    store = DocumentStore(os.environ["INFINITY_ASSETS_ROOT"])
    print("\nsummary")
    text_artifacts = []
    for modality in ("text", "images"):
        for partition in store.list_partitions(modality):
            path = store.artifact_path(modality, partition)
            artifact = artifacts.read_artifact(store.fs, path)
            failures = (artifacts.read_failures(store.fs, path) or {}).get("failures", [])
            print(f"  {modality:6} {partition:16} {len(artifact):3} documents {len(artifact.vectors):6} vectors "
                  f"{len(failures)} failed  {store.uri(path)}")
            if modality == "text":
                text_artifacts.append(artifact)

    with InfinityEmbeddings(model_name=TEXT_MODEL) as client:
        query = client.embed_query(QUERY)
    best = max(((artifact, *search(query, artifact.vectors, artifact.offsets, k=1)[0]) for artifact in text_artifacts),
               key=lambda hit: hit[2])
    artifact, index, score = best
    print(f"\nMaxSim search for {QUERY!r}: {artifact.doc_ids[index]} (score {score:.2f}) "
          f"from {artifact.source_uris[index]}")
    failed |= not index_and_search()
    print("\ndemo " + ("FAILED" if failed else "finished: every run and check succeeded"))
    return 1 if failed else 0


def index_and_search() -> bool:
    """Materialize text_index and image_index (as the automation sensor would), then ask the CLI."""
    from infinity_assets.definitions import defs

    with dg.DagsterInstance.get() as instance:
        outcome = dg.materialize([defs.get_assets_def("text_index"), defs.get_assets_def("image_index")],
                                 resources=defs.resources, instance=instance, raise_on_error=False)
    for event in outcome.get_asset_materialization_events():
        metadata = event.materialization.metadata
        print(f"  {event.asset_key.to_user_string()}: {metadata['dagster/row_count'].value} rows, "
              f"{metadata['inserted'].value} inserted, at {metadata['uri'].value}")
    answers = []
    for query, options in ((QUERY, ["--k", "3"]), (PAGE_QUERY, ["--modality", "images", "--k", "6"])):
        print(f"\n$ infinity-assets search {query!r} {' '.join(options)}", flush=True)
        answers.append(subprocess.run([sys.executable, "-m", "infinity_assets.cli", "search", query, *options],
                                      env={**os.environ}, cwd=REPO).returncode)
    return outcome.success and answers == [0, 0]


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="infinity-assets-demo-"))
    try:
        with DemoEnvironment(workdir):
            return run_demo()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
