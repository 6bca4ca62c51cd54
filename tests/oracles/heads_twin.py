"""Twins of Meta's task heads, written from the structure of Meta's code (dinov3/hub/classifiers.py):
independent of dinov3kit, used as parity oracles with random weights in Meta's file layout."""

from __future__ import annotations

import torch
from torch import nn


def meta_linear_head_state(width: int, num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of Meta's `*_imagenet1k_linear_head-*.pth` (an nn.Linear on
    [CLS ; mean patch], so `width` is twice the backbone's)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(num_classes, width, generator=generator) / width**0.5,
        "bias": 0.1 * torch.randn(num_classes, generator=generator),
    }


class MetaLinearClassifierTwin(nn.Module):
    """Meta's `_LinearClassifierWrapper`: the backbone's normed CLS token and mean normed patch token
    (storage tokens excluded), concatenated, through nn.Linear (loaded strictly from Meta's head layout).
    `backbone` is a timm Eva twin of Meta's ViT (see meta_twin.timm_vit_from_meta)."""

    def __init__(self, backbone: nn.Module, head_state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.backbone = backbone
        self.linear_head = nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
        self.linear_head.load_state_dict(head_state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)  # [B, 1 + storage + patches, D], normed
        cls_token = tokens[:, 0]
        patch_tokens = tokens[:, self.backbone.num_prefix_tokens:]
        return self.linear_head(torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1))
