"""`similarity`: cosine similarity of one patch against every patch of the same or another image."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from .dense import DenseMap, dense_map, to_image, upsample
from .runtime import Embedder

#: Colours from low to high similarity (dark violet → red → yellow), interpolated linearly.
HEAT_COLORS = np.array(
    [[0.02, 0.01, 0.10], [0.30, 0.05, 0.45], [0.70, 0.12, 0.40], [0.95, 0.40, 0.15], [0.99, 0.85, 0.25], [1.0, 1.0, 0.85]]
)
HEAT_WEIGHT = 0.6


def heat_colors(values: np.ndarray) -> np.ndarray:
    """[..., 3] colours for values in [0, 1]."""
    position = np.clip(values, 0.0, 1.0) * (len(HEAT_COLORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(HEAT_COLORS) - 2)
    fraction = (position - low)[..., None]
    return HEAT_COLORS[low] * (1 - fraction) + HEAT_COLORS[low + 1] * fraction


def cosine_map(query: torch.Tensor, target: DenseMap) -> np.ndarray:
    """[h, w] cosine similarity of the feature `query` [D] with every patch of `target`."""
    return torch.nn.functional.cosine_similarity(target.features, query.expand_as(target.features), dim=-1).numpy()


def overlay(target: DenseMap, similarity: np.ndarray) -> Image.Image:
    """The similarity (stretched to its own min..max) as a heat map over a grey copy of the image."""
    stretched = (similarity - similarity.min()) / max(float(similarity.max() - similarity.min()), 1e-6)
    heat = heat_colors(upsample(stretched[..., None], target.size)[..., 0])
    grey = np.asarray(target.resized_image().convert("L"), dtype=np.float32)[..., None] / 255.0
    return to_image((1 - HEAT_WEIGHT) * grey + HEAT_WEIGHT * heat)


def mark(image: Image.Image, x: float, y: float) -> Image.Image:
    """A copy of `image` with a ring at (x, y)."""
    image = image.copy()
    radius = max(4, round(min(image.size) / 60))
    draw = ImageDraw.Draw(image)
    for width, color in ((radius // 2 + 2, "black"), (max(2, radius // 3), "cyan")):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=color, width=width)
    return image


def similarity_image(
    embedder: Embedder,
    image: str | os.PathLike | Image.Image,
    point: tuple[float, float],
    ref: str | os.PathLike | Image.Image | None = None,
    max_bytes: int | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """Heat map of the patch under `point` (x, y in pixels of `image`) against `ref` (default: `image`).

    Returns the picture (the marked query image beside the heat map when `ref` is another image, else
    the heat map over `image` with the point marked) and the [h, w] cosine similarities. Files are read
    within `max_bytes`, pictures within `dense.MAX_PICTURE_PIXELS`.
    """
    source = dense_map(embedder, image, max_bytes)
    row, col = source.cell_of(*point)
    target = dense_map(embedder, ref, max_bytes) if ref is not None else source
    similarity = cosine_map(source.features[row, col], target)
    scale_x, scale_y = source.size[0] / source.image.width, source.size[1] / source.image.height
    marked_xy = (point[0] * scale_x, point[1] * scale_y)
    heat = overlay(target, similarity)
    if ref is None:
        return mark(heat, *marked_xy), similarity
    query = mark(source.resized_image(), *marked_xy)
    height = heat.height
    query = query.resize((round(query.width * height / query.height), height), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (query.width + 8 + heat.width, height), "white")
    canvas.paste(query, (0, 0))
    canvas.paste(heat, (query.width + 8, 0))
    return canvas, similarity
