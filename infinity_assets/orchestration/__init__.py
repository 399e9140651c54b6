"""The Dagster wiring: the corpus component and what one corpus builds (assets, checks, sensors, schedules, jobs).

The only package that imports dagster; it wires a :class:`~infinity_assets.corpus.CorpusSpec` to the
plain-Python layers below and reports metadata. :func:`build_corpus_definitions` is the one entry point;
:class:`~infinity_assets.orchestration.component.InfinityCorpusComponent` resolves a ``defs.yaml`` into it.
"""
from infinity_assets.orchestration.build import build_corpus_definitions

__all__ = ["build_corpus_definitions"]
