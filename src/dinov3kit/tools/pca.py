"""`pca`: the first three principal components of patch features shown as RGB (the DINOv3 picture).

Several images share one basis, so equal colours mean similar features across images. With
`foreground`, the first component separates object from background (its background side is the one
that dominates the image borders); background patches are drawn black and the colours come from a
PCA of the foreground patches only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .dense import DenseMap, dense_map, to_image, upsample
from .runtime import Embedder

#: Percentiles mapped to 0 and 1 in each colour channel (robust to outlier patches).
LOW, HIGH = 1.0, 99.0


def principal_axes(features: torch.Tensor, count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and the `count` leading principal axes [D, count] of rows [N, D], signs fixed so that
    projections are positively skewed (deterministic colours)."""
    mean = features.mean(dim=0)
    centered = features - mean
    covariance = centered.T @ centered / max(1, len(features) - 1)
    _, vectors = torch.linalg.eigh(covariance.double())
    axes = vectors[:, -count:].flip(1).float()
    skew = ((centered @ axes) ** 3).mean(dim=0)
    return mean, axes * torch.where(skew < 0, -1.0, 1.0)


def foreground_masks(maps: Sequence[DenseMap]) -> list[np.ndarray]:
    """A boolean [h, w] foreground mask per map from the sign of the shared first principal component."""
    mean, axes = principal_axes(torch.cat([m.features.flatten(0, 1) for m in maps]), 1)
    scores = [((m.features - mean) @ axes)[..., 0].numpy() for m in maps]
    border = np.concatenate([np.concatenate([s[0], s[-1], s[:, 0], s[:, -1]]) for s in scores])
    sign = -1.0 if np.median(border) > 0 else 1.0
    return [sign * s > 0 for s in scores]


def pca_colors(maps: Sequence[DenseMap], masks: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """[h, w, 3] colours in [0, 1] per map from one basis fitted on all (masked) patches; masked-out black."""
    masks = masks or [np.ones(m.grid, dtype=bool) for m in maps]
    chosen = torch.cat([m.features[torch.from_numpy(mask)] for m, mask in zip(maps, masks)])
    if len(chosen) < 3:
        raise ValueError("too few patches for a PCA; use a higher --resolution")
    mean, axes = principal_axes(chosen)
    projected = (chosen - mean) @ axes
    low = torch.quantile(projected, LOW / 100, dim=0)
    high = torch.quantile(projected, HIGH / 100, dim=0)
    colors = []
    for m, mask in zip(maps, masks):
        rgb = (((m.features - mean) @ axes - low) / (high - low).clamp_min(1e-6)).clamp(0, 1).numpy()
        colors.append(np.where(mask[..., None], rgb, 0.0))
    return colors


def pca_images(
    embedder: Embedder,
    images: Sequence[str | os.PathLike | Image.Image],
    *,
    foreground: bool = False,
    max_bytes: int | None = None,
) -> list[Image.Image]:
    """The PCA picture of each image at the model input size (shortest side = the embedder's resolution);
    files are read within `max_bytes` and pictures within `dense.MAX_PICTURE_PIXELS`."""
    if not images:
        raise ValueError("pca needs at least one image")
    maps = [dense_map(embedder, image, max_bytes) for image in images]
    masks = foreground_masks(maps) if foreground else None
    return [
        to_image(upsample(rgb, m.size) if masks is None else _sharp_mask(rgb, mask, m.size))
        for m, rgb, mask in zip(maps, pca_colors(maps, masks), masks or [None] * len(maps))
    ]


def _sharp_mask(rgb: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Upsampled colours with the background kept black (no bleeding of colour across the mask edge)."""
    inside = upsample(mask[..., None].astype(np.float32), size) > 0.5
    return np.where(inside, upsample(rgb, size), 0.0)
