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
- PIL images are turned upright by their EXIF orientation, as `load_image` does.
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
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from . import images as imageio
from .images import ImageLoadError, describe
from .resize import resize_many
from .variants import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATION

logger = logging.getLogger(__name__)

IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"
#: transformers' name for this processor, written into saved configs so that transformers reads them.
TRANSFORMERS_CLASS_NAME = "DINOv3ViTImageProcessor"

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
#: Inputs decoded and processed together (more share batched operations; fewer bound the memory).
CHUNK = 16
#: Keys of saved configs that name classes rather than options.
SERVICE_KEYS = ("image_processor_type", "processor_class", "feature_extractor_type", "_processor_class", "auto_map")


class BatchFeature(dict):
    """The processor's output: a dict (`out["pixel_values"]`) with attribute access
    (`out.pixel_values`) and `.to(device or dtype)`, like transformers' `BatchFeature`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
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
        for key, value in _standardize(settings).items():
            setattr(self, key, value)

    # --- processing -----------------------------------------------------------------------------
    def __call__(self, images: Any, **options: Any) -> BatchFeature:
        return self.preprocess(images, **options)

    def preprocess(self, images: Any, **options: Any) -> BatchFeature:
        """Process `images` with this processor's settings, overridden by `options` for this call."""
        unknown = sorted(set(options) - set(DEFAULTS) - set(OWN_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown processor options {unknown}; valid options: {sorted({**DEFAULTS, **OWN_DEFAULTS})}")
        opts = _standardize({**self.settings(), **options})
        _validate(opts)
        device = torch.device(opts["device"]) if opts["device"] is not None else None
        inputs = _flatten(images)
        pixels: list[torch.Tensor] = []
        for start in range(0, len(inputs), CHUNK):  # bounds the memory held by decoded inputs
            tensors = self._to_tensors(inputs[start : start + CHUNK], start, opts)
            if device is not None:
                tensors = [tensor.to(device) for tensor in tensors]
            chunk: list[torch.Tensor] = [None] * len(tensors)  # type: ignore[list-item]
            for indices in _same_shape_groups(tensors):
                for index, pixel_values in zip(indices, self.transform([tensors[i] for i in indices], opts)):
                    chunk[index] = pixel_values
            pixels.extend(chunk)
        if opts["do_pad"]:
            pixels = _pad(pixels, opts["pad_size"])
        if getattr(opts["data_format"], "value", opts["data_format"]) == "channels_last":
            pixels = [image.permute(1, 2, 0) for image in pixels]
        return BatchFeature(pixel_values=_collate(pixels, opts["return_tensors"]))

    def transform(self, images: list[torch.Tensor], opts: dict[str, Any]) -> list[torch.Tensor]:
        """transformers' rescale → resize → center crop → normalize of [C, H, W] images of one shape
        (standardized options), in order. Resize and crop commute with the elementwise, linear
        rescale, so they run first, and rescale and normalize run as one pass over the small result."""
        if opts["do_resize"]:
            height, width = images[0].shape[-2:]
            size = self.output_size(height, width, opts["size"], opts["keep_aspect_ratio"], opts["patch_size"])
            groups = resize_many(images, size, _resize_mode(opts["resample"]))
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
            image = imageio.load_image(image)
        if isinstance(image, Image.Image):
            return _pil_to_tensor(image, do_convert_rgb)
        return _array_to_tensor(image, do_convert_rgb, input_data_format)

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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json_string(), encoding="utf-8")
        return [path]

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "DINOv3ViTImageProcessor":
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "DINOv3ViTImageProcessor":
        return cls.from_dict(_read_processor_json(Path(path)))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        **overrides: Any,
    ) -> "DINOv3ViTImageProcessor":
        """The processor of a hub id, a folder, a `preprocessor_config.json`, or a Meta `.pth` file.

        Without a processor config (a folder saved by `model.save_pretrained`, a Meta checkpoint), the
        processor is built for the model's config (`processor_for_model`). SAT-493M checkpoints (known
        from the config or the name) get the SAT-493M statistics instead of the ImageNet ones that
        transformers' configs carry; `image_mean`/`image_std` in `overrides` always win.
        """
        from .weights.resolve import HubOptions

        hub = HubOptions(revision, token, cache_dir, local_files_only)
        data = _find_processor_config(source, hub)
        if data is None:
            from .auto import AutoConfig

            config = AutoConfig.from_pretrained(
                source, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
            )
            processor = processor_for_model(config, **overrides)
        else:
            processor = cls.from_dict(data, **overrides)
        user_stats = "image_mean" in overrides or "image_std" in overrides
        imagenet_stats = _same_stats(processor, IMAGENET_MEAN, IMAGENET_STD)
        if _dataset_of_source(source) == "sat493m" and not user_stats and imagenet_stats:
            processor.image_mean, processor.image_std = NORMALIZATION["sat493m"]
            logger.warning(
                "%s is a SAT-493M checkpoint: normalising with its statistics mean=%s std=%s instead of the ImageNet "
                "ones in its processor config (pass image_mean/image_std to choose)",
                source, processor.image_mean, processor.image_std,
            )
        return processor

    @classmethod
    def for_model(cls, model_or_config: Any, **overrides: Any) -> "DINOv3ViTImageProcessor":
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


