"""Out-of-place RoPE helpers, written as the formulas read, to check `dinov3kit.models.rope` against."""

from __future__ import annotations

import torch

from dinov3kit.models.rope import rotate_


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Rotate the patch tokens of x [B, heads, N, head_dim] (computed in fp32); prefix tokens pass through."""
    out = x.clone()
    rotate_(out[:, :, num_prefix_tokens:], cos, sin)
    return out
