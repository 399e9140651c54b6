"""Running the service: uvicorn on 127.0.0.1 unless told otherwise, its logs redacted of secrets."""
from __future__ import annotations

import ipaddress
import logging
import os
import sys

from infinity_assets.service.app import create_app
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


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_level: str = "info") -> None:
    """Serve :func:`create_app` (settings from the environment) until interrupted."""
    import uvicorn

    os.environ.setdefault("LANCE_LOG", "error")  # Lance's Rust warnings are for developers
    app = create_app()
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
    print(f"infinity-assets serve: http://{host}:{port}/ ({key}; store {service.store.root_uri}; "
          f"models text {service.clients['text'].model_name!r}, images {service.clients['images'].model_name!r})",
          file=sys.stderr, flush=True)
    if not is_loopback(host) and not service.limits.api_key:
        print(f"infinity-assets serve: WARNING: listening on {host} without an API key: anyone who can reach "
              "this address can search and read the indexed documents; set INFINITY_ASSETS_SERVE_API_KEY",
              file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