# --- sizes ------------------------------------------------------------------------------------
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


# --- pixel operations -------------------------------------------------------------------------
def center_crop(image: torch.Tensor, crop_height: int, crop_width: int) -> torch.Tensor:
    """transformers' center crop: zero-pad (centred) where the crop is larger than the image, then crop."""
    height, width = image.shape[-2:]
    if crop_height > height or crop_width > width:
        pad_w, pad_h = max(crop_width - width, 0), max(crop_height - height, 0)
        image = torch.nn.functional.pad(image, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = image.shape[-2:]
    top, left = int((height - crop_height) / 2.0), int((width - crop_width) / 2.0)
    return image[..., top : top + crop_height, left : left + crop_width]


def rescale_and_normalize(
    image: torch.Tensor,
    rescale_factor: float | None,
    mean_std: tuple[float | Iterable[float], float | Iterable[float]] | None,
) -> torch.Tensor:
    """(image · rescale_factor − mean) / std per channel as one fused pass into a contiguous [C, H, W]
    float tensor (either step skipped when None); the image unchanged when both are None."""
    if rescale_factor is None and mean_std is None:
        return image.contiguous()
    image = _floating(image)
    out = torch.empty(image.shape, dtype=image.dtype, device=image.device)
    scale = 1.0 if rescale_factor is None else rescale_factor
    if mean_std is None:
        return torch.mul(image, scale, out=out)
    mean, std = (torch.as_tensor(value, dtype=image.dtype, device=image.device) for value in mean_std)
    channels = image.shape[-3]
    for name, value in (("image_mean", mean), ("image_std", std)):
        if value.ndim and value.numel() != channels:
            raise ValueError(f"{name} has {value.numel()} values but the image has {channels} channels")
    if (std == 0).any():
        raise ValueError("image_std contains 0")
    if mean.ndim:
        mean = mean.view(-1, 1, 1)
    if std.ndim:
        std = std.view(-1, 1, 1)
    return torch.addcmul(-mean / std, image, scale / std, out=out)


def _same_shape_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the images that share shape, dtype and device (processed together), in input order."""
    groups: dict[tuple, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tuple(tensor.shape), tensor.dtype, tensor.device), []).append(index)
    return list(groups.values())


def _pad(pixels: list[torch.Tensor], pad_size: dict[str, int] | None) -> list[torch.Tensor]:
    if pad_size is not None:
        if not (pad_size.get("height") and pad_size.get("width")):
            raise ValueError(f"pad_size must have 'height' and 'width', got {pad_size}")
        target = (pad_size["height"], pad_size["width"])
    else:
        target = (max(p.shape[-2] for p in pixels), max(p.shape[-1] for p in pixels))
    out = []
    for image in pixels:
        extra_h, extra_w = target[0] - image.shape[-2], target[1] - image.shape[-1]
        if extra_h < 0 or extra_w < 0:
            raise ValueError(f"pad_size {target} is smaller than an image of size {tuple(image.shape[-2:])}")
        out.append(torch.nn.functional.pad(image, (0, extra_w, 0, extra_h)) if extra_h or extra_w else image)
    return out


def _collate(pixels: list[torch.Tensor], return_tensors: Any) -> Any:
    kind = getattr(return_tensors, "value", return_tensors)
    if kind is None:
        return pixels
    if kind not in ("pt", "np"):
        raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
    if len({tuple(p.shape) for p in pixels}) == 1:
        batch = torch.stack(pixels) if len(pixels) > 1 else pixels[0].unsqueeze(0)
        return batch if kind == "pt" else batch.cpu().numpy()
    items = [p.unsqueeze(0) for p in pixels]
    return items if kind == "pt" else [item.cpu().numpy() for item in items]


# --- inputs → tensors -------------------------------------------------------------------------
def _flatten(images: Any) -> list[Any]:
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


def _pil_to_tensor(image: Image.Image, do_convert_rgb: bool | None) -> torch.Tensor:
    name = describe(image)
    image = imageio.upright(imageio.checked(image, name))
    if image.mode in imageio.WIDE_MODES:
        pixels = np.asarray(image)
        if pixels.dtype == np.int32 and pixels.size and int(pixels.max()) > 255:  # 16-bit PNG read as "I"
            pixels = pixels.astype(np.uint16)
        return _array_to_tensor(pixels, do_convert_rgb, "channels_last", name)
    if do_convert_rgb is not False and image.mode != "RGB":
        image = imageio.to_rgb(image, name)
    rgbx = imageio.rgbx_view(image)
    if rgbx is not None:  # Pillow's memory itself, no copy; the padding byte is never used
        return _from_numpy(rgbx, name)[..., :3].permute(2, 0, 1)
    tensor = _from_numpy(_pil_pixels(image), name)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _pil_pixels(image: Image.Image) -> np.ndarray:
    """`np.asarray(image)` with one copy instead of two for RGB and L images: Pillow's `tobytes` packs
    64 KB chunks and joins them; one call of its raw encoder packs everything into one buffer (a third
    less time on 12 MP photos). Falls back to `np.asarray` on anything unexpected."""
    channels = {"RGB": 3, "L": 1}.get(image.mode)
    if channels is None:
        return np.asarray(image)
    try:
        image.load()
        encoder = Image._getencoder(image.mode, "raw", image.mode)
        encoder.setimage(image.im, (0, 0, *image.size))
        size = image.width * image.height * channels
        _, status, data = encoder.encode(size + 1)
    except Exception:  # a Pillow without these internals: the public route
        return np.asarray(image)
    if status != 1 or len(data) != size:
        return np.asarray(image)
    shape = (image.height, image.width, channels) if channels > 1 else (image.height, image.width)
    return np.frombuffer(data, np.uint8).reshape(shape)


def _array_to_tensor(
    array: Any, do_convert_rgb: bool | None, input_data_format: Any, name: str | None = None
) -> torch.Tensor:
    """[C, H, W] view of an array or tensor, with transformers' channel inference and RGB conversion."""
    name = name or describe(array)
    tensor = _from_numpy(array, name) if isinstance(array, np.ndarray) else array.detach()
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        layout = getattr(input_data_format, "value", input_data_format) or _infer_layout(tensor.shape, name)
        if layout not in ("channels_first", "channels_last"):
            raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}")
        tensor = tensor.permute(2, 0, 1) if layout == "channels_last" else tensor
    else:
        raise ImageLoadError(
            name, f"expected an image of 2 or 3 dimensions (HW, HWC or CHW), got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0:
        raise ImageLoadError(name, f"empty image (shape {tuple(tensor.shape)})")
    channels = tensor.shape[0]
    if do_convert_rgb or (do_convert_rgb is None and channels != 3):
        if channels == 1:
            tensor = tensor.expand(3, -1, -1)
        elif channels == 4:
            tensor = _composite_on_white(tensor, name)
    return _normalize_dtype(tensor, name)


def _from_numpy(array: np.ndarray, name: str) -> torch.Tensor:
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


def _infer_layout(shape: tuple[int, ...], name: str) -> str:
    """transformers' rule: channels first when the first axis has 1, 3 or 4 entries, else last."""
    if shape[0] in (1, 3, 4):
        return "channels_first"
    if shape[-1] in (1, 3, 4):
        return "channels_last"
    raise ImageLoadError(name, f"cannot tell the channel axis of shape {tuple(shape)}; pass input_data_format")


def _normalize_dtype(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 and float32/64 as given; uint16 → float in [0, 255] (value / 257); bool → 0/255; other
    integers and half floats → float32 of the same values."""
    if tensor.dtype in (torch.uint8, torch.float32, torch.float64):
        return tensor
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8) * 255
    if tensor.dtype == torch.uint16:
        return tensor.to(torch.float32) / 257.0
    if not tensor.is_complex():
        return tensor.to(torch.float32)
    raise ImageLoadError(name, f"unsupported pixel dtype {tensor.dtype}")


def _composite_on_white(tensor: torch.Tensor, name: str) -> torch.Tensor:
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


def _floating(image: torch.Tensor) -> torch.Tensor:
    return image if image.is_floating_point() else image.to(torch.float32)


def _resize_mode(resample: Any) -> str:
    code = _resample_code(resample)
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


def _resample_code(resample: Any) -> int | None:
    value = getattr(resample, "value", resample)
    if isinstance(value, str):
        return _INTERPOLATION_NAMES.get(value.lower())
    return int(value) if isinstance(value, (int, np.integer)) else None


# --- options ----------------------------------------------------------------------------------
def _standardize(settings: dict[str, Any]) -> dict[str, Any]:
    """transformers' `_standardize_kwargs`: sizes as dicts, mean/std as tuples, resample as an int."""
    out = dict(settings)
    square = out.get("default_to_square", True)
    for key in ("size", "crop_size", "pad_size"):
        if out.get(key) is not None:
            out[key] = _size_dict(out[key], key, square if key == "size" else True)
    for key in ("image_mean", "image_std"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    code = _resample_code(out.get("resample"))
    if code is not None and not isinstance(getattr(out["resample"], "value", None), str):
        out["resample"] = code
    return out


def _size_dict(size: Any, name: str, default_to_square: bool) -> dict[str, int]:
    if hasattr(size, "__dataclass_fields__") or (hasattr(size, "keys") and not isinstance(size, dict)):
        size = {key: value for key, value in dict(size).items() if value is not None}
    if isinstance(size, int):
        size = {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or set(size) not in VALID_SIZE_KEYS:
        raise ValueError(f"{name} must be an int, (height, width) or a dict with keys in {VALID_SIZE_KEYS}, got {size!r}")
    return dict(size)


def _validate(opts: dict[str, Any]) -> None:
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


def _same_stats(processor: DINOv3ViTImageProcessor, mean: tuple, std: tuple) -> bool:
    return np.allclose(processor.image_mean, mean) and np.allclose(processor.image_std, std)


# --- finding saved configs --------------------------------------------------------------------
def _read_processor_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON processor config ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a processor config must be a JSON object")
    return data.get("image_processor") if path.name == PROCESSOR_NAME else data


def _find_processor_config(source: str | os.PathLike, hub) -> dict[str, Any] | None:
    """The processor options stored at `source`, or None when it has none (a model-only folder, a Meta
    `.pth` file, a hub repository without a processor config)."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read_processor_json(path) if path.suffix == ".json" and path.name != "config.json" else None
    if path.is_dir():
        for name in (IMAGE_PROCESSOR_NAME, PROCESSOR_NAME):
            data = _read_processor_json(path / name) if (path / name).is_file() else None
            if data is not None:
                return data
        return None
    from .weights.resolve import hub_file, is_hub_id

    if not is_hub_id(source):
        raise ValueError(f"{source}: no such file or folder, and not a Hugging Face hub id (owner/name)")
    for name in (IMAGE_PROCESSOR_NAME, PROCESSOR_NAME):
        try:
            data = _read_processor_json(hub_file(source, name, hub, missing_ok=True))
        except FileNotFoundError:
            continue
        if data is not None:
            return data
    return None


def _dataset_of_source(source: str | os.PathLike) -> str | None:
    """The pretraining dataset named by a checkpoint's path or hub id, or stored in a local config.json."""
    match = re.search(r"(lvd1689m|sat493m)", str(source).lower())
    if match:
        return match.group(1)
    path = Path(source).expanduser()
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("dinov3_pretrain_dataset")
        except (OSError, ValueError):
            return None
    return None
