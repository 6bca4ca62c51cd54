"""The transformers (Hugging Face) layout of DINOv3 ViT and ConvNeXt weights, as translation tables."""

from __future__ import annotations

import re

from ..configs import DINOv3ConvNextConfig, DINOv3ViTConfig
from .keymap import KeyRule, rule, weight_and_bias

#: Prefixes that transformers 5.x uses when it loads (`model.layer.N.`, `model.stages.N.`), folded to the
#: saved form.
KEY_ALIASES = ((re.compile(r"^model\.layer\."), "layer."), (re.compile(r"^model\.stages\."), "stages."))


VIT_RULES: list[KeyRule] = [
    rule("cls_token", "embeddings.cls_token"),
    rule("mask_token", "embeddings.mask_token"),
    rule("register_tokens", "embeddings.register_tokens"),
    *weight_and_bias("patch_embed.proj", "embeddings.patch_embeddings"),
    *weight_and_bias("blocks.{n}.norm1", "layer.{n}.norm1"),
    rule(
        "blocks.{n}.attn.qkv.weight",
        tuple(f"layer.{{n}}.attention.{p}_proj.weight" for p in "qkv"),
    ),
    *(rule(f"blocks.{{n}}.attn.{p}_bias", f"layer.{{n}}.attention.{p}_proj.bias") for p in "qkv"),
    *weight_and_bias("blocks.{n}.attn.proj", "layer.{n}.attention.o_proj"),
    rule("blocks.{n}.ls1.gamma", "layer.{n}.layer_scale1.lambda1"),
    *weight_and_bias("blocks.{n}.norm2", "layer.{n}.norm2"),
    *weight_and_bias("blocks.{n}.mlp.fc2", "layer.{n}.mlp.down_proj"),
    rule("blocks.{n}.ls2.gamma", "layer.{n}.layer_scale2.lambda1"),
    *weight_and_bias("norm", "norm"),
]
PLAIN_MLP_RULES = weight_and_bias("blocks.{n}.mlp.fc1", "layer.{n}.mlp.up_proj")
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


#: ConvNeXt: our block names → transformers' (weights and biases).
_CONVNEXT_BLOCK_NAMES = {
    "dwconv": "depthwise_conv",
    "norm": "layer_norm",
    "pwconv1": "pointwise_conv1",
    "pwconv2": "pointwise_conv2",
}
CONVNEXT_RULES: list[KeyRule] = [
    *weight_and_bias("stages.{i}.downsample.{k}", "stages.{i}.downsample_layers.{k}"),
    *(
        r
        for ours, theirs in _CONVNEXT_BLOCK_NAMES.items()
        for r in weight_and_bias(f"stages.{{i}}.blocks.{{j}}.{ours}", f"stages.{{i}}.layers.{{j}}.{theirs}")
    ),
    rule("stages.{i}.blocks.{j}.gamma", "stages.{i}.layers.{j}.gamma"),
    *weight_and_bias("norm", "layer_norm"),
]
#: A backbone has no final norm: a model checkpoint's norm is left unused.
CONVNEXT_IGNORED = [re.compile(r"layer_norm\.(weight|bias)")]


def convnext_rules(config: DINOv3ConvNextConfig) -> list[KeyRule]:
    """The same table for every ConvNeXt configuration."""
    return CONVNEXT_RULES
