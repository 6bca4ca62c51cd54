"""PCA colouring of patch features: principal axes, shared basis, foreground masks."""

import numpy as np
import torch
from PIL import Image

from dinov3kit.tools.dense import DenseMap
from dinov3kit.tools.pca import foreground_masks, pca_colors, principal_axes


def dense(features: torch.Tensor) -> DenseMap:
    rows, cols = features.shape[:2]
    return DenseMap(Image.new("RGB", (cols * 16, rows * 16)), features, (cols * 16, rows * 16))


def test_principal_axes_match_an_svd():
    data = torch.randn(200, 6) @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 0.5, 0.2, 0.1]))
    mean, axes = principal_axes(data)
    _, _, vt = np.linalg.svd((data - data.mean(0)).numpy(), full_matrices=False)
    np.testing.assert_allclose(np.abs(axes.numpy().T @ vt[:3].T), np.eye(3), atol=1e-4)
    torch.testing.assert_close(mean, data.mean(0))


def object_on_background(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    background, foreground = torch.randn(2, 32, generator=generator) * 3
    features = background + 0.3 * torch.randn(10, 14, 32, generator=generator)
    features[3:8, 4:11] = foreground + torch.randn(5, 7, 32, generator=generator)
    return features


def test_foreground_mask_finds_the_object_not_the_border():
    maps = [dense(object_on_background(0)), dense(object_on_background(0)[:, :9])]
    masks = foreground_masks(maps)
    expected = np.zeros((10, 14), dtype=bool)
    expected[3:8, 4:11] = True
    np.testing.assert_array_equal(masks[0], expected)
    np.testing.assert_array_equal(masks[1], expected[:, :9])


def test_colours_use_one_basis_and_black_out_the_background():
    features = object_on_background(1)
    colors = pca_colors([dense(features), dense(features.flip(1))])
    assert all(c.shape == (10, 14, 3) and c.min() >= 0 and c.max() <= 1 for c in colors)
    np.testing.assert_allclose(colors[1], colors[0][:, ::-1], atol=1e-6)  # same patches, same colours
    assert colors[0].std(axis=(0, 1)).min() > 0.05  # three informative channels
    mask = np.zeros((10, 14), dtype=bool)
    mask[3:8, 4:11] = True
    (masked,) = pca_colors([dense(features)], [mask])
    assert (masked[~mask] == 0).all() and masked[mask].std() > 0.05
