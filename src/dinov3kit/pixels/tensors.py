"""Processor inputs → [C, H, W] tensors, views of the input's memory where possible.

transformers' rules where it defines them (flattening nested lists, the channel axis of arrays, RGB
conversion of PIL images), with the shared conversions of `rgb.py`: 16-bit → /257, alpha on white.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .decode import ImageLoadError, checked, describe
from .pillow import raw_pixels, rgbx_view
from .rgb import WIDE_MODES, as_chw, from_numpy, pil_to_rgb, scale_sixteen_bit, to_rgb_channels, upright, wide_pixels


def flatten(images: Any) -> list[Any]:
    """A flat list of single images (transformers' `make_flat_list_of_images`, plus paths, bytes, URLs)."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        flat: list[Any] = []
        for item in images:
            if isinstance(item, (list, tuple)) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4):
                flat.extend(item)
            else:
                flat.append(item)
        if not flat:
            raise ValueError("no images given (an empty list)")
        return flat
    return [images]


def pil_to_tensor(image: Image.Image, do_convert_rgb: bool | None) -> torch.Tensor:
    """[C, H, W] pixels of a PIL image (upright), RGB unless `do_convert_rgb=False`; a view of Pillow's
    own memory for RGB images where Pillow allows it."""
    name = describe(image)
    image = upright(checked(image, name))
    if image.mode in WIDE_MODES:
        return array_to_tensor(wide_pixels(image), do_convert_rgb, "channels_last", name)
    if do_convert_rgb is not False and image.mode != "RGB":
        image = pil_to_rgb(image)
    rgbx = rgbx_view(image)
    if rgbx is not None:  # Pillow's memory itself, no copy; the padding byte is never used
        return from_numpy(rgbx, name)[..., :3].permute(2, 0, 1)
    tensor = from_numpy(raw_pixels(image), name)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def array_to_tensor(
    array: Any, do_convert_rgb: bool | None, input_data_format: Any, name: str | None = None
) -> torch.Tensor:
    """[C, H, W] view of an array or tensor, with the channel rule and RGB conversion of `rgb.py`
    (`do_convert_rgb=None` converts images that do not have 3 channels, as transformers' option)."""
    name = name or describe(array)
    if isinstance(array, (np.ndarray, torch.Tensor)) and array.ndim not in (2, 3):
        raise ImageLoadError(
            name, f"expected an image of 2 or 3 dimensions (HW, HWC or CHW), got shape {tuple(array.shape)}"
        )
    tensor = as_chw(array, name, getattr(input_data_format, "value", input_data_format))
    channels = tensor.shape[0]
    if channels in (1, 2, 4) and (do_convert_rgb or (do_convert_rgb is None and channels != 3)):
        tensor = to_rgb_channels(tensor, name)
    return normalize_dtype(tensor, name)


def normalize_dtype(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 and float32/64 as given; uint16 → float in [0, 255] (value / 257); bool → 0/255; other
    integers and half floats → float32 of the same values."""
    if tensor.dtype in (torch.uint8, torch.float32, torch.float64):
        return tensor
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8) * 255
    if tensor.dtype == torch.uint16:
        return scale_sixteen_bit(tensor)
    if not tensor.is_complex():
        return tensor.to(torch.float32)
    raise ImageLoadError(name, f"unsupported pixel dtype {tensor.dtype}")
