"""What one corpus makes in Dagster: :func:`build_corpus_definitions`, the seam between settings and wiring.

The component (:mod:`.component`) and the single env-configured location (:mod:`infinity_assets.definitions`)
both resolve their settings into a :class:`~infinity_assets.corpus.CorpusSpec` and call this; nothing here
reads the environment or contacts a server, so definitions load offline (``dg check defs`` in CI).
"""
from __future__ import annotations

import dagster as dg

from infinity_assets.corpus import CorpusSpec
from infinity_assets.orchestration.assets import build_embedding_asset
from infinity_assets.orchestration.checks import build_artifact_checks
from infinity_assets.orchestration.index_assets import build_index_assets, build_index_automation_sensor
from infinity_assets.orchestration.lineage import raw_documents
from infinity_assets.orchestration.schedules import build_incremental_schedule
from infinity_assets.orchestration.sensors import build_new_documents_sensor


def build_corpus_definitions(spec: CorpusSpec) -> dg.Definitions:
    """The assets, checks, sensors, schedules and jobs of one corpus, every name prefixed by ``spec.name``.

    Per modality (``text``, ``images``): ``<name>/raw_<stem>_documents`` (observed), ``<name>/<stem>_embeddings``
    (partitioned by batch, with its checks) and, unless ``spec.index.enabled`` is false, ``<name>/<stem>_index``
    with its quality check; one ``<name>_new_documents_sensor``, one ``<name>_<kind>_incremental_schedule`` per
    modality (with its job ``<name>_embed_<kind>_job``) and ``<name>_index_automation_sensor``. No resource key
    is bound: every asset uses the corpus's own client and store, so corpora never collide.

    Example::

        defs = build_corpus_definitions(CorpusSpec(name="manuals", store=StoreSettings("s3://acme/manuals"),
                                                   text=ClientSettings(model_name="colbert-ir/colbertv2.0")))
    """
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = []
    checks: list[dg.AssetChecksDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    for modality in spec.modalities:
        assets += [raw_documents(modality), build_embedding_asset(spec, modality)]
        checks += build_artifact_checks(spec, modality)
        schedules.append(build_incremental_schedule(spec, modality))
        if spec.index.enabled:
            index, quality = build_index_assets(spec, modality)
            assets.append(index)
            checks.append(quality)
    sensors: list[dg.SensorDefinition] = [build_new_documents_sensor(spec)]
    if spec.index.enabled:
        sensors.append(build_index_automation_sensor(spec))
    return dg.Definitions(assets=assets, asset_checks=checks, sensors=sensors, schedules=schedules)
