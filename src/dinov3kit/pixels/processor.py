"""`DINOv3ViTImageProcessor`: transformers' DINOv3 image processor (same options, names, defaults and
numbers), on plain torch tensors and faster.

Order of operations, as transformers' DINOv3 processor: rescale → resize (antialiased) → center crop →
normalize. Resize and crop are linear and commute with the elementwise rescale, so here they run first
(on uint8 pixels, see `resize.py`) and rescale and normalize run as one fused pass over the small
result; outputs agree with transformers to float32 rounding (max |diff| ~1e-6).

Deliberate differences from transformers, all where transformers fails or silently ignores an option:
- `do_convert_rgb=None` (the default) converts images that are not already RGB (grayscale, palette,
  RGBA, CMYK, 16-bit); transformers leaves them as they are and the model then fails on 4 channels.
  `do_convert_rgb=False` keeps the channels as given.
- PIL images are turned upright by their EXIF orientation, as `load_image` does; every conversion to RGB
  (channel axis, alpha on white, 16-bit) follows `rgb.py`, the rules `load_image` uses too.
- 16-bit inputs are scaled to the 8-bit range (value / 257) instead of being divided by 255.
- `do_pad` pads (bottom/right, zeros, after normalisation) to `pad_size` or to the largest image of the
  call; `data_format="channels_last"` returns HWC. transformers' DINOv3 processor ignores both.
- With `return_tensors="pt"`/`"np"`, images of different sizes come back as a list of [1, C, h, w]
  tensors (ready for the model one by one) instead of an error; equal sizes are stacked [B, C, H, W].
- `keep_aspect_ratio=True` (not in transformers) serves dense features: each image is resized keeping
  its aspect ratio and each side is rounded to a multiple of `patch_size` (see `output_size`).
- Resample modes BOX and HAMMING raise a clear error (torchvision cannot run them on tensors either).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..fileio import write_bytes_atomic
from ..source import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME, HubOptions, Source, resolve_source
from ..variants import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATION
from ..weights.loading import read_config
from .decode import ImageLoadError
from .load import load_image
from .ops import center_crop, collate, pad, rescale_and_normalize, same_shape_groups
from .options import DEFAULTS, OWN_DEFAULTS, SERVICE_KEYS, standardize, validate
from .resize import resize_many
from .sizes import aspect_preserving_size, resize_mode, transformers_resize_size
from .tensors import array_to_tensor, flatten, pil_to_tensor

logger = logging.getLogger(__name__)

#: transformers' name for this processor, written into saved configs so that transformers reads them.
TRANSFORMERS_CLASS_NAME = "DINOv3ViTImageProcessor"
#: Inputs decoded and processed together (more share batched operations; fewer bound the memory).
CHUNK = 16


class BatchFeature(dict):
    """The processor's output: a dict (`out["pixel_values"]`) with attribute access
    (`out.pixel_values`) and `.to(device or dtype)`, like transformers' `BatchFeature`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move tensors (`.to("cuda")`) and/or cast floating ones (`.to(torch.bfloat16)`)."""
        device = kwargs.get("device", next((a for a in args if not isinstance(a, torch.dtype)), None))

        def move(value: Any) -> Any:
            if isinstance(value, list):
                return [move(item) for item in value]
            if not isinstance(value, torch.Tensor):
                return value
            if value.is_floating_point():
                return value.to(*args, **kwargs)
            return value.to(device) if device is not None else value

        return BatchFeature({key: move(value) for key, value in self.items()})


