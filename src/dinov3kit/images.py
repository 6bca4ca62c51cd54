"""Any image-like input → an upright RGB PIL image, with one error type that names the bad input.

Accepted inputs: PIL images, numpy arrays and torch tensors (HW, HWC or CHW; uint8, uint16, other
integers, bool or float), file paths (`str` or `pathlib.Path`), `bytes`, file objects, `data:` URIs and
http(s) URLs (with a timeout and a size limit). PIL's decompression-bomb limit stays on.

Conversions: the EXIF orientation is applied; transparency (RGBA, LA, palette with a transparent colour)
is composited on white; grayscale, palette, CMYK and YCbCr go through PIL's RGB conversion; 16-bit
images are scaled to 8 bits (value / 257), not clipped; float arrays are read as [0, 1] when their
maximum is at most 1, else as [0, 255].
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import io
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 100 * 2**20
#: PIL modes whose pixels do not fit 8 bits; read through numpy so that 16-bit values are scaled.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_EXIF_ORIENTATION = 0x0112
_CHUNK = 1 << 20


class ImageLoadError(ValueError):
    """An input could not be turned into an image. The message names the input (and its position in a
    batch) and says what was wrong."""

    def __init__(self, source: str, reason: str, index: int | None = None) -> None:
        self.source, self.reason, self.index = source, reason, index
        where = f"image {index} ({source})" if index is not None else source
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return type(self), (self.source, self.reason, self.index)

    def at(self, index: int) -> "ImageLoadError":
        """The same error, naming the input's position in a batch."""
        return type(self)(self.source, self.reason, index)


class LoadedImages(list):
    """The images `load_images` could read, in input order; `skipped` holds an `ImageLoadError` (with
    its `index`) for each input that was left out."""

    def __init__(self, images: Iterable[Image.Image] = (), skipped: list[ImageLoadError] | None = None) -> None:
        super().__init__(images)
        self.skipped = skipped or []


def describe(source: Any) -> str:
    """A short, readable name for an input, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return repr(text if len(text) <= 120 else text[:100] + "...")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<numpy array {tuple(source.shape)} {source.dtype}>"
    if isinstance(source, torch.Tensor):
        return f"<torch tensor {tuple(source.shape)} {source.dtype}>"
    return f"<{type(source).__qualname__} object>"


def load_image(
    source: Any, *, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """An upright RGB PIL image from any accepted input (see the module docstring).

    `timeout` (seconds) and `max_bytes` apply to URLs. Raises `ImageLoadError` naming the input when it
    is missing, empty, truncated, corrupt, of an unsupported type, or has no pixels.
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
    max_bytes: int = DEFAULT_MAX_BYTES,
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


# --- decoding ---------------------------------------------------------------------------------
def decode(source: Any, *, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """The fully decoded PIL image (original mode, EXIF orientation not applied) of a path, URL, data
    URI, bytes or file object."""
    name = describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        data = _download(source, name, timeout, max_bytes)
    elif isinstance(source, str) and source.startswith("data:"):
        data = _data_uri(source, name)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source), name)
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise ImageLoadError(name, "the file object must be opened in binary mode ('rb')")
    else:
        raise ImageLoadError(
            name,
            "unsupported input type; pass a PIL image, a numpy array, a torch tensor, a file path, bytes or "
            "an http(s) URL",
        )
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise ImageLoadError(name, "not an image file of a format PIL can read (corrupt or another file type)") from error
    except Image.DecompressionBombError as error:
        raise _bomb(name, error) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(name, f"truncated or corrupt image data ({error})") from error
    return checked(image, name)


def checked(image: Image.Image, name: str | None = None) -> Image.Image:
    """`image` with its pixels decoded (PIL opens files lazily), refusing truncated or corrupt data and
    images without pixels with an `ImageLoadError`."""
    name = name or describe(image)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise _bomb(name, error) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(name, f"truncated or corrupt image data ({error})") from error
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(name, f"empty image ({image.width}x{image.height} pixels)")
    return image


def _bomb(name: str, error: Exception) -> ImageLoadError:
    return ImageLoadError(
        name, f"refused as a possible decompression bomb ({error}); if you trust this file, raise PIL.Image.MAX_IMAGE_PIXELS"
    )


