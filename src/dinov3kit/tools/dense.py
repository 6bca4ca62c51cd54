"""Dense patch features of whole images (any aspect ratio) and their drawing at image resolution."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .runtime import Embedder
from .sources import load_image_file

#: Pixels of a dense picture at most (the model input: shortest side at the resolution, aspect kept);
#: bounds the memory of pca and similarity (a 1200x3 image at 768 would need a 307200x768 input).
MAX_PICTURE_PIXELS = 1 << 23


@dataclass
class DenseMap:
    """An image and its patch features [h, w, D] (float32) computed at the model input size `size` (W, H)."""

    image: Image.Image
    features: torch.Tensor
    size: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.features.shape[:2])

    def resized_image(self) -> Image.Image:
        """The image at the model input size, on which maps are drawn."""
        return self.image.resize(self.size, Image.Resampling.BICUBIC)

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        """(row, column) of the patch under pixel (x, y) of the original image."""
        rows, cols = self.grid
        if not (0 <= x < self.image.width and 0 <= y < self.image.height):
            raise ValueError(f"point ({x:g}, {y:g}) is outside the {self.image.width}x{self.image.height} image")
        return min(rows - 1, int(y / self.image.height * rows)), min(cols - 1, int(x / self.image.width * cols))


def dense_map(embedder: Embedder, image: str | os.PathLike | Image.Image, max_bytes: int | None = None) -> DenseMap:
    """Patch features of `image`, keeping its aspect ratio, shortest side at the embedder's resolution.

    Refuses (ValueError) an image whose model input would exceed `MAX_PICTURE_PIXELS` (a very long,
    thin image) before anything large is allocated."""
    name = getattr(image, "filename", None) or "the image" if isinstance(image, Image.Image) else str(image)
    image = load_image_file(image, max_bytes)
    height, width = embedder.dense_processor.output_size(image.height, image.width)
    if height * width > MAX_PICTURE_PIXELS:
        raise ValueError(
            f"{name}: {image.width}x{image.height} pixels at resolution {embedder.resolution} would be a {width}x{height} "
            f"picture ({height * width / 1e6:.0f} megapixels), over the limit of {MAX_PICTURE_PIXELS / 1e6:.1f}; "
            "crop the image or use a lower --resolution"
        )
    pixels = embedder.preprocess_dense(image)
    features = embedder(pixels).patches[0].cpu()
    return DenseMap(image, features, (pixels.shape[-1], pixels.shape[-2]))


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [h, w, C] map bilinearly resized to `size` (W, H)."""
    tensor = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(tensor, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).numpy()


def to_image(rgb: np.ndarray) -> Image.Image:
    """A PIL image from a [H, W, 3] float array in [0, 1]."""
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")
