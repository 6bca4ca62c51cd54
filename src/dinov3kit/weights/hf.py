"""The transformers (Hugging Face) layout of DINOv3 ViT weights, as a translation table."""

from __future__ import annotations

import re

from ..configs import DINOv3ViTConfig
from .keymap import KeyRule, rule

#: Prefixes that transformers 5.x uses when it loads (`model.layer.N.`), folded to the saved form.
KEY_ALIASES = ((re.compile(r"^model\.layer\."), "layer."),)


def _weight_and_bias(ours: str, theirs: str) -> list[KeyRule]:
    return [rule(f"{ours}.{p}", f"{theirs}.{p}") for p in ("weight", "bias")]


VIT_RULES: list[KeyRule] = [
    rule("cls_token", "embeddings.cls_token"),
    rule("mask_token", "embeddings.mask_token"),
    rule("register_tokens", "embeddings.register_tokens"),
    *_weight_and_bias("patch_embed.proj", "embeddings.patch_embeddings"),
    *_weight_and_bias("blocks.{n}.norm1", "layer.{n}.norm1"),
    rule(
        "blocks.{n}.attn.qkv.weight",
        tuple(f"layer.{{n}}.attention.{p}_proj.weight" for p in "qkv"),
    ),
    *(rule(f"blocks.{{n}}.attn.{p}_bias", f"layer.{{n}}.attention.{p}_proj.bias") for p in "qkv"),
    *_weight_and_bias("blocks.{n}.attn.proj", "layer.{n}.attention.o_proj"),
    rule("blocks.{n}.ls1.gamma", "layer.{n}.layer_scale1.lambda1"),
    *_weight_and_bias("blocks.{n}.norm2", "layer.{n}.norm2"),
    *_weight_and_bias("blocks.{n}.mlp.fc2", "layer.{n}.mlp.down_proj"),
    rule("blocks.{n}.ls2.gamma", "layer.{n}.layer_scale2.lambda1"),
    *_weight_and_bias("norm", "norm"),
]
PLAIN_MLP_RULES = _weight_and_bias("blocks.{n}.mlp.fc1", "layer.{n}.mlp.up_proj")
GATED_MLP_RULES = [
    rule(f"blocks.{{n}}.mlp.fc1.{p}", (f"layer.{{n}}.mlp.gate_proj.{p}", f"layer.{{n}}.mlp.up_proj.{p}"))
    for p in ("weight", "bias")
]


def vit_rules(config: DINOv3ViTConfig) -> list[KeyRule]:
    """The full table for a ViT configuration (the MLP kind changes the keys)."""
    return VIT_RULES + (GATED_MLP_RULES if config.use_gated_mlp else PLAIN_MLP_RULES)


def canonical_key(key: str) -> str:
    """A key as transformers' `save_pretrained` writes it."""
    for pattern, replacement in KEY_ALIASES:
        key = pattern.sub(replacement, key)
    return key
