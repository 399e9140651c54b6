"""How PDF pages are rendered: :class:`PdfSettings` and the ``INFINITY_PDF_*`` variables that set them.

A module of its own so that the format (:mod:`.pdf`) and the render pool (:mod:`.pdf_render`) both import it
and not each other. The defaults' reasons are in :mod:`.pdf`'s docstring.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Environment variables of :class:`PdfSettings`, read when a store is built (not at import).
PDF_ENV = {"max_side": "INFINITY_PDF_MAX_SIDE", "dpi": "INFINITY_PDF_DPI",
           "max_pages": "INFINITY_PDF_MAX_PAGES", "page_timeout": "INFINITY_PDF_PAGE_TIMEOUT",
           "workers": "INFINITY_PDF_WORKERS"}


@dataclass(frozen=True)
class PdfSettings:
    """How PDF pages are rendered (the defaults' reasons are in :mod:`.pdf`'s docstring)."""

    max_side: int = 1024
    dpi: float = 144.0
    max_pages: int = 2000
    page_timeout: float = 60.0
    workers: int = 0  # 0: one per CPU core

    @classmethod
    def from_env(cls, **overrides: Any) -> PdfSettings:
        """Settings from ``overrides`` (``None`` values ignored), then ``INFINITY_PDF_*``, then the defaults."""
        values: dict[str, Any] = {}
        for name, env_name in PDF_ENV.items():
            value = overrides.get(name)
            raw = os.environ.get(env_name)
            if value is None and raw not in (None, ""):
                try:
                    value = type(getattr(cls, name))(raw)
                except ValueError:
                    raise ValueError(f"environment variable {env_name}={raw!r} is not a valid {name}") from None
            if value is not None:
                values[name] = value
        settings = cls(**values)
        if settings.max_side < 64 or settings.dpi <= 0 or settings.max_pages < 1 or settings.page_timeout <= 0:
            raise ValueError(f"invalid PDF settings {settings} (max_side >= 64, dpi > 0, max_pages >= 1, "
                             "page_timeout > 0)")
        return settings

    @property
    def worker_count(self) -> int:
        """Render processes (of one run of PDFs: see :mod:`.pdf_render`)."""
        return self.workers or os.cpu_count() or 1
