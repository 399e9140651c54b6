"""The raw documents as assets: external, on the batch partitions, observed by the sensor, upstream of embeddings.

Dagster does not produce them; the corpus's new-documents sensor reports an observation per new or changed
batch with its data version, the digest of the batch's source fingerprints. An embedding partition
materialized from other sources than the latest observed ones then shows as stale in the UI until it is
re-embedded.
"""
import dagster as dg

from infinity_assets.corpus import CorpusModality
from infinity_assets.orchestration.keys import asset_key, batch_partitions

#: The tag Dagster reads an observation's data version from.
DATA_VERSION_TAG = "dagster/data_version"
_WHAT = {"text": "text documents (.txt, .md, .jsonl)", "images": "images and PDFs"}


def raw_documents(modality: CorpusModality) -> dg.AssetSpec:
    """The external asset of one modality's source files (``<corpus>/raw_text_documents``)."""
    return dg.AssetSpec(
        asset_key(modality, "raw"), partitions_def=batch_partitions(modality), group_name=modality.corpus,
        kinds={"s3"},
        description=f"The {_WHAT[modality.kind]} of one batch folder raw/{modality.kind}/<batch>/ of corpus "
                    f"{modality.corpus!r}. Observed by its new-documents sensor; data version = digest of the "
                    "files' fingerprints.")


def observation(modality: CorpusModality, partition: str, digest: str, documents: int) -> dg.AssetObservation:
    """The observation of one batch's sources: its data version is ``digest``."""
    return dg.AssetObservation(asset_key=asset_key(modality, "raw"), partition=partition,
                               tags={DATA_VERSION_TAG: digest}, metadata={"source_files": documents})
