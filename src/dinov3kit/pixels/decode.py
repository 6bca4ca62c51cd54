"""Encoded inputs → fully decoded PIL images, with one error type that names the bad input.

Inputs: file paths (`str` or `pathlib.Path`), `bytes`, binary file objects, `data:` URIs and http(s)
URLs. Reads are bounded: only regular files are read (a FIFO, a device or a symlink to one is refused
at once instead of hanging or reading forever), and at most `max_bytes` per input. PIL's
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) stays on. Files are read by
`fileio.read_regular_file`, the one bounded reader every tool uses.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..fileio import FileRefusedError, default_max_bytes, read_regular_file
from . import DEFAULT_TIMEOUT

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

    def at(self, index: int) -> ImageLoadError:
        """The same error, naming the input's position in a batch."""
        return type(self)(self.source, self.reason, index)


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


def decode(source: Any, *, timeout: float | None = DEFAULT_TIMEOUT, max_bytes: int | None = None) -> Image.Image:
    """The fully decoded PIL image (original mode, EXIF orientation not applied) of a path, URL, data
    URI, bytes or file object. `timeout` (seconds) applies to URLs; `max_bytes` to every input read
    (None: `fileio.default_max_bytes()`, 256 MB unless $DINOV3KIT_MAX_BYTES says otherwise)."""
    name = describe(source)
    max_bytes = default_max_bytes() if max_bytes is None else max_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        data = _download(source, name, timeout, max_bytes)
    elif isinstance(source, str) and source.startswith("data:"):
        data = _data_uri(source, name)
    elif isinstance(source, (str, os.PathLike)):
        data = read_file(Path(source), name, max_bytes)
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise ImageLoadError(name, "the file object must be opened in binary mode ('rb')")
        if len(data) > max_bytes:
            raise ImageLoadError(name, f"more than {max_bytes} bytes (max_bytes); refused")
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


def read_file(path: Path, name: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (symlinks to one are followed), at most `max_bytes` of them (None:
    `fileio.default_max_bytes()`); a FIFO, a device or a folder is refused before a byte is read."""
    path = path.expanduser()
    try:
        if path.is_dir():
            raise ImageLoadError(name, "is a folder, not an image file")
        return read_regular_file(path, max_bytes)
    except FileRefusedError as error:
        raise ImageLoadError(name, str(error).removeprefix(f"{path}: ")) from error
    except FileNotFoundError as error:
        raise ImageLoadError(name, "no such file") from error
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
