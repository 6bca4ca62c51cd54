"""Device-side pixels (pixels/device.py): parity with the CPU processor on the same decoded pixels, the
capability check and the CPU fallback of `decode_jpegs` (run on CPU tensors; the nvJPEG path needs a GPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3kit.images import ImageLoadError, load_image
from dinov3kit.pixels.device import (
    decode_jpegs,
    device_decode_available,
    preprocess_on_device,
)
from dinov3kit.pixels.tensors import pil_to_tensor
from dinov3kit.processing import DINOv3ViTImageProcessor

MEAN, STD = (0.43, 0.51, 0.37), (0.21, 0.27, 0.19)


def _jpeg(height: int, width: int, seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.BICUBIC)  # smooth, so JPEG keeps detail
    noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, fmt)
    return buffer.getvalue()


def _cpu_pixels(processor: DINOv3ViTImageProcessor, datas: list[bytes]) -> torch.Tensor:
    return torch.cat([processor([load_image(d)], return_tensors="pt")["pixel_values"] for d in datas])


SIZES = [(37, 53), (480, 640), (301, 97), (224, 224)]  # upscale, downscale, odd aspect, unchanged


@pytest.mark.parametrize("resample", [2, 3, 1, 0])  # bilinear, bicubic, lanczos, nearest
def test_parity_with_cpu_processor(resample: int) -> None:
    processor = DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=MEAN, image_std=STD, resample=resample)
    datas = [_jpeg(h, w, seed) for seed, (h, w) in enumerate(SIZES)] + [_jpeg(480, 640, 9)]
    images = decode_jpegs(datas, "cpu")
    got = preprocess_on_device(images, processor)
    want = _cpu_pixels(processor, datas)
    assert got.shape == (len(datas), 3, 224, 224) and got.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-5


def test_parity_with_center_crop_and_shortest_edge() -> None:
    processor = DINOv3ViTImageProcessor(
        size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224}, image_mean=MEAN, image_std=STD
    )
    datas = [_jpeg(h, w, seed) for seed, (h, w) in enumerate([(480, 640), (301, 297), (640, 480)])]
    got = preprocess_on_device(decode_jpegs(datas, "cpu"), processor)
    assert (got - _cpu_pixels(processor, datas)).abs().max().item() <= 1e-5


def test_parity_tolerance_catches_wrong_statistics_and_missing_antialias() -> None:
    """The 1e-5 bound above fails for a wrong mean or std, or a resize without antialiasing."""
    processor = DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=MEAN, image_std=STD)
    datas = [_jpeg(480, 640, 3)]
    images = decode_jpegs(datas, "cpu")
    want = _cpu_pixels(processor, datas)
    for wrong in ({"image_mean": (0.5, 0.51, 0.37)}, {"image_std": (0.21, 0.27, 0.2)}):
        other = DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, **{"image_mean": MEAN, "image_std": STD, **wrong})
        assert (preprocess_on_device(images, other) - want).abs().max().item() > 1e-3
    plain = torch.nn.functional.interpolate(images[0][None].float(), size=(224, 224), mode="bilinear", antialias=False)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert ((plain / 255 - mean) / std - want).abs().max().item() > 1e-3


def test_capability_false_on_cpu() -> None:
    assert device_decode_available("cpu") is False
    assert device_decode_available(torch.device("cpu")) is False


def test_fallback_gives_cpu_loader_pixels_and_errors_per_item() -> None:
    datas = [_jpeg(61, 83, 1), b"not an image at all", _jpeg(40, 30, 2, fmt="PNG"), _jpeg(64, 64, 3)[:100]]
    out = decode_jpegs(datas, "cpu")
    assert len(out) == 4
    for index in (0, 2):
        expected = pil_to_tensor(load_image(datas[index]), None)
        assert out[index].dtype == torch.uint8 and out[index].shape[0] == 3
        assert torch.equal(out[index], expected)
    assert isinstance(out[1], ImageLoadError) and isinstance(out[3], ImageLoadError)


def test_preprocess_rejects_bad_inputs() -> None:
    processor = DINOv3ViTImageProcessor(size={"shortest_edge": 224})
    with pytest.raises(ValueError, match="different sizes"):
        preprocess_on_device([torch.zeros(3, 100, 200, dtype=torch.uint8), torch.zeros(3, 100, 300, dtype=torch.uint8)], processor)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_on_device([torch.zeros(3, 10, 10)], processor)
    with pytest.raises(ValueError, match="at least one"):
        preprocess_on_device([], processor)


def _rotated_jpeg(height: int, width: int, seed: int) -> bytes:
    """A JPEG whose EXIF orientation (6: rotate 90° clockwise) the decoders must apply."""
    image = Image.open(io.BytesIO(_jpeg(height, width, seed)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG and device preprocessing need a CUDA device")
def test_cuda_decode_and_preprocess() -> None:
    """On a GPU: nvJPEG pixels close to the CPU loader's (same size and orientation; IDCTs differ by a few
    levels), bad files per item, and preprocessing on CUDA tensors equal to the CPU processor's ≤ 1e-5."""
    assert device_decode_available("cuda"), "torchvision with nvJPEG is expected on the GPU machine"
    datas = [_jpeg(480, 640, 1), _rotated_jpeg(120, 200, 2), b"\xff\xd8\xff broken", _jpeg(40, 30, 3, fmt="PNG")]
    out = decode_jpegs(datas, "cuda")
    for index in (0, 1, 3):
        expected = pil_to_tensor(load_image(datas[index]), None)
        assert out[index].is_cuda and out[index].shape == expected.shape
        assert (out[index].cpu().float() - expected.float()).abs().mean().item() < 2.0
    assert isinstance(out[2], Exception)
    processor = DINOv3ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=MEAN, image_std=STD)
    cpu_images = [pil_to_tensor(load_image(d), None) for d in datas[:2]]
    got = preprocess_on_device([image.cuda() for image in cpu_images], processor)
    assert got.is_cuda
    assert (got.cpu() - _cpu_pixels(processor, datas[:2])).abs().max().item() <= 1e-5
