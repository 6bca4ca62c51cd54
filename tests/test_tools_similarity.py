"""Patch similarity maps and the contact sheet (drawing helpers)."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3kit.tools.dense import DenseMap, upsample
from dinov3kit.tools.sheet import contact_sheet
from dinov3kit.tools.similarity import HEAT_COLORS, cosine_map, heat_colors, overlay


def test_cosine_map_peaks_at_the_query_patch_and_points_map_to_cells():
    features = torch.randn(6, 9, 16)
    image = Image.new("RGB", (450, 300))
    target = DenseMap(image, features, (144, 96))
    similarity = cosine_map(features[2, 7], target)
    assert similarity.shape == (6, 9)
    assert np.unravel_index(similarity.argmax(), similarity.shape) == (2, 7)
    assert similarity.max() == pytest.approx(1.0, abs=1e-6)
    assert target.cell_of(0, 0) == (0, 0) and target.cell_of(449.9, 299.9) == (5, 8) and target.cell_of(375, 120) == (2, 7)
    with pytest.raises(ValueError, match="outside the 450x300 image"):
        target.cell_of(451, 10)
    picture = overlay(target, similarity)
    assert picture.size == (144, 96)


def test_heat_colours_span_the_map_and_upsampling_keeps_constant_maps():
    np.testing.assert_allclose(heat_colors(np.array([0.0, 1.0, 2.0, -1.0])), HEAT_COLORS[[0, -1, -1, 0]])
    np.testing.assert_allclose(upsample(np.full((3, 4, 2), 0.25), (40, 30)), np.full((30, 40, 2), 0.25), atol=1e-6)


def test_contact_sheet_lays_out_queries_and_results(tmp_path):
    photo = tmp_path / "red.png"
    Image.new("RGB", (300, 100), (255, 0, 0)).save(photo)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    sheet = contact_sheet([(str(photo), [(str(photo), "#1  1.000"), (str(tmp_path / "broken.jpg"), "#2  0.500")])], size=64)
    assert sheet.size[0] > 3 * 64 and sheet.size[1] > 64
    pixels = np.asarray(sheet)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 50)
    assert red.sum() > 2 * 64 * 20  # the query and its first result, letterboxed