def _read_file(path: Path, name: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except FileNotFoundError as error:
        raise ImageLoadError(name, "no such file") from error
    except IsADirectoryError as error:
        raise ImageLoadError(name, "is a folder, not an image file") from error
    except OSError as error:
        raise ImageLoadError(name, f"cannot read the file ({error.strerror or error})") from error


def _download(url: str, name: str, timeout: float | None, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "dinov3kit"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ImageLoadError(
                    name, f"the server announces {int(length)} bytes, over the {max_bytes}-byte limit (max_bytes)"
                )
            chunks, size = [], 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageLoadError(name, f"download exceeds the {max_bytes}-byte limit (max_bytes)")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        raise ImageLoadError(name, f"HTTP error {error.code} ({error.reason})") from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise ImageLoadError(name, f"no answer within the {timeout} s timeout") from error
        raise ImageLoadError(name, f"cannot download ({error.reason})") from error
    except TimeoutError as error:
        raise ImageLoadError(name, f"no answer within the {timeout} s timeout") from error
    except OSError as error:
        raise ImageLoadError(name, f"download failed ({error})") from error


def _data_uri(uri: str, name: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise ImageLoadError(name, "only base64 data URIs (data:image/...;base64,...) are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageLoadError(name, f"invalid base64 payload ({error})") from error


# --- conversion -------------------------------------------------------------------------------
def upright(image: Image.Image) -> Image.Image:
    """The image rotated/flipped as its EXIF orientation tag says (the image itself when there is none)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF block: keep the pixels as stored
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def to_rgb(image: Image.Image, name: str | None = None) -> Image.Image:
    """RGB version of a PIL image: transparency composited on white (as transformers does), 16-bit and
    float modes scaled through `array_to_image`, every other mode through PIL's conversion."""
    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        return array_to_image(np.asarray(image), name or describe(image))
    if has_alpha(image):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def array_to_image(array: Any, name: str | None = None) -> Image.Image:
    """RGB PIL image from a numpy array or torch tensor: HW, HWC or CHW with 1 (gray), 2 (gray + alpha),
    3 (RGB) or 4 (RGBA) channels. Numpy arrays are read as HWC and tensors as CHW when both fit."""
    name = name or describe(array)
    pixels = to_uint8(_as_numpy(array, name), name)
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim == 3:
        channels_first = _channels_first(pixels.shape, prefer_first=isinstance(array, torch.Tensor))
        if channels_first is None:
            raise ImageLoadError(
                name, f"cannot tell the channel axis of shape {pixels.shape}: expected 1 to 4 channels first or last"
            )
        if channels_first:
            pixels = np.moveaxis(pixels, 0, -1)
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    elif pixels.ndim != 2:
        raise ImageLoadError(
            name, f"expected one image (HW, HWC or CHW), got {pixels.ndim} dimensions; use load_images for a batch"
        )
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), name)


def to_uint8(pixels: np.ndarray, name: str) -> np.ndarray:
    """8-bit pixels: bool → 0/255, 16-bit → value / 257, float in [0, 1] → × 255, float in [0, 255] kept."""
    if pixels.size == 0:
        raise ImageLoadError(name, f"empty image (shape {pixels.shape})")
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype.kind in "iu":
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0:
            raise ImageLoadError(name, f"negative pixel values (min {low}); pass raw 8- or 16-bit pixels")
        if pixels.dtype == np.uint16 or 255 < high <= 65535:
            return np.round(pixels / 257.0).astype(np.uint8)
        if high > 65535:
            raise ImageLoadError(name, f"pixel values up to {high} do not fit 16 bits")
        return pixels.astype(np.uint8)
    if pixels.dtype.kind == "f":
        if not np.isfinite(pixels).all():
            raise ImageLoadError(name, "pixel values contain NaN or infinity")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 255:
            raise ImageLoadError(
                name, f"float pixels in [{low:.3g}, {high:.3g}]: expected [0, 1] or [0, 255] (not normalised values)"
            )
        scaled = pixels * 255.0 if high <= 1.0 else pixels
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    raise ImageLoadError(name, f"unsupported pixel dtype {pixels.dtype}")


def _channels_first(shape: tuple[int, ...], prefer_first: bool) -> bool | None:
    first, last = shape[0] in (1, 2, 3, 4), shape[-1] in (1, 2, 3, 4)
    if first and last:
        return prefer_first
    return True if first else False if last else None


def _as_numpy(array: Any, name: str) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    tensor = array.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    if tensor.dtype in (torch.uint16, torch.uint32):
        tensor = tensor.to(torch.int64)
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as error:
        raise ImageLoadError(name, f"unsupported tensor dtype {tensor.dtype}") from error


class _ArrowArray(ctypes.Structure):
    """The Arrow C data interface's ArrowArray struct (what Pillow's `__arrow_c_array__` exports)."""


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _ExportedPixels:
    """Keeps Pillow's export (and so the image memory) alive for as long as a numpy view of it exists."""

    def __init__(self, capsule: Any, address: int, shape: tuple[int, ...]) -> None:
        self.capsule = capsule
        self.__array_interface__ = {"shape": shape, "typestr": "|u1", "data": (address, True), "version": 3}


@functools.cache
def _capsule_get_pointer() -> Any:
    """CPython's PyCapsule_GetPointer with its signature declared (once, on first use)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get


def _capsule_pointer(capsule: Any) -> int:
    return _capsule_get_pointer()(capsule, b"arrow_array")


def rgbx_view(image: Image.Image) -> np.ndarray | None:
    """Pillow's own memory of an RGB image as a read-only [H, W, 4] uint8 array (the 4th byte is padding),
    without a copy, through its Arrow export (Pillow >= 11.2); None where that is not possible (older
    Pillow, other modes, images stored in several blocks). Copying the pixels out costs about as much
    as everything else done to a 640x480 photo before it reaches the model."""
    export = getattr(image, "__arrow_c_array__", None)
    if export is None or image.mode != "RGB" or not (image.width and image.height):
        return None
    try:
        image.load()
        _, capsule = export()
        array = _ArrowArray.from_address(_capsule_pointer(capsule))
        if array.n_children != 1 or array.offset or array.length != image.width * image.height:
            return None
        values = array.children[0].contents
        if values.offset or values.n_buffers != 2 or values.length != 4 * array.length:
            return None
        address = values.buffers[1]
    except Exception:  # an export this code does not know: the caller copies instead
        return None
    return np.asarray(_ExportedPixels(capsule, address, (image.height, image.width, 4)))
