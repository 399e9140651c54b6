"""Running the service: uvicorn on 127.0.0.1 unless told otherwise, its logs redacted of secrets."""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Mapping

from infinity_assets.service.app import create_app
from infinity_assets.service.config import redact
from infinity_assets.service.corpora import corpora_from_env
from infinity_assets.service.guard import RedactingFilter

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, corpora: Mapping[str, str] | None = None,
          url: str | None = None, log_level: str = "info") -> None:
    """Serve :func:`create_app` until interrupted: the ``corpora`` (``{name: root}``; None: the ``default``
    corpus at ``$INFINITY_ASSETS_ROOT``), queries embedded by the Infinity server at ``url`` (None:
    ``$INFINITY_API_URL``); the other settings from the environment."""
    import uvicorn

    os.environ.setdefault("LANCE_LOG", "error")  # Lance's Rust warnings are for developers
    app = create_app(corpora_from_env(corpora, url=url))
    service = app.state.service
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False)
    redacting = RedactingFilter(service.hidden)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "infinity_assets"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(redacting)
    if not logging.getLogger("infinity_assets").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        handler.addFilter(redacting)
        logging.getLogger("infinity_assets").addHandler(handler)
        logging.getLogger("infinity_assets").setLevel(logging.INFO)
    key = "API key required" if service.limits.api_key else "no API key (INFINITY_ASSETS_SERVE_API_KEY unset)"
    print(f"infinity-assets serve: http://{host}:{port}/ ({key}); corpora (?corpus=<name>, the first by "
          "default):", file=sys.stderr, flush=True)
    hidden = service.hidden()
    for corpus in service.corpora.values():
        queries = ", ".join(f"{m} queries by {repr(q.model) if q.model else 'the index model'} at "
                            f"{redact(q.client.url, hidden)}" for m, q in corpus.queries.items())
        print(f"  {corpus.name}: {redact(corpus.store.root_uri, hidden)} ({queries})", file=sys.stderr,
              flush=True)
    if not is_loopback(host) and not service.limits.api_key:
        print(f"infinity-assets serve: WARNING: listening on {host} without an API key: anyone who can reach "
              "this address can search and read the indexed documents; set INFINITY_ASSETS_SERVE_API_KEY",
              file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
