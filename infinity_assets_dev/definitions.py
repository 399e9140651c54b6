"""This repository's own code location, a dg project: the corpus component instances of ``defs/``.

``make demo`` and ``make dev`` run it with two corpora (``docs``: text, ``pages``: PDF pages and images); each
instance's ``defs.yaml`` takes its root and server from the environment the tools start it with.
"""
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    """Every instance under ``defs/``, runs executing in their own process (one Python start-up per run)."""
    return dg.Definitions.merge(dg.load_from_defs_folder(path_within_project=Path(__file__).parent / "defs"),
                                dg.Definitions(executor=dg.in_process_executor))
