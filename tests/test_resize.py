"""resize.py reproduces torch.nn.functional.interpolate(antialias=True): the same filter taps, bit for bit,
and the same resized pixels to float32 rounding, for every layout, block size and batch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinov3kit.pixels.resize import filter_taps, resize, resize_many

SIZES = [(480, 224), (3000, 224), (100, 224), (7, 224), (1, 224), (301, 256), (224, 224), (2, 3), (224, 100)]


def torch_matrix(in_size: int, out_size: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
    """PyTorch's resampling weights along one axis, read off by resizing one-hot rows (width 2: PyTorch
    mishandles width-1 inputs)."""
    probe = torch.eye(in_size, dtype=dtype).reshape(in_size, 1, in_size, 1).expand(-1, -1, -1, 2).contiguous()
    out = F.interpolate(probe, size=(out_size, 2), mode=mode, antialias=True, align_corners=False)
    return out[:, 0, :, 0].T


def our_matrix(in_size: int, out_size: int, mode: str, real: type) -> torch.Tensor:
    weights, first, count = filter_taps(in_size, out_size, mode, real)
    matrix = np.zeros((out_size, in_size), real)
    for row in range(out_size):
        matrix[row, first[row] : first[row] + count[row]] = weights[row, : count[row]]
    return torch.from_numpy(matrix)


@pytest.mark.parametrize(("in_size", "out_size"), SIZES)
def test_bilinear_taps_are_pytorchs_bit_for_bit(in_size, out_size):
    for real, dtype in ((np.float32, torch.float32), (np.float64, torch.float64)):
        ours, theirs = our_matrix(in_size, out_size, "bilinear", real), torch_matrix(in_size, out_size, "bilinear", dtype)
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("mode", ["bicubic", "lanczos"])
def test_bicubic_and_lanczos_taps(mode):
    for in_size, out_size in SIZES[:1] + SIZES[2:]:
        diff = (our_matrix(in_size, out_size, mode, np.float32) - torch_matrix(in_size, out_size, mode, torch.float32)).abs()
        assert diff.max() <= 1e-6, (in_size, out_size)


def reference(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    options = {} if mode.startswith("nearest") else {"antialias": True, "align_corners": False}
    return F.interpolate(image.contiguous()[None].to(work), size=size, mode=mode, **options)[0]


CASES = [((480, 640), (224, 224)), ((1200, 1600), (224, 224)), ((5, 7), (224, 224)), ((1, 1), (224, 224)),
         ((300, 451), (256, 384)), ((50, 60), (50, 300)), ((60, 50), (20, 50))]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "lanczos", "nearest-exact", "nearest"])
def test_resize_matches_interpolate(mode):
    generator = torch.Generator().manual_seed(0)
    for (height, width), size in CASES if mode == "bilinear" else CASES[:1] + CASES[2:]:
        hwc = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8)
        expected = reference(hwc.permute(2, 0, 1), size, mode)
        for image in (hwc.permute(2, 0, 1), hwc.permute(2, 0, 1).contiguous()):  # channels-last view, planar
            for block_bytes in (4 << 20, 1 << 16) if height * width < 10**6 else (4 << 20,):
                result = resize(image, size, mode, block_bytes=block_bytes)
                assert result.shape == expected.shape and result.dtype == torch.float32
                assert (result - expected).abs().max() <= 255 * 1e-6, ((height, width), size, block_bytes)


def test_float64_and_other_dtypes():
    image = torch.rand(3, 90, 70, dtype=torch.float64)
    assert (resize(image, (40, 33)) - reference(image, (40, 33), "bilinear")).abs().max() <= 1e-12
    gray = torch.randint(0, 60000, (1, 50, 40), dtype=torch.int32)
    assert (resize(gray, (20, 20)) - reference(gray.float(), (20, 20), "bilinear")).abs().max() <= 60000 * 1e-6


def test_groups_equal_single_images():
    generator = torch.Generator().manual_seed(1)
    images = [(torch.rand(120, 160, 3, generator=generator) * 255).to(torch.uint8).permute(2, 0, 1) for _ in range(5)]
    for size in ((56, 56), (120, 40), (30, 160), (240, 320)):
        groups = resize_many(images, size, batch_bytes=2 * 3 * 120 * 160 * 4)  # two 120x160 images per product
        assert [len(group) for group in groups] == ([1] * 5 if size == (240, 320) else [2, 2, 1])
        single = torch.stack([resize(image, size) for image in images])
        assert (torch.cat(groups) - single).abs().max() <= 255 * 1e-6


def padded_rgb(height: int, width: int, seed: int) -> torch.Tensor:
    """[3, H, W] uint8 view of an [H, W, 4] buffer: how Pillow stores RGB (what the processor receives)."""
    generator = torch.Generator().manual_seed(seed)
    rgbx = (torch.rand(height, width, 4, generator=generator) * 255).to(torch.uint8)
    return rgbx[..., :3].permute(2, 0, 1)


@pytest.mark.parametrize("size", [(224, 224), (100, 37), (300, 400), (120, 224), (224, 160)])
def test_padded_rgb_pixels_in_groups_and_alone(size):
    images = [padded_rgb(120, 160, seed) for seed in range(3)]
    expected = torch.stack([reference(image, size, "bilinear") for image in images])
    grouped = torch.cat(resize_many(images, size, batch_bytes=2 * 4 * 300 * 400 * 4))
    alone = torch.stack([resize(image, size) for image in images])
    blocked = torch.stack([resize(image, size, block_bytes=1 << 14) for image in images])
    for result in (grouped, alone, blocked):
        assert result.shape == expected.shape
        assert (result - expected).abs().max() <= 255 * 1e-6


def test_mixed_padded_and_plain_images_in_one_group():
    images = [padded_rgb(60, 80, 0), padded_rgb(60, 80, 1).contiguous(), padded_rgb(60, 80, 2)]
    expected = torch.stack([reference(image, (32, 48), "bilinear") for image in images])
    assert (torch.cat(resize_many(images, (32, 48))) - expected).abs().max() <= 255 * 1e-6


def test_results_do_not_share_the_scratch_buffers():
    first = torch.cat(resize_many([padded_rgb(120, 160, 0)], (56, 160)))  # width kept: a copy of the rows
    second = torch.cat(resize_many([padded_rgb(120, 160, 0)], (56, 56)))
    kept = first.clone()
    resize_many([padded_rgb(120, 160, 5)], (56, 160))
    resize_many([padded_rgb(120, 160, 6)], (56, 56))
    assert torch.equal(first, kept) and torch.equal(second, torch.cat(resize_many([padded_rgb(120, 160, 0)], (56, 56))))
