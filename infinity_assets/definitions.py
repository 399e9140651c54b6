"""The single env-configured code location of earlier versions: one corpus named ``default``.

Configured by environment variables (``INFINITY_ASSETS_ROOT``, ``INFINITY_*``, ``INFINITY_IMAGE_*``,
``AWS_*``, ``INFINITY_PDF_*``, ...; :func:`infinity_assets.settings.corpus_from_env`), read when Dagster loads
the location, not at import. New projects add :class:`infinity_assets.InfinityCorpusComponent` instances to
their defs folder instead (docs/migration.md says how a deployment of this location moves).
"""
import dagster as dg

from infinity_assets.orchestration import build_corpus_definitions
from infinity_assets.settings import corpus_from_env


@dg.definitions
def defs() -> dg.Definitions:
    """The ``default`` corpus, with runs executing in their own process (one Python start-up per run)."""
    return dg.Definitions.merge(build_corpus_definitions(corpus_from_env("default")),
                                dg.Definitions(executor=dg.in_process_executor))
