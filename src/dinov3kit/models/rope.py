"""2-D rotary position embedding (RoPE) of DINOv3 as small pure functions.

Patch tokens get coordinates in [-1, 1] (row, column of each patch centre); each head rotates pairs of
channels by angles 2π · coordinate / period, with the row frequencies first, then the column ones,
and the whole layout tiled twice ("rotate half" convention). Prefix tokens (CLS, registers) are not
rotated.
"""

from __future__ import annotations

import math

import torch

from ..rope_math import rope_periods as rope_periods  # re-exported: computed below weights and models


def patch_coordinates(
    height: int, width: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Patch-centre coordinates in [-1, 1], row-major over the grid: [height * width, 2] as (y, x)."""
    ys = torch.arange(0.5, height, device=device, dtype=dtype) / height * 2 - 1
    xs = torch.arange(0.5, width, device=device, dtype=dtype) / width * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # [H, W, 2]
    return grid.flatten(0, 1)


def augment_coordinates(
    coords: torch.Tensor,
    *,
    shift: float | None = None,
    jitter: float | None = None,
    rescale: float | None = None,
) -> torch.Tensor:
    """Training-time coordinate augmentation: a random shift per axis in [-shift, shift], a log-uniform
    scale per axis in [1/jitter, jitter], then one log-uniform scale in [1/rescale, rescale] for both."""

    def uniform(shape: tuple[int, ...], bound: float) -> torch.Tensor:
        return torch.empty(shape, device=coords.device, dtype=coords.dtype).uniform_(-bound, bound)

    if shift is not None:
        coords = coords + uniform((1, 2), shift)
    if jitter is not None:
        coords = coords * uniform((1, 2), math.log(jitter)).exp()
    if rescale is not None:
        coords = coords * uniform((1,), math.log(rescale)).exp()
    return coords


def rope_angles(coords: torch.Tensor, periods: torch.Tensor) -> torch.Tensor:
    """Rotation angles [N, head_dim]: [y-frequencies | x-frequencies] tiled twice."""
    angles = 2 * math.pi * coords[:, :, None] / periods.to(coords.dtype)[None, None, :]  # [N, 2, head_dim/4]
    return angles.flatten(1).tile(2)


def rope_cos_sin(
    height: int,
    width: int,
    periods: torch.Tensor,
    *,
    augment: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [height * width, head_dim] in fp32 for a grid of patches."""
    coords = patch_coordinates(height, width, device=periods.device)
    if augment:
        coords = augment_coordinates(coords, **augment)
    angles = rope_angles(coords, periods.float())
    return angles.cos(), angles.sin()


def rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, workspace: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate x [..., head_dim] in place: x * cos + rotate_half(x) * sin, where rotate_half maps the halves
    (x1, x2) to (-x2, x1), with cos/sin broadcastable to x.

    The arithmetic runs in the tables' dtype and is rounded to x's dtype: fp32 tables (the default) give
    half-precision models fp32-accurate positions; bf16 CPU inference passes tables in its own dtype
    (`backend.cpu.rope_dtype`), which halves the traffic of this memory-bound step. In place on a strided view (e.g. the patch rows of a fused QKV buffer), it
    writes one temporary (into `workspace` when given: a tensor of the broadcast shape and cos's dtype) and
    makes no copies of the prefix tokens or of the unrotated halves.
    """
    half = x.shape[-1] // 2
    rotated = x * cos if workspace is None else torch.mul(x, cos, out=workspace)
    rotated[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    rotated[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return x.copy_(rotated)
