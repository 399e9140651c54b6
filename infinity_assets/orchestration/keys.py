"""What Dagster calls a corpus modality: its asset keys, its batch partitions, its embedding job.

Every name comes from :class:`infinity_assets.corpus.CorpusModality`, so two corpora never share one.
"""
from __future__ import annotations

from typing import Literal

import dagster as dg

from infinity_assets.corpus import CorpusModality


def asset_key(modality: CorpusModality, what: Literal["embeddings", "index", "raw"]) -> dg.AssetKey:
    """``<corpus>/text_embeddings``, ``<corpus>/image_index``, ``<corpus>/raw_text_documents``."""
    return dg.AssetKey(list(modality.key(modality.asset_name(what))))


def batch_partitions(modality: CorpusModality) -> dg.DynamicPartitionsDefinition:
    """One dynamic partition per batch folder ``raw/<kind>/<batch>/`` (``<corpus>_text_batches``)."""
    return dg.DynamicPartitionsDefinition(name=modality.partitions_name)


def embed_job(modality: CorpusModality) -> dg.UnresolvedAssetJobDefinition:
    """The job that embeds batches of one modality (with the embedding asset's checks)."""
    return dg.define_asset_job(modality.job_name, selection=dg.AssetSelection.assets(asset_key(modality, "embeddings")),
                               description=f"Embeds batch folders raw/{modality.kind}/<batch>/ of corpus "
                                           f"{modality.corpus!r}.")
