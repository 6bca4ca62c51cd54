"""Any image-like input → an upright RGB PIL image (`load_image`), or many of them (`load_images`).

Accepted inputs: PIL images, numpy arrays and torch tensors (HW, HWC or CHW; uint8, uint16, other
integers, bool or float), file paths (`str` or `pathlib.Path`; regular files only), `bytes`, binary file
objects, `data:` URIs and http(s) URLs (with a timeout). At most `max_bytes` are read per input (256 MB
by default, or $DINOV3KIT_MAX_BYTES); PIL's decompression-bomb limit stays on.

Conversions follow `rgb.py` (the processor uses the same rules): EXIF orientation applied;
transparency composited on white; 16-bit values scaled to 8 bits (value / 257), not clipped; float
arrays read as [0, 1] when their maximum is at most 1, else as [0, 255].
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import DEFAULT_TIMEOUT
from .decode import ImageLoadError, checked, decode, describe
from .rgb import array_to_image, to_rgb, upright


class LoadedImages(list):
    """The images `load_images` could read, in input order; `skipped` holds an `ImageLoadError` (with
    its `index`) for each input that was left out."""

    def __init__(self, images: Iterable[Image.Image] = (), skipped: list[ImageLoadError] | None = None) -> None:
        super().__init__(images)
        self.skipped = skipped or []


def load_image(
    source: Any, *, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int | None = None
) -> Image.Image:
    """An upright RGB PIL image from any accepted input (see the module docstring).

    `timeout` (seconds) applies to URLs, `max_bytes` to files, URLs and file objects (None: 256 MB, or
    $DINOV3KIT_MAX_BYTES; see `fileio.default_max_bytes`). Raises
    `ImageLoadError` naming the input when it is missing, not a regular file, too large, empty,
    truncated, corrupt, of an unsupported type, or has no pixels.
    """
    name = describe(source)
    if isinstance(source, Image.Image):
        return to_rgb(upright(checked(source, name)), name)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return array_to_image(source, name)
    return to_rgb(upright(decode(source, timeout=timeout, max_bytes=max_bytes)), name)


def load_images(
    sources: Iterable[Any],
    *,
    skip_errors: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_bytes: int | None = None,
) -> LoadedImages:
    """`load_image` for each input. With `skip_errors`, bad inputs are left out and reported in
    `result.skipped`; otherwise the first bad input raises an `ImageLoadError` that names its position."""
    if isinstance(sources, (str, bytes, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        sources = [sources]
    result = LoadedImages()
    for index, source in enumerate(sources):
        try:
            result.append(load_image(source, timeout=timeout, max_bytes=max_bytes))
        except ImageLoadError as error:
            if not skip_errors:
                raise error.at(index) from error
            result.skipped.append(error.at(index))
    return result
