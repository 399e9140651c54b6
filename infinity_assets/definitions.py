"""The Dagster code location: assembles assets, checks, resources, jobs, sensors and schedules.

Resources are configured with ``EnvVar``s and environment defaults resolved at run time, so the location loads
(``dg check defs``, ``dagster definitions validate``) with no environment variables set.
"""
import dagster as dg

from infinity_assets.orchestration.assets import image_embeddings, text_embeddings
from infinity_assets.orchestration.checks import image_checks, text_checks
from infinity_assets.orchestration.index_assets import image_index, image_quality, index_automation_sensor, text_index, text_quality
from infinity_assets.orchestration.jobs import embed_images_job, embed_text_job
from infinity_assets.orchestration.lineage import raw_image_documents, raw_text_documents
from infinity_assets.orchestration.resources import DocumentStoreResource, InfinityResource
from infinity_assets.orchestration.schedules import images_incremental_schedule, text_incremental_schedule
from infinity_assets.orchestration.sensors import new_documents_sensor


def build_definitions(documents_sensor: dg.SensorDefinition = new_documents_sensor) -> dg.Definitions:
    """The location's definitions; a deployment that wants other sensor limits passes its own
    ``build_new_documents_sensor(...)``."""
    return dg.Definitions(
        assets=[raw_text_documents, raw_image_documents, text_embeddings, image_embeddings, text_index, image_index],
        asset_checks=[*text_checks, *image_checks, text_quality, image_quality],
        jobs=[embed_text_job, embed_images_job],
        sensors=[documents_sensor, index_automation_sensor],
        schedules=[text_incremental_schedule, images_incremental_schedule],
        resources={
            # Text and images may use different models (e.g. ColBERT for text, ColPali for pages): the image
            # resource reads INFINITY_IMAGE_* variables first, then the shared INFINITY_* ones.
            "infinity": InfinityResource(),
            "infinity_images": InfinityResource(env_prefix="INFINITY_IMAGE_"),
            "document_store": DocumentStoreResource(),
        },
        # A run is one partition of one asset plus its cheap checks: running them in the run's own process saves
        # a Python start-up per step (seconds on a small machine); the `infinity` pool still limits the embedding
        # steps across runs, and `concurrency.runs` in dagster.yaml limits the runs.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
