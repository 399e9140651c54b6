"""A code location like the package's own (the env-configured ``default`` corpus), whose sensor requests a
backfill for more than 10 changed batches (the default is 100): the deployment test proves a sensor burst end
to end with a dozen small batches."""
import dataclasses

import dagster as dg

from infinity_assets.corpus import ScheduleSettings, SensorSettings
from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.settings import corpus_from_env


@dg.definitions
def defs() -> dg.Definitions:
    """The ``default`` corpus with ``backfill_over=10``, runs executing in their own process, and its hourly
    incremental schedule off: a test that spans the top of an hour would otherwise count the schedule's runs
    of the same batches among the sensor's."""
    spec = dataclasses.replace(corpus_from_env("default"), sensor=SensorSettings(backfill_over=10),
                               schedule=ScheduleSettings(enabled=False))
    return dg.Definitions.merge(build_corpus_definitions(spec),
                                dg.Definitions(executor=dg.in_process_executor))
