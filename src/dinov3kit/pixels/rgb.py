"""The one set of rules that turns images and arrays into RGB pixels, used by `load_image` and by the
image processor alike.

- Orientation: a PIL image is turned upright by its EXIF orientation tag.
- Channel axis of a 3-D array: the axis of 1, 3 or 4 entries (transformers' rule, also reading RGBA),
  then one of 2 (gray + alpha); a shape that reads both ways is channels first for the processor (as
  transformers) and for tensors, channels last for numpy arrays given to `load_image`.
- Channels: gray (1) is repeated; gray + alpha (2) and RGBA (4) are composited on white: PIL's
  `alpha_composite` for PIL images (what transformers does for them), torchvision's arithmetic for arrays
  and tensors (what transformers does for those).
- Depth: 16-bit values become the 8-bit range by value / 257 (65535 → 255), never clipped; PIL's "I"
  mode holding 16-bit PNG values counts as 16-bit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .decode import ImageLoadError, describe

#: PIL modes whose pixels do not fit 8 bits; read through numpy so that 16-bit values are scaled.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: Channel counts transformers recognises (gray, RGB, RGBA); gray + alpha (2) is tried after them.
COMMON_CHANNEL_COUNTS = (1, 3, 4)
SIXTEEN_BIT_DIVISOR = 257.0
_EXIF_ORIENTATION = 0x0112


def upright(image: Image.Image) -> Image.Image:
    """The image rotated/flipped as its EXIF orientation tag says (the image itself when there is none)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF block: keep the pixels as stored
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of an 8-bit PIL image: transparency composited on white with PIL's `alpha_composite`
    (as transformers does), every other mode through PIL's conversion. Wide modes go through
    `wide_pixels` instead."""
    if image.mode == "RGB":
        return image
    if has_alpha(image):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def wide_pixels(image: Image.Image) -> np.ndarray:
    """The values of a 16-bit or float PIL image as an [H, W] array: uint16 for 16-bit data (PIL reads
    16-bit PNGs as mode "I", int32: values above 255 mark them), float32 for mode "F"."""
    pixels = np.asarray(image)
    if pixels.dtype == np.int32 and pixels.size and int(pixels.min()) >= 0 and 255 < int(pixels.max()) <= 65535:
        return pixels.astype(np.uint16)
    return pixels


def channels_first(shape: tuple[int, ...], prefer_first: bool = True) -> bool | None:
    """Whether a 3-D image's channels come first (True), last (False), or cannot be told (None).

    An axis of 1, 3 or 4 entries is the channel axis (transformers' rule, also reading RGBA), then one of
    2 (gray + alpha); when both axes qualify, `prefer_first` decides (transformers: first).
    """
    for counts in (COMMON_CHANNEL_COUNTS, (2,)):
        first, last = shape[0] in counts, shape[-1] in counts
        if first and last:
            return prefer_first
        if first or last:
            return first
    return None


def as_chw(array: Any, name: str, layout: str | None = None, prefer_first: bool = True) -> torch.Tensor:
    """A [C, H, W] tensor view of an [H, W], [H, W, C] or [C, H, W] numpy array or tensor (a batch of
    one is unwrapped). `layout` "channels_first"/"channels_last" overrides `channels_first`, which is
    given `prefer_first` for shapes that read both ways."""
    tensor = from_numpy(array, name) if isinstance(array, np.ndarray) else array.detach()
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        if layout is None:
            first = channels_first(tuple(tensor.shape), prefer_first)
            if first is None:
                raise ImageLoadError(
                    name,
                    f"cannot tell the channel axis of shape {tuple(tensor.shape)}: expected 1 to 4 channels first or "
                    "last (pass input_data_format to the processor)",
                )
        elif layout in ("channels_first", "channels_last"):
            first = layout == "channels_first"
        else:
            raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {layout!r}")
        tensor = tensor if first else tensor.permute(2, 0, 1)
    else:
        raise ImageLoadError(
            name, f"expected one image (HW, HWC or CHW), got shape {tuple(tensor.shape)}; use load_images for a batch"
        )
    if tensor.numel() == 0:
        raise ImageLoadError(name, f"empty image (shape {tuple(tensor.shape)})")
    return tensor


def to_rgb_channels(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """[3, H, W] pixels from [C, H, W] ones: gray repeated, gray + alpha and RGBA composited on white
    (torchvision's arithmetic), RGB as is. uint8 stays uint8; 16-bit alpha images give floats in [0, 255]."""
    channels = tensor.shape[0]
    if channels == 1:
        return tensor.expand(3, -1, -1)
    if channels == 2:
        return composite_on_white(tensor[[0, 0, 0, 1]], name)
    if channels == 4:
        return composite_on_white(tensor, name)
    if channels == 3:
        return tensor
    raise ImageLoadError(name, f"{channels} channels: expected 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA)")


def composite_on_white(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """RGBA → RGB over white with torchvision's arithmetic (what transformers' `convert_to_rgb` does
    for uint8 and [0, 1] float arrays); 16-bit pixels give float values in [0, 255]."""
    if tensor.dtype == torch.uint8:
        scaled = tensor.to(torch.float32).mul_(1.0 / 255)
        rgb, alpha = scaled[:3], scaled[3:]
        return (rgb * alpha + (1 - alpha)).mul(256.0 - 1e-3).to(torch.uint8)
    if tensor.dtype == torch.uint16:
        scaled = tensor.to(torch.float32) / 65535.0
        rgb, alpha = scaled[:3], scaled[3:]
        return (rgb * alpha + (1 - alpha)) * 255.0
    if tensor.is_floating_point():
        if float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0:
            raise ImageLoadError(name, "RGBA float pixels must be in [0, 1] to composite the alpha channel")
        rgb, alpha = tensor[:3], tensor[3:]
        return rgb * alpha + (1 - alpha)
    raise ImageLoadError(name, f"RGBA pixels must be uint8, uint16 or float in [0, 1], got {tensor.dtype}")


def scale_sixteen_bit(tensor: torch.Tensor) -> torch.Tensor:
    """16-bit values as float32 in the 8-bit range: value / 257."""
    return tensor.to(torch.float32) / SIXTEEN_BIT_DIVISOR


def from_numpy(array: np.ndarray, name: str) -> torch.Tensor:
    """A tensor sharing the array's memory where torch allows it (PIL's read-only arrays are never written)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        try:
            return torch.from_numpy(array)
        except TypeError as error:
            raise ImageLoadError(name, f"unsupported pixel dtype {array.dtype}") from error


def to_uint8(pixels: torch.Tensor, name: str) -> torch.Tensor:
    """8-bit pixels for a picture: bool → 0/255, 16-bit (uint16, or integers above 255) → value / 257,
    float in [0, 1] → × 255, float in [0, 255] kept (rounded)."""
    if pixels.dtype == torch.uint8:
        return pixels
    if pixels.dtype == torch.bool:
        return pixels.to(torch.uint8) * 255
    if pixels.is_floating_point():
        pixels = pixels.to(torch.float64) if pixels.dtype == torch.float64 else pixels.to(torch.float32)
        if not torch.isfinite(pixels).all():
            raise ImageLoadError(name, "pixel values contain NaN or infinity")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 255:
            raise ImageLoadError(
                name, f"float pixels in [{low:.3g}, {high:.3g}]: expected [0, 1] or [0, 255] (not normalised values)"
            )
        scaled = pixels * 255.0 if high <= 1.0 else pixels
        return scaled.round().clamp(0, 255).to(torch.uint8)
    if pixels.is_complex():
        raise ImageLoadError(name, f"unsupported pixel dtype {pixels.dtype}")
    wide = pixels.to(torch.int64)
    low, high = int(wide.min()), int(wide.max())
    if low < 0:
        raise ImageLoadError(name, f"negative pixel values (min {low}); pass raw 8- or 16-bit pixels")
    if high > 65535:
        raise ImageLoadError(name, f"pixel values up to {high} do not fit 16 bits")
    if pixels.dtype == torch.uint16 or high > 255:
        return scale_sixteen_bit(wide).round().to(torch.uint8)
    return wide.to(torch.uint8)


def array_to_image(array: Any, name: str | None = None) -> Image.Image:
    """RGB PIL image from a numpy array or torch tensor (HW, HWC or CHW, 1 to 4 channels; see the
    module docstring for the rules)."""
    name = name or describe(array)
    tensor = as_chw(array, name, prefer_first=isinstance(array, torch.Tensor))  # numpy arrays are mostly HWC
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    rgb = to_rgb_channels(to_uint8(tensor, name), name)
    return Image.fromarray(np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()))


def to_rgb(image: Image.Image, name: str | None = None) -> Image.Image:
    """RGB version of any PIL image: wide modes scaled (`wide_pixels`), others through `pil_to_rgb`."""
    if image.mode in WIDE_MODES:
        return array_to_image(wide_pixels(image), name or describe(image))
    return pil_to_rgb(image)
