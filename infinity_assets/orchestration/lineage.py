"""The raw documents as assets: external, on the batch partitions, observed by the sensor, upstream of embeddings.

Dagster does not produce them; ``new_documents_sensor`` reports an observation per new or changed batch with
its data version, the digest of the batch's source fingerprints. An embedding partition materialized from
other sources than the latest observed ones then shows as stale in the UI until it is re-embedded.
"""
import dagster as dg

from infinity_assets.orchestration.partitions import image_partitions, text_partitions

#: The tag Dagster reads an observation's data version from.
DATA_VERSION_TAG = "dagster/data_version"

raw_text_documents = dg.AssetSpec(
    "raw_text_documents", partitions_def=text_partitions, group_name="raw", kinds={"s3"},
    description="The text documents (.txt, .md, .jsonl) of one batch folder raw/text/<batch>/ in the document "
                "store. Observed by new_documents_sensor; data version = digest of the files' fingerprints.")
raw_image_documents = dg.AssetSpec(
    "raw_image_documents", partitions_def=image_partitions, group_name="raw", kinds={"s3"},
    description="The images of one batch folder raw/images/<batch>/ in the document store. Observed by "
                "new_documents_sensor; data version = digest of the files' fingerprints.")

RAW_BY_MODALITY = {"text": raw_text_documents, "images": raw_image_documents}


def observation(modality: str, partition: str, digest: str, documents: int) -> dg.AssetObservation:
    """The observation of one batch's sources: its data version is ``digest``."""
    return dg.AssetObservation(asset_key=RAW_BY_MODALITY[modality].key, partition=partition,
                               tags={DATA_VERSION_TAG: digest}, metadata={"source_files": documents})
