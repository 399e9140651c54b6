"""The environment the tools, tests and benchmarks start processes with."""
from __future__ import annotations

import os


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any INFINITY_API* / INFINITY_MODEL* / AWS_* variable, plus ``extra``
    (so a child sees only the servers and settings it is given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFINITY_API", "INFINITY_MODEL", "AWS_"))}
    return {**env, **extra}
