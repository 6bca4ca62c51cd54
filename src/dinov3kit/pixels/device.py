"""Device-side pixels for JPEG batches: decode on the GPU (nvJPEG through torchvision) and resize,
rescale and normalise with torch ops on the tensors' device, with the CPU processor's arithmetic.

`decode_jpegs(datas, device)`   encoded images → uint8 [3, H, W] tensors (or the error, per item)
`preprocess_on_device(images, processor)`   those tensors → [B, 3, H, W] float32 `pixel_values`
`device_decode_available(device)`   whether `decode_jpegs` decodes on `device` (CUDA + nvJPEG)

Decoding on CUDA uses `torchvision.io.decode_jpeg(list, device="cuda")` in one batch when torchvision
is installed (an optional extra, imported lazily); anything else (other formats, CMYK or otherwise
undecodable JPEGs, no torchvision, CPU devices) goes through `load_image`, the CPU loader, one image at a
time, and a bad file gives its `ImageLoadError` in its slot instead of stopping the batch. nvJPEG's IDCT
is not libjpeg's: its pixels may differ from Pillow's by a few levels, so the CPU loader is the
reference and parity below is stated on the same decoded pixels.

`preprocess_on_device` follows `DINOv3ViTImageProcessor.transform`: antialiased resize in float32
(`F.interpolate(..., antialias=True)`, which `resize.py` reproduces on the CPU; lanczos, which
`F.interpolate` lacks, by the same separable filter taps as dense matrices), center crop, then the fused
rescale + normalise of `ops.py`. On the same uint8 pixels it matches the CPU processor to ≤ 1e-5
(tests/test_pixels_device.py).

Not done yet (needs a GPU session, issue 21 "End to end"):
- wiring into `tools/embed.py`: read file bytes on the loader threads, `decode_jpegs` per batch on the
  embedder's device, `preprocess_on_device` with `Embedder.processor`, and the per-item errors recorded
  as the CPU path records them today; only when `device_decode_available(device)`;
- checking on CUDA that nvJPEG output with `apply_exif_orientation` matches `load_image`'s orientation,
  and measuring `benchmarks/bench_embed.py --device cuda` (target: ViT-B embed of 640x480 JPEGs from
  local disk ≥ 70% of model-only throughput).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .load import load_image
from .ops import center_crop, rescale_and_normalize
from .options import standardize, validate
from .resize import filter_taps
from .sizes import resize_mode
from .tensors import pil_to_tensor

#: Bytes that start every JPEG (SOI marker followed by another marker).
JPEG_MAGIC = b"\xff\xd8\xff"


@functools.lru_cache(maxsize=1)
def _torchvision_io() -> Any:
    """torchvision.io, or None when torchvision is not installed or cannot be imported."""
    try:
        from torchvision import io
    except Exception:  # noqa: BLE001 (an optional extra: any import failure means "not available")
        return None
    return io


def device_decode_available(device: torch.device | str) -> bool:
    """True when `decode_jpegs` decodes JPEGs on `device` itself: a CUDA device and torchvision with nvJPEG."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    io = _torchvision_io()
    return io is not None and hasattr(io, "decode_jpeg") and _has_nvjpeg()


def _has_nvjpeg() -> bool:
    """Whether torchvision was built with nvJPEG (its image extension exposes the CUDA decoder)."""
    try:
        return hasattr(torch.ops.image, "decode_jpegs_cuda")
    except Exception:  # noqa: BLE001 (no image extension loaded: no nvJPEG)
        return False


def cpu_decode(data: bytes) -> torch.Tensor:
    """The CPU loader's pixels of encoded `data`: `load_image` (upright RGB), as a contiguous uint8 [3, H, W]."""

    return pil_to_tensor(load_image(data), None).contiguous()


def decode_jpegs(datas: list[bytes], device: torch.device | str) -> list[torch.Tensor | Exception]:
    """Decode encoded images to uint8 [3, H, W] RGB tensors, JPEGs on `device` in one nvJPEG batch when
    `device_decode_available(device)`, everything else with the CPU loader (then moved to `device`).
    Each slot holds the image's tensor or the exception that decoding it raised; nothing raises for one
    bad input."""
    device = torch.device(device)
    out: list[torch.Tensor | Exception | None] = [None] * len(datas)
    on_device = [i for i, data in enumerate(datas) if bytes(data[:3]) == JPEG_MAGIC] if device_decode_available(device) else []
    if on_device:
        for index, result in zip(on_device, _nvjpeg_batch([datas[i] for i in on_device], device)):
            out[index] = result
    for index, data in enumerate(datas):
        if out[index] is not None and not isinstance(out[index], Exception):
            continue
        try:
            out[index] = cpu_decode(data).to(device)
        except Exception as error:  # noqa: BLE001 (reported in its slot, as the batch goes on)
            out[index] = error
    return out  # type: ignore[return-value]


