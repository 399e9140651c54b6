"""``infinity-assets serve``: a JSON search API and a page viewer on the index, for applications and people.

* :mod:`.app`: the Starlette application (routes; search is :func:`infinity_assets.index.search_text`).
* :mod:`.corpora`: the corpora served (``--corpus NAME=ROOT``, or ``default`` at ``$INFINITY_ASSETS_ROOT``),
  each with its open index readers and its queries embedded with the model its index records.
* :mod:`.pages`: indexed documents looked up by id, their files read from the store, PDF pages rendered.
* :mod:`.similarity`: which patches of a page matched a query (ColPali-style models).
* :mod:`.guard`: API key, parameter bounds, errors as JSON answers, redaction of secrets.
* :mod:`.config` and :mod:`.openapi`: the service's limits and its OpenAPI description.
* ``static/``: the viewer (plain HTML, CSS and JS, no build step).

Nothing here imports Dagster. :func:`serve` runs the app with uvicorn.
"""
from __future__ import annotations

from infinity_assets.service.app import create_app
from infinity_assets.service.server import serve

__all__ = ["create_app", "serve"]
