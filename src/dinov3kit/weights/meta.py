"""Meta's original DINOv3 checkpoints (`dinov3_vits16_pretrain_lvd1689m-08c60483.pth`,
`dinov3_convnext_tiny_pretrain_lvd1689m-21b726bb.pth`): key tables, architecture inference from the
tensors, and the ViT's masked QKV bias."""

from __future__ import annotations

import re
from typing import Any

import torch

from ..configs import ConfigError, DINOv3ConvNextConfig, DINOv3ViTConfig
from ..errors import CheckpointError
from ..variants import dataset_in_name, find_convnext_variant, find_vit_variant
from .files import TensorFile
from .keymap import KeyRule, rule, weight_and_bias


def _same(*keys: str) -> list[KeyRule]:
    return [rule(k, k) for k in keys]


VIT_RULES: list[KeyRule] = [
    *_same("cls_token", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"),
    rule("register_tokens", "storage_tokens"),
    rule("rope_periods", "rope_embed.periods"),
    *_same(
        *(f"blocks.{{n}}.{name}.{p}" for name in ("norm1", "attn.proj", "norm2") for p in ("weight", "bias")),
        "blocks.{n}.attn.qkv.weight",
        "blocks.{n}.ls1.gamma",
        "blocks.{n}.ls2.gamma",
        "norm.weight",
        "norm.bias",
    ),
    # The stored bias is multiplied by `bias_mask` when read (see `masked_loader`).
    rule(tuple(f"blocks.{{n}}.attn.{p}_bias" for p in "qkv"), "blocks.{n}.attn.qkv.bias"),
]
PLAIN_MLP_RULES = weight_and_bias("blocks.{n}.mlp.fc1", "blocks.{n}.mlp.fc1") + weight_and_bias(
    "blocks.{n}.mlp.fc2", "blocks.{n}.mlp.fc2"
)
GATED_MLP_RULES = [
    *(rule(f"blocks.{{n}}.mlp.fc1.{p}", (f"blocks.{{n}}.mlp.w1.{p}", f"blocks.{{n}}.mlp.w2.{p}")) for p in ("weight", "bias")),
    *weight_and_bias("blocks.{n}.mlp.fc2", "blocks.{n}.mlp.w3"),
]
#: Tensors of Meta checkpoints that inference does not use.
IGNORED = [
    re.compile(r"blocks\.\d+\.attn\.qkv\.bias_mask"),  # folded into the bias by `masked_loader`
    re.compile(r"local_cls_norm\.(weight|bias)"),  # training-only norm for local crops
    re.compile(r"(dino|ibot)_head\..*"),
]


def vit_rules(config: DINOv3ViTConfig) -> list[KeyRule]:
    return VIT_RULES + (GATED_MLP_RULES if config.use_gated_mlp else PLAIN_MLP_RULES)


def is_meta_vit(tensors: TensorFile) -> bool:
    return "cls_token" in tensors and "patch_embed.proj.weight" in tensors and "blocks.0.attn.qkv.weight" in tensors


def masked_loader(tensors: TensorFile):
    """Load function that returns `bias * bias_mask` for QKV biases (the mask zeroes the key slice)."""

    def load(key: str) -> torch.Tensor:
        tensor = tensors.load(key)
        mask_key = key + "_mask"
        if key.endswith("attn.qkv.bias") and mask_key in tensors:
            mask = tensors.load(mask_key)
            if torch.isnan(mask).any():
                raise CheckpointError(f"{tensors.name}: {mask_key} holds NaN (an uninitialised mask)")
            tensor = tensor * mask.to(tensor.dtype)
        return tensor

    return load


def infer_vit_config(tensors: TensorFile, file_name: str = "") -> DINOv3ViTConfig:
    """The architecture of a Meta ViT checkpoint, read from its tensor shapes (head count from the RoPE
    periods: head_dim = 4 x number of periods)."""
    if not is_meta_vit(tensors):
        raise CheckpointError(
            f"{tensors.name}: not a DINOv3 ViT checkpoint in Meta's layout (no cls_token, patch_embed or blocks.0); "
            f"first keys: {tensors.keys()[:5]}"
        )
    if "rope_embed.periods" not in tensors:
        raise CheckpointError(f"{tensors.name}: rope_embed.periods is missing; is this a DINOv2 checkpoint?")
    shape = lambda key: tensors.load(key).shape  # noqa: E731
    hidden = shape("cls_token")[-1]
    head_dim = 4 * shape("rope_embed.periods")[0]
    depth = 1 + max(int(m.group(1)) for k in tensors.keys() if (m := re.match(r"blocks\.(\d+)\.", k)))
    gated = "blocks.0.mlp.w1.weight" in tensors
    intermediate = shape("blocks.0.mlp.w1.weight" if gated else "blocks.0.mlp.fc1.weight")[0]
    has_qkv_bias = "blocks.0.attn.qkv.bias" in tensors
    if has_qkv_bias and "blocks.0.attn.qkv.bias_mask" in tensors:
        enabled = [bool(part.any()) for part in tensors.load("blocks.0.attn.qkv.bias_mask").chunk(3)]
    else:
        enabled = [has_qkv_bias] * 3
    patch = shape("patch_embed.proj.weight")
    if head_dim == 0 or hidden % head_dim or len(patch) != 4:
        raise CheckpointError(
            f"{tensors.name}: inconsistent shapes (width {hidden}, {head_dim // 4} RoPE periods, patch embedding "
            f"{tuple(patch)}); the checkpoint is damaged or not a DINOv3 ViT"
        )
    config = _inferred(
        tensors,
        DINOv3ViTConfig,
        patch_size=patch[-1],
        num_channels=patch[1],
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=depth,
        num_attention_heads=hidden // head_dim,
        hidden_act="silu" if gated else "gelu",
        use_gated_mlp=gated,
        query_bias=enabled[0],
        key_bias=enabled[1],
        value_bias=enabled[2],
        proj_bias="blocks.0.attn.proj.bias" in tensors,
        mlp_bias=("blocks.0.mlp.w1.bias" if gated else "blocks.0.mlp.fc1.bias") in tensors,
        num_register_tokens=shape("storage_tokens")[1] if "storage_tokens" in tensors else 0,
        layerscale_value=1e-5,
    )
    variant = find_vit_variant(
        hidden_size=hidden, num_hidden_layers=depth, intermediate_size=intermediate, use_gated_mlp=gated
    )
    dataset = dataset_in_name(file_name)
    config.extra.update(architectures=["DINOv3ViTModel"])
    if variant:
        config.extra["dinov3_variant"] = variant.name
    if dataset:
        config.extra["dinov3_pretrain_dataset"] = dataset
    return config


def _inferred(tensors: TensorFile, config_class: type, **fields: Any) -> Any:
    """`config_class(**fields)`, its validation errors naming the checkpoint they were read from."""
    try:
        return config_class(**fields)
    except ConfigError as error:
        raise CheckpointError(f"{tensors.name}: the architecture read from its tensors is invalid: {error}") from error


def finish_vit_checkpoint(state: dict[str, torch.Tensor], config: DINOv3ViTConfig) -> None:
    """Give a state dict in Meta's key names Meta's shapes: a [1, D] mask token and a `bias_mask` next to
    each fused QKV bias, marking which of q, k, v have a bias."""
    state["mask_token"] = state["mask_token"].reshape(1, -1)
    flags = (config.query_bias, config.key_bias, config.value_bias)
    for key in [k for k in state if k.endswith("attn.qkv.bias")]:
        bias = state[key]
        state[key + "_mask"] = torch.cat([torch.full_like(part, float(f)) for part, f in zip(bias.chunk(3), flags)])


CONVNEXT_RULES: list[KeyRule] = [
    *weight_and_bias("stages.{i}.downsample.{k}", "downsample_layers.{i}.{k}"),
    *(
        r
        for name in ("dwconv", "norm", "pwconv1", "pwconv2")
        for r in weight_and_bias(f"stages.{{i}}.blocks.{{j}}.{name}", f"stages.{{i}}.{{j}}.{name}")
    ),
    rule("stages.{i}.blocks.{j}.gamma", "stages.{i}.{j}.gamma"),
    *weight_and_bias("norm", "norm"),
]
CONVNEXT_IGNORED = [
    re.compile(r"norms\.\d+\.(weight|bias)"),  # the final norm once more (Meta registers it twice)
    re.compile(r"norm\.(weight|bias)"),  # unused by a backbone, which has no final norm
    re.compile(r"(dino|ibot)_head\..*"),
]


def convnext_rules(config: DINOv3ConvNextConfig) -> list[KeyRule]:
    return CONVNEXT_RULES


def is_meta_convnext(tensors: TensorFile) -> bool:
    return "downsample_layers.0.0.weight" in tensors and "stages.0.0.dwconv.weight" in tensors


def infer_convnext_config(tensors: TensorFile, file_name: str = "") -> DINOv3ConvNextConfig:
    """The architecture of a Meta ConvNeXt checkpoint: stage widths from the downsampling convs, depths
    from the block indices."""
    if not is_meta_convnext(tensors):
        raise CheckpointError(
            f"{tensors.name}: not a DINOv3 ConvNeXt checkpoint in Meta's layout (no downsample_layers.0.0 or "
            f"stages.0.0.dwconv); first keys: {tensors.keys()[:5]}"
        )
    downsample = [re.match(r"downsample_layers\.(\d+)\.", k) for k in tensors.keys()]
    num_stages = 1 + max(int(m.group(1)) for m in downsample if m)
    conv_keys = ["downsample_layers.0.0.weight"] + [f"downsample_layers.{i}.1.weight" for i in range(1, num_stages)]
    missing = [key for key in conv_keys if key not in tensors]
    if missing:
        raise CheckpointError(f"{tensors.name}: tensors {missing} are missing; the checkpoint is incomplete")
    shapes = [tensors.load(key).shape for key in conv_keys]
    blocks = [re.match(r"stages\.(\d+)\.(\d+)\.", k) for k in tensors.keys()]
    depths = [
        1 + max((int(m.group(2)) for m in blocks if m and int(m.group(1)) == stage), default=-1)
        for stage in range(num_stages)
    ]
    hidden_sizes = [shape[0] for shape in shapes]
    config = _inferred(tensors, DINOv3ConvNextConfig, num_channels=shapes[0][1], hidden_sizes=hidden_sizes, depths=depths)
    config.extra.update(architectures=["DINOv3ConvNextModel"])
    variant = find_convnext_variant(depths=depths, hidden_sizes=hidden_sizes)
    if variant:
        config.extra["dinov3_variant"] = f"convnext_{variant.name}"
    dataset = dataset_in_name(file_name)
    if dataset:
        config.extra["dinov3_pretrain_dataset"] = dataset
    return config


def finish_convnext_checkpoint(state: dict[str, torch.Tensor], config: DINOv3ConvNextConfig) -> None:
    """Register the final norm a second time as `norms.3`, as Meta's model does (its strict load needs it)."""
    for p in ("weight", "bias"):
        if f"norm.{p}" in state:
            state[f"norms.{config.num_stages - 1}.{p}"] = state[f"norm.{p}"]
