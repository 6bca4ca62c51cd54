"""Output sizes and resample modes of transformers' DINOv3 image processor, plus the aspect-preserving
size of `keep_aspect_ratio` (sides rounded to whole patches)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: PIL resampling constant → resize mode (transformers maps PIL constants to torchvision modes).
RESAMPLE_MODES = {0: "nearest-exact", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: torchvision `InterpolationMode` values → PIL constants.
_INTERPOLATION_NAMES = {"nearest": 0, "nearest-exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
VALID_SIZE_KEYS = (
    {"height", "width"},
    {"shortest_edge"},
    {"shortest_edge", "longest_edge"},
    {"longest_edge"},
    {"max_height", "max_width"},
    {"min_pixels", "max_pixels"},
)


def transformers_resize_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """Output size of transformers' torchvision-backend `resize` for each form of `size`."""
    keys = {key for key, value in size.items() if value is not None}
    if keys == {"shortest_edge", "longest_edge"}:
        return _size_with_aspect_ratio(height, width, size["shortest_edge"], size["longest_edge"])
    if keys == {"shortest_edge"}:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if keys == {"max_height", "max_width"}:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if keys == {"height", "width"}:
        return size["height"], size["width"]
    raise ValueError(
        f"size must have keys 'height' and 'width', 'shortest_edge' (and 'longest_edge'), or 'max_height' and "
        f"'max_width'; got {size}"
    )


def aspect_preserving_size(height: int, width: int, size: dict[str, int], patch_size: int) -> tuple[int, int]:
    """One scale factor for both sides (see `DINOv3ViTImageProcessor.output_size`), each side rounded to
    the nearest multiple of `patch_size` (at least one patch)."""
    if "shortest_edge" in size:
        scale = size["shortest_edge"] / min(height, width)
        if size.get("longest_edge"):
            scale = min(scale, size["longest_edge"] / max(height, width))
    elif "height" in size and "width" in size:
        scale = min(size["height"] / height, size["width"] / width)
    elif "max_height" in size and "max_width" in size:
        scale = min(size["max_height"] / height, size["max_width"] / width)
    else:
        raise ValueError(
            f"keep_aspect_ratio needs size with 'shortest_edge', 'height'/'width' or 'max_height'/'max_width', got {size}"
        )

    def snap(side: int) -> int:
        return max(patch_size, int(side * scale / patch_size + 0.5) * patch_size)

    return snap(height), snap(width)


def _size_with_aspect_ratio(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """transformers' `get_size_with_aspect_ratio` (shortest edge `size`, longest at most `max_size`)."""
    raw_size = None
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        raw_size = max_size * short / long
        size = int(round(raw_size))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return (int(raw_size * height / width) if raw_size is not None else int(size * height / width)), size
    return size, (int(raw_size * width / height) if raw_size is not None else int(size * width / height))


def resize_mode(resample: Any) -> str:
    code = resample_code(resample)
    mode = RESAMPLE_MODES.get(code)
    if mode in ("box", "hamming"):
        raise ValueError(
            f"resample {mode.upper()} is not supported (nor by transformers' processor); "
            "use BILINEAR, BICUBIC, LANCZOS or NEAREST"
        )
    if mode is None:
        raise ValueError(f"unknown resample {resample!r}; use a PIL.Image.Resampling constant")
    if getattr(resample, "value", None) == "nearest":  # torchvision's legacy NEAREST
        return "nearest"
    return mode


def resample_code(resample: Any) -> int | None:
    value = getattr(resample, "value", resample)
    if isinstance(value, str):
        return _INTERPOLATION_NAMES.get(value.lower())
    return int(value) if isinstance(value, (int, np.integer)) else None


def size_dict(size: Any, name: str, default_to_square: bool) -> dict[str, int]:
    if hasattr(size, "__dataclass_fields__") or (hasattr(size, "keys") and not isinstance(size, dict)):
        size = {key: value for key, value in dict(size).items() if value is not None}
    if isinstance(size, int):
        size = {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or set(size) not in VALID_SIZE_KEYS:
        raise ValueError(f"{name} must be an int, (height, width) or a dict with keys in {VALID_SIZE_KEYS}, got {size!r}")
    return dict(size)