class DINOv3ViTImageProcessor:
    """Image processor of DINOv3 models (ViT and ConvNeXt), option for option transformers'
    `DINOv3ViTImageProcessor`, plus `keep_aspect_ratio` and `patch_size` for dense features.

    `processor(images, return_tensors="pt")` → `BatchFeature` with "pixel_values" [B, 3, H, W].
    `images`: one image or a list (or list of lists) of PIL images, numpy arrays, torch tensors, file
    paths, bytes or URLs; a 4-D array or tensor is a batch. Bad inputs raise `ImageLoadError` naming
    the input and its position.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, **options: Any) -> None:
        for key in SERVICE_KEYS:
            options.pop(key, None)
        self.extra = {key: options.pop(key) for key in list(options) if key not in DEFAULTS and key not in OWN_DEFAULTS}
        settings = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(OWN_DEFAULTS)}
        settings.update({key: value for key, value in options.items() if value is not None})
        for key, value in standardize(settings).items():
            setattr(self, key, value)

    # --- processing -----------------------------------------------------------------------------
    def __call__(self, images: Any, **options: Any) -> BatchFeature:
        return self.preprocess(images, **options)

    def preprocess(self, images: Any, **options: Any) -> BatchFeature:
        """Process `images` with this processor's settings, overridden by `options` for this call."""
        unknown = sorted(set(options) - set(DEFAULTS) - set(OWN_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown processor options {unknown}; valid options: {sorted({**DEFAULTS, **OWN_DEFAULTS})}")
        opts = standardize({**self.settings(), **options})
        validate(opts)
        device = torch.device(opts["device"]) if opts["device"] is not None else None
        inputs = flatten(images)
        pixels: list[torch.Tensor] = []
        for start in range(0, len(inputs), CHUNK):  # bounds the memory held by decoded inputs
            tensors = self._to_tensors(inputs[start : start + CHUNK], start, opts)
            if device is not None:
                tensors = [tensor.to(device) for tensor in tensors]
            chunk: list[torch.Tensor] = [None] * len(tensors)  # type: ignore[list-item]
            for indices in same_shape_groups(tensors):
                for index, pixel_values in zip(indices, self.transform([tensors[i] for i in indices], opts)):
                    chunk[index] = pixel_values
            pixels.extend(chunk)
        if opts["do_pad"]:
            pixels = pad(pixels, opts["pad_size"])
        if getattr(opts["data_format"], "value", opts["data_format"]) == "channels_last":
            pixels = [image.permute(1, 2, 0) for image in pixels]
        return BatchFeature(pixel_values=collate(pixels, opts["return_tensors"]))

    def transform(self, images: list[torch.Tensor], opts: dict[str, Any]) -> list[torch.Tensor]:
        """transformers' rescale → resize → center crop → normalize of [C, H, W] images of one shape
        (standardized options), in order. Resize and crop commute with the elementwise, linear
        rescale, so they run first, and rescale and normalize run as one pass over the small result."""
        if opts["do_resize"]:
            height, width = images[0].shape[-2:]
            size = self.output_size(height, width, opts["size"], opts["keep_aspect_ratio"], opts["patch_size"])
            groups = resize_many(images, size, resize_mode(opts["resample"]))
        else:
            groups = [image[None] for image in images]
        out = []
        for group in groups:
            if opts["do_center_crop"]:
                group = center_crop(group, opts["crop_size"]["height"], opts["crop_size"]["width"])
            out.extend(
                rescale_and_normalize(
                    group,
                    opts["rescale_factor"] if opts["do_rescale"] else None,
                    (opts["image_mean"], opts["image_std"]) if opts["do_normalize"] else None,
                )
            )
        return out

    def output_size(
        self,
        height: int,
        width: int,
        size: dict[str, int] | None = None,
        keep_aspect_ratio: bool | None = None,
        patch_size: int | None = None,
    ) -> tuple[int, int]:
        """(height, width) after resizing an image of `height` x `width` (defaults: this processor's settings).

        Fixed modes follow transformers: {"height", "width"}, {"shortest_edge"} (+ "longest_edge"),
        {"max_height", "max_width"}. With `keep_aspect_ratio`, the image is scaled by one factor (shorter
        side to "shortest_edge", capped by "longest_edge"; or fitting inside height x width /
        max_height x max_width) and each side is rounded to the nearest multiple of `patch_size`.
        """
        size = self.size if size is None else size
        keep_aspect_ratio = self.keep_aspect_ratio if keep_aspect_ratio is None else keep_aspect_ratio
        patch_size = self.patch_size if patch_size is None else patch_size
        if keep_aspect_ratio:
            return aspect_preserving_size(height, width, size, patch_size)
        return transformers_resize_size(height, width, size)

    def _to_tensors(self, images: list[Any], first_index: int, opts: dict[str, Any]) -> list[torch.Tensor]:
        """`to_tensor` of each input (numbered from `first_index` in errors); files, bytes and URLs are
        read by a thread per torch thread (downloads and PIL's decoders release the GIL)."""

        def convert(item: tuple[int, Any]) -> torch.Tensor:
            index, image = item
            try:
                return self.to_tensor(image, opts["do_convert_rgb"], opts["input_data_format"])
            except ImageLoadError as error:
                raise error.at(index) from error

        items = list(enumerate(images, start=first_index))
        encoded = sum(not isinstance(image, (Image.Image, np.ndarray, torch.Tensor)) for image in images)
        workers = min(encoded, torch.get_num_threads())
        if workers < 2:
            return [convert(item) for item in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(convert, items))

    def to_tensor(self, image: Any, do_convert_rgb: bool | None = None, input_data_format: Any = None) -> torch.Tensor:
        """One input as a [C, H, W] tensor (a view of the pixels where possible), RGB unless
        `do_convert_rgb=False`. Paths, bytes and URLs are read with `load_image`."""
        if not isinstance(image, (Image.Image, np.ndarray, torch.Tensor)):
            image = load_image(image)
        if isinstance(image, Image.Image):
            return pil_to_tensor(image, do_convert_rgb)
        return array_to_tensor(image, do_convert_rgb, input_data_format)

    # --- settings, saving and loading ----------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Every option and its current value."""
        return {key: copy.deepcopy(getattr(self, key)) for key in (*DEFAULTS, *OWN_DEFAULTS)}

    def to_dict(self) -> dict[str, Any]:
        """The options as transformers writes them (unset options left out), plus ours when set."""
        out = {key: value for key, value in self.settings().items() if key in DEFAULTS and value is not None}
        if out.get("default_to_square") is True:  # transformers does not write it either
            del out["default_to_square"]
        out.update({key: getattr(self, key) for key in OWN_DEFAULTS if self.keep_aspect_ratio})
        out.update(copy.deepcopy(self.extra))
        for key in ("image_mean", "image_std"):
            if isinstance(out.get(key), tuple):
                out[key] = list(out[key])
        if "device" in out:
            out["device"] = str(out["device"])
        out["image_processor_type"] = TRANSFORMERS_CLASS_NAME
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> list[Path]:
        """Write `preprocessor_config.json` (which transformers' `AutoImageProcessor` reads) into `folder`."""
        path = Path(folder) / IMAGE_PROCESSOR_NAME
        write_bytes_atomic(path, self.to_json_string().encode("utf-8"))
        return [path]

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> DINOv3ViTImageProcessor:
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> DINOv3ViTImageProcessor:
        return cls.from_dict(_read_processor_json(Path(path)))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike | Source,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        **overrides: Any,
    ) -> DINOv3ViTImageProcessor:
        """The processor of a hub id, a folder, a `preprocessor_config.json`, or a Meta `.pth` file.

        Without a processor config (a folder saved by `model.save_pretrained`, a Meta checkpoint), the
        processor is built for the model's config (`processor_for_model`). SAT-493M checkpoints (known
        from the config or the name) get the SAT-493M statistics instead of the ImageNet ones that
        transformers' configs carry; `image_mean`/`image_std` in `overrides` always win.
        """
        source = resolve_source(source, HubOptions(revision, token, cache_dir, local_files_only))
        path = source.processor_file
        data = _read_processor_json(path) if path is not None else None
        if data is None:
            processor = processor_for_model(read_config(source), **overrides)
        else:
            processor = cls.from_dict(data, **overrides)
        user_stats = "image_mean" in overrides or "image_std" in overrides
        imagenet_stats = _same_stats(processor, IMAGENET_MEAN, IMAGENET_STD)
        if source.dataset == "sat493m" and not user_stats and imagenet_stats:
            processor.image_mean, processor.image_std = NORMALIZATION["sat493m"]
            logger.warning(
                "%s is a SAT-493M checkpoint: normalising with its statistics mean=%s std=%s instead of the ImageNet "
                "ones in its processor config (pass image_mean/image_std to choose)",
                source.name, processor.image_mean, processor.image_std,
            )
        return processor

    @classmethod
    def for_model(cls, model_or_config: Any, **overrides: Any) -> DINOv3ViTImageProcessor:
        return processor_for_model(model_or_config, **overrides)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


DINOv3ViTImageProcessorFast = DINOv3ViTImageProcessor


def processor_for_model(model_or_config: Any, **overrides: Any) -> DINOv3ViTImageProcessor:
    """The processor for a model (or its config): SAT-493M statistics when
    `config.extra["dinov3_pretrain_dataset"] == "sat493m"`, else ImageNet's; `patch_size` from the config
    (32, the total stride, for ConvNeXt)."""
    config = getattr(model_or_config, "config", model_or_config)
    dataset = getattr(config, "extra", {}).get("dinov3_pretrain_dataset", "lvd1689m")
    mean, std = NORMALIZATION.get(dataset, NORMALIZATION["lvd1689m"])
    convnext = getattr(config, "model_type", "") == "dinov3_convnext"
    patch_size = getattr(config, "patch_size", None) or (32 if convnext else 16)
    return DINOv3ViTImageProcessor(**{"image_mean": mean, "image_std": std, "patch_size": patch_size, **overrides})


def _same_stats(processor: DINOv3ViTImageProcessor, mean: tuple, std: tuple) -> bool:
    return np.allclose(processor.image_mean, mean) and np.allclose(processor.image_std, std)


def _read_processor_json(path: Path) -> dict[str, Any] | None:
    """The processor options saved in `path` (None for a `processor_config.json` without image options)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON processor config ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a processor config must be a JSON object")
    return data.get("image_processor") if path.name == PROCESSOR_NAME else data
