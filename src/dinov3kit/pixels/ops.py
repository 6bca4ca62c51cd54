"""Pixel operations of the processor on [C, H, W] / [N, C, H, W] tensors: center crop, fused rescale
and normalize, padding, grouping and batching."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


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
    image = floating(image)
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


def same_shape_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the images that share shape, dtype and device (processed together), in input order."""
    groups: dict[tuple, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tuple(tensor.shape), tensor.dtype, tensor.device), []).append(index)
    return list(groups.values())


def pad(pixels: list[torch.Tensor], pad_size: dict[str, int] | None) -> list[torch.Tensor]:
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


def collate(pixels: list[torch.Tensor], return_tensors: Any) -> Any:
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


def floating(image: torch.Tensor) -> torch.Tensor:
    return image if image.is_floating_point() else image.to(torch.float32)