def _nvjpeg_batch(datas: list[bytes], device: torch.device) -> list[torch.Tensor | Exception]:
    """nvJPEG decode of a batch; on a batch failure each image is retried alone, so that one corrupt
    file costs only itself (its slot then holds the error, and the CPU loader gets a try)."""
    io = _torchvision_io()
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]

    def decode(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        images = io.decode_jpeg(batch, mode=io.ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        for image in images:
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"nvJPEG gave a {tuple(image.shape)} image, expected [3, H, W]")
        return images

    try:
        return list(decode(encoded))
    except Exception:  # noqa: BLE001 (which image failed is found by decoding each alone)
        results: list[torch.Tensor | Exception] = []
        for one in encoded:
            try:
                results.append(decode([one])[0])
            except Exception as error:  # noqa: BLE001 (the image's slot holds its error)
                results.append(error)
        return results


def preprocess_on_device(images: list[torch.Tensor], processor: Any) -> torch.Tensor:
    """`processor`'s pixel_values [B, 3, H, W] float32 of uint8 [3, H, W] `images`, computed on their
    device with the CPU processor's arithmetic (resize mode, antialias, crop, rescale, normalise).
    All images must end at one size (a fixed `size`, or a center crop), as `Embedder.processor` gives."""
    if not images:
        raise ValueError("preprocess_on_device needs at least one image")
    opts = standardize(processor.settings())
    validate(opts)
    if opts["do_pad"]:
        raise ValueError("preprocess_on_device does not pad; use the CPU processor for do_pad=True")
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        if image.ndim != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image {index}: expected a uint8 [C, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
        groups.setdefault(tuple(image.shape), []).append(index)
    out: list[torch.Tensor | None] = [None] * len(images)
    for shape, indices in groups.items():
        batch = torch.stack([images[i] for i in indices])
        if opts["do_resize"]:
            size = processor.output_size(shape[1], shape[2], opts["size"], opts["keep_aspect_ratio"], opts["patch_size"])
            batch = resize_batch(batch, size, resize_mode(opts["resample"]))
        if opts["do_center_crop"]:
            batch = center_crop(batch, opts["crop_size"]["height"], opts["crop_size"]["width"])
        pixels = rescale_and_normalize(
            batch,
            opts["rescale_factor"] if opts["do_rescale"] else None,
            (opts["image_mean"], opts["image_std"]) if opts["do_normalize"] else None,
        )
        for position, index in enumerate(indices):
            out[index] = pixels[position]
    sizes = {tuple(p.shape) for p in out}  # type: ignore[union-attr]
    if len(sizes) != 1:
        raise ValueError(f"images end at different sizes {sorted(sizes)}; use a fixed size or a center crop")
    return torch.stack(out).float()  # type: ignore[arg-type]


def resize_batch(batch: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """uint8 [N, C, H, W] → float32 [N, C, h, w] as `resize.resize` computes it (PyTorch's antialiased
    interpolation in float32), on the batch's device."""
    if tuple(size) == tuple(batch.shape[-2:]):
        return batch.float()
    if mode in ("nearest", "nearest-exact"):
        return torch.nn.functional.interpolate(batch, size=tuple(size), mode=mode).float()
    if mode == "lanczos":
        rows = _dense_taps(batch.shape[-2], size[0], mode, batch.device)
        cols = _dense_taps(batch.shape[-1], size[1], mode, batch.device)
        return rows @ batch.float() @ cols.T
    return torch.nn.functional.interpolate(batch.float(), size=tuple(size), mode=mode, antialias=True, align_corners=False)


def _dense_taps(in_size: int, out_size: int, mode: str, device: torch.device) -> torch.Tensor:
    """Dense float32 [out_size, in_size] matrix of the antialiased filter taps of one axis."""
    weights, first, count = filter_taps(in_size, out_size, mode)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float32)
    for row in range(out_size):
        matrix[row, first[row] : first[row] + count[row]] = torch.from_numpy(weights[row, : count[row]])
    return matrix.to(device)
