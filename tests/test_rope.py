"""The RoPE math as pure functions, checked against independent formulas and transformers' helpers."""

import math

import pytest
import torch
from transformers.models.dinov3_vit import modeling_dinov3_vit as hf

from dinov3kit.models.rope import (
    augment_coordinates,
    patch_coordinates,
    rope_angles,
    rope_cos_sin,
    rope_periods,
    rotate_,
)
from oracles.rope import apply_rope, rotate_half


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_periods_follow_meta_formula(head_dim):
    expected = [100.0 ** (2 * i / (head_dim // 2)) for i in range(head_dim // 4)]
    assert rope_periods(head_dim, 100.0).tolist() == pytest.approx(expected, rel=1e-6)


def test_coordinates_are_patch_centres_in_minus_one_one():
    coords = patch_coordinates(2, 4)
    assert coords.shape == (8, 2)
    assert coords[:4, 0].tolist() == [-0.5] * 4  # first row
    assert coords[:4, 1].tolist() == [-0.75, -0.25, 0.25, 0.75]
    assert torch.equal(coords, hf.get_patches_center_coordinates(2, 4, torch.float32, torch.device("cpu")))


def test_angles_layout_is_rows_then_columns_tiled_twice():
    periods = rope_periods(16, 100.0)  # 4 frequencies
    coords = torch.tensor([[0.5, -0.25]])
    angles = rope_angles(coords, periods)[0]
    y = [2 * math.pi * 0.5 / p for p in periods.tolist()]
    x = [2 * math.pi * -0.25 / p for p in periods.tolist()]
    assert angles.tolist() == pytest.approx((y + x) * 2, rel=1e-6)


def test_cos_sin_match_transformers():
    config = hf.DINOv3ViTConfig(hidden_size=128, num_attention_heads=2)
    rope = hf.DINOv3ViTRopePositionEmbedding(config).eval()
    cos_ref, sin_ref = rope(torch.zeros(1, 3, 5 * 16, 7 * 16))
    cos, sin = rope_cos_sin(5, 7, rope_periods(64, 100.0))
    assert torch.allclose(cos, cos_ref, atol=1e-6) and torch.allclose(sin, sin_ref, atol=1e-6)


def test_rotate_half():
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]


def test_in_place_rotation_is_the_rotate_half_formula():
    x = torch.randn(2, 5, 16)
    cos, sin = rope_cos_sin(1, 5, rope_periods(16, 100.0))
    expected = x * cos + rotate_half(x) * sin
    assert torch.allclose(rotate_(x.clone(), cos, sin), expected, atol=1e-6)


def test_apply_rope_leaves_prefix_and_preserves_norm():
    x = torch.randn(2, 3, 5 + 6, 16)
    cos, sin = rope_cos_sin(2, 3, rope_periods(16, 100.0))
    out = apply_rope(x, cos, sin, num_prefix_tokens=5)
    assert torch.equal(out[:, :, :5], x[:, :, :5])
    assert not torch.allclose(out[:, :, 5:], x[:, :, 5:])
    # A rotation keeps the norm of each (i, i + d/2) pair, hence of each vector.
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_augmentation_bounds_and_identity_when_off():
    coords = patch_coordinates(4, 4)
    assert torch.equal(augment_coordinates(coords), coords)
    torch.manual_seed(0)
    for _ in range(20):
        scaled = augment_coordinates(coords, rescale=2.0)
        ratio = scaled[0, 0] / coords[0, 0]
        assert 0.5 - 1e-6 <= ratio <= 2.0 + 1e-6
        assert torch.allclose(scaled / coords, ratio.expand_as(coords))  # one scale for both axes
        shifted = augment_coordinates(coords, shift=0.1)
        delta = shifted - coords
        assert delta.abs().max() <= 0.1 and torch.allclose(delta, delta[:1].expand_as(delta))


def test_rotation_into_a_workspace_is_the_same():
    qkv = torch.randn(2, 7, 3, 2, 8)
    cos, sin = (t[:, None, None] for t in rope_cos_sin(2, 3, rope_periods(8, 100.0)))
    expected, got = qkv.clone(), qkv.clone()
    rotate_(expected[:, 1:, :2], cos, sin)
    workspace = torch.full((2, 6, 2, 2, 8), float("nan"))
    rotate_(got[:, 1:, :2], cos, sin, workspace)
    assert torch.equal(got, expected)
