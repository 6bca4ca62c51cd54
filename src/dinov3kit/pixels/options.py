"""The processor's options: transformers' names and DINOv3 defaults, standardisation and validation."""

from __future__ import annotations

from typing import Any

from ..variants import IMAGENET_MEAN, IMAGENET_STD
from .sizes import resample_code, size_dict

#: Options of transformers' processor (its `ImagesKwargs`) and their defaults for DINOv3.
DEFAULTS: dict[str, Any] = {
    "do_convert_rgb": None,
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "default_to_square": True,
    "crop_size": None,
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "do_pad": None,
    "pad_size": None,
    "do_center_crop": None,
    "data_format": None,
    "input_data_format": None,
    "device": None,
    "return_tensors": None,
    "disable_grouping": None,
    "image_seq_length": None,
}
#: Options of ours, written to saved configs only when set.
OWN_DEFAULTS: dict[str, Any] = {"keep_aspect_ratio": False, "patch_size": 16}
#: Keys of saved configs that name classes rather than options.
SERVICE_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type", "_processor_class", "auto_map")


def standardize(settings: dict[str, Any]) -> dict[str, Any]:
    """transformers' `_standardize_kwargs`: sizes as dicts, mean/std as tuples, resample as an int."""
    out = dict(settings)
    square = out.get("default_to_square", True)
    for key in ("size", "crop_size", "pad_size"):
        if out.get(key) is not None:
            out[key] = size_dict(out[key], key, square if key == "size" else True)
    for key in ("image_mean", "image_std"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    code = resample_code(out.get("resample"))
    if code is not None and not isinstance(getattr(out["resample"], "value", None), str):
        out["resample"] = code
    return out


def validate(opts: dict[str, Any]) -> None:
    """transformers' `validate_preprocess_arguments`, with messages that say what to set."""
    if opts["do_rescale"] and opts["rescale_factor"] is None:
        raise ValueError("do_rescale=True needs rescale_factor")
    if opts["do_normalize"] and (opts["image_mean"] is None or opts["image_std"] is None):
        raise ValueError("do_normalize=True needs image_mean and image_std")
    if opts["do_center_crop"] and opts["crop_size"] is None:
        raise ValueError("do_center_crop=True needs crop_size")
    if opts["do_resize"] and (opts["size"] is None or opts["resample"] is None):
        raise ValueError("do_resize=True needs size and resample")
    if opts["keep_aspect_ratio"] and int(opts["patch_size"]) < 1:
        raise ValueError(f"patch_size must be a positive int, got {opts['patch_size']!r}")
