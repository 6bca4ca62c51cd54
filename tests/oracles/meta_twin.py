"""Meta-layout twins: random state dicts with the exact key names of Meta's released checkpoints
(from `tests/data/meta_checkpoint_layouts.json`, a copy of shared/reference), scaled down to tiny
widths, and timm models that load them through timm's own DINOv3 checkpoint filter."""

from __future__ import annotations

import json
import math
import re
from functools import partial
from pathlib import Path

import torch

LAYOUTS = json.loads((Path(__file__).parents[1] / "data" / "meta_checkpoint_layouts.json").read_text())


def meta_periods(head_dim: int, base: float = 100.0, bf16: bool = True) -> torch.Tensor:
    """Periods as Meta computes them; Meta's checkpoints store them rounded to bf16."""
    periods = base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    return periods.to(torch.bfloat16).float() if bf16 else periods


def meta_vit_state_dict(
    variant: str,
    *,
    dim: int = 64,
    head_dim: int = 32,
    hidden: int = 128,
    depth: int = 2,
    seed: int = 0,
    bf16_periods: bool = True,
) -> dict[str, torch.Tensor]:
    """A Meta-layout ViT state dict for `variant` (e.g. "vits16plus", "vit7b16") at tiny size."""
    layout = LAYOUTS[f"dinov3_{variant}"]["keys"]
    full_dim = layout["cls_token"][-1]
    mlp_key = "blocks.N.mlp.w1.weight" if "blocks.N.mlp.w1.weight" in layout else "blocks.N.mlp.fc1.weight"
    full_hidden = layout[mlp_key][0]
    sizes = {full_dim: dim, 3 * full_dim: 3 * dim, full_hidden: hidden}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for pattern, shape in layout.items():
        for index in range(depth) if ".N." in pattern else [None]:
            key = pattern.replace(".N.", f".{index}.")
            if key == "rope_embed.periods":
                state[key] = meta_periods(head_dim, bf16=bf16_periods)
                continue
            tiny_shape = [sizes.get(d, d) if i == 0 or key != "patch_embed.proj.weight" else d for i, d in enumerate(shape)]
            tiny_shape = [sizes.get(d, d) if d in (full_dim, 3 * full_dim, full_hidden) else d for d in tiny_shape]
            if key.endswith("bias_mask"):
                mask = torch.ones(tiny_shape)
                mask[dim : 2 * dim] = 0  # Meta masks the key bias
                state[key] = mask
                continue
            noise = torch.randn(tiny_shape, generator=generator)
            if "token" in key:
                value = 0.5 * noise
            elif len(tiny_shape) >= 2:
                value = noise / math.sqrt(math.prod(tiny_shape[1:]))
            elif key.endswith("gamma"):
                value = 0.5 + 0.25 * noise
            elif re.search(r"norm\w*\.weight$", key):
                value = 1.0 + 0.2 * noise
            else:
                value = 0.1 * noise
            state[key] = value
    return state


def timm_vit_from_meta(state: dict[str, torch.Tensor], *, num_heads: int):
    """A timm Eva (DINOv3 settings) loaded from a Meta-layout state dict with timm's checkpoint filter."""
    from timm.layers import LayerNorm
    from timm.models.eva import Eva, checkpoint_filter_fn

    dim = state["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    gated = "blocks.0.mlp.w1.weight" in state
    hidden = state["blocks.0.mlp.w1.weight" if gated else "blocks.0.mlp.fc1.weight"].shape[0]
    model = Eva(
        patch_size=16,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        mlp_ratio=hidden / dim,
        swiglu_mlp=gated,
        swiglu_align_to=8,
        init_values=1e-5,
        rope_type="dinov3",
        rope_temperature=100,
        rope_rotate_half=True,
        use_rot_pos_emb=True,
        use_abs_pos_emb=False,
        num_reg_tokens=state["storage_tokens"].shape[1],
        use_fc_norm=False,
        norm_layer=partial(LayerNorm, eps=1e-5),
        dynamic_img_size=True,
        num_classes=0,
    )
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(dict(state), model), strict=False)
    assert not unexpected and all("rope" in k for k in missing), (missing, unexpected)
    return model.eval()
