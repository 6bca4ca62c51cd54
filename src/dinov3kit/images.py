"""Any image-like input → an upright RGB PIL image: `load_image`, `load_images` and the error they raise.

The public face of `dinov3kit.pixels` for image loading (see `pixels/load.py` for the accepted inputs
and `pixels/rgb.py` for the conversion rules).
"""

from .pixels import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT
from .pixels.decode import ImageLoadError, checked, decode, describe
from .pixels.load import LoadedImages, load_image, load_images
from .pixels.pillow import rgbx_view
from .pixels.rgb import WIDE_MODES, array_to_image, has_alpha, to_rgb, upright

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "WIDE_MODES",
    "ImageLoadError",
    "LoadedImages",
    "array_to_image",
    "checked",
    "decode",
    "describe",
    "has_alpha",
    "load_image",
    "load_images",
    "rgbx_view",
    "to_rgb",
    "upright",
]
