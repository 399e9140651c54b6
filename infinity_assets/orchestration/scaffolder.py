"""``dg scaffold defs infinity_assets.InfinityCorpusComponent <name>``: a ``defs.yaml`` to fill in.

The corpus is named after the folder; the root and the server URL are environment templates (listed under
``requirements.env``), so the file loads as soon as they are set, and no secret is written into it.
"""
from __future__ import annotations

import re

import dagster as dg

_TEMPLATE = """\
type: {type_name}

# One corpus: documents under raw/text/<batch>/ and raw/images/<batch>/ of the root, embedded by an
# Infinity server, indexed and searchable. Reference of every attribute: docs/component.md.
attributes:
  name: {name}                                  # prefixes every asset key, job, sensor and partition
  root: "{{{{ env.{env}_ROOT }}}}"                # a local folder or s3://bucket/prefix
  # s3:                                         # for an s3:// root (unset fields: AWS_* at run time)
  #   endpoint_url: "{{{{ env.AWS_ENDPOINT_URL }}}}"
  #   secret_access_key: "{{{{ env.AWS_SECRET_ACCESS_KEY }}}}"
  text:                                         # .txt, .md, .jsonl documents
    url: "{{{{ env.INFINITY_API_URL }}}}"
    model_name: colbert-ir/colbertv2.0
    hidden_dim: 128
  # images:                                     # images and PDF pages
  #   url: "{{{{ env.INFINITY_API_URL }}}}"
  #   model_name: vidore/colpali-v1.3
  #   pdf: {{max_side: 1024, dpi: 144}}
  # vector_encoding: float16                    # half the bytes of float32
  # sensor: {{minimum_interval_seconds: 60, max_runs_per_tick: 25}}
  # schedule: {{cron: "0 * * * *"}}

requirements:
  env:
    - {env}_ROOT
    - INFINITY_API_URL
"""


class InfinityCorpusScaffolder(dg.Scaffolder):
    """Writes ``defs.yaml`` for a new corpus named after its folder (``manuals`` -> ``name: manuals``)."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = re.sub(r"[^a-z0-9_]", "_", request.target_path.name.lower())
        name = name if re.match(r"[a-z]", name) else f"corpus_{name}"
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            _TEMPLATE.format(type_name=request.type_name, name=name, env=name.upper()))
