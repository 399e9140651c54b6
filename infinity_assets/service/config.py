"""The service's own settings (limits, API key) and the redaction of secrets from what it answers and logs.

The search and store settings are the CLI's (:mod:`infinity_assets.settings`); these are only what a network
service adds: an optional API key and the bounds that keep one request cheap. Read when the app is built,
never at import.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

API_KEY_ENV = "INFINITY_ASSETS_SERVE_API_KEY"
#: Environment variables whose values are secrets: never in a response or a log line.
SECRET_ENV = (API_KEY_ENV, "INFINITY_API_KEY", "INFINITY_IMAGE_API_KEY", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN")
_USERINFO = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits of one request and the optional API key (``INFINITY_ASSETS_SERVE_API_KEY``).

    ``max_query_chars`` bounds ``q``, ``max_k`` the number of hits, ``min_size``/``max_size`` the thumbnail's
    longest side in pixels, ``max_source_bytes`` the source files ``/sources`` sends (read whole), ``cache_bytes``
    the rendered pages kept in memory.
    """

    api_key: str | None = field(default=None, repr=False)
    max_query_chars: int = 1000
    max_k: int = 100
    default_k: int = 10
    min_size: int = 16
    max_size: int = 2048
    max_source_bytes: int = 256 * 2**20
    cache_bytes: int = 64 * 2**20

    @classmethod
    def from_env(cls, **overrides: object) -> ServiceSettings:
        """``overrides`` (None ignored), then the environment (the API key only), then the defaults."""
        values = {k: v for k, v in overrides.items() if v is not None}
        values.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
        return cls(**values)  # type: ignore[arg-type]


def secrets(extra: tuple[str | None, ...] = ()) -> list[str]:
    """The secret values to hide: those of :data:`SECRET_ENV` now set, and ``extra`` (longest first)."""
    values = {os.environ.get(name) for name in SECRET_ENV} | set(extra)
    return sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True)


def redact(text: str, hidden: list[str]) -> str:
    """``text`` with every secret of ``hidden`` and any ``user:password@`` of a URL replaced by ``***``."""
    for value in hidden:
        text = text.replace(value, "***")
    return _USERINFO.sub("***@", text)
