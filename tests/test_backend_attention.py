"""backend/attention.py: the padded-keys attention equals torch's, and pads only where it is meant to."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.backend import attention as attention_module
from dinov3kit.backend import cpu
from dinov3kit.backend.attention import KEY_ALIGNMENT, PADDED_MAX_KEYS, attention, key_padding_usable, padded_key_count
from oracles.random_weights import randomize_


@pytest.mark.parametrize(
    ("keys", "padded"),
    [(1, 16), (16, 16), (17, 32), (201, 208), (208, 208), (261, 272), (511, 512), (512, 512), (789, 789), (1029, 1029)],
)
def test_padded_key_count(keys, padded):
    assert padded_key_count(keys) == padded
    assert padded % KEY_ALIGNMENT == 0 or keys >= PADDED_MAX_KEYS


def fused_qkv(batch: int, tokens: int, heads: int = 3, head_dim: int = 16, dtype=torch.bfloat16):
    """q, k, v as the model hands them over: strided views [B, H, N, d] of one [B, N, 3, H, d] buffer."""
    generator = torch.Generator().manual_seed(tokens)
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, generator=generator).mul_(2).to(dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


@pytest.fixture
def half_units(monkeypatch):
    """Pretend to be a CPU with bf16 matrix units (the padded path runs, emulated, on any CPU)."""
    monkeypatch.setattr(cpu, "has_half_matmul_units", lambda: True)


def spy_sdpa(monkeypatch) -> list[tuple[int, bool]]:
    """Record (key count, whether a mask was passed) of every call of torch's attention."""
    calls, original = [], F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((k.shape[-2], kwargs.get("attn_mask") is not None))
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [5, 201, 261])
def test_padded_attention_equals_torch(half_units, monkeypatch, dtype, tokens):
    q, k, v = fused_qkv(2, tokens, dtype=dtype)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch_half = F.scaled_dot_product_attention(q, k, v)
    calls = spy_sdpa(monkeypatch)
    with torch.inference_mode():
        out = attention(q, k, v)
    assert calls == [(padded_key_count(tokens), True)]
    assert out.dtype == dtype and out.shape == q.shape
    error = (out.double() - expected).abs().max()
    assert error <= 1.5 * (torch_half.double() - expected).abs().max() + 1e-3


def test_the_mask_is_what_hides_the_padding(half_units):
    """Mutation check: the same padded keys without the mask give other outputs."""
    q, k, v = fused_qkv(2, 201)
    padded = padded_key_count(201)
    zeros = torch.zeros(*k.shape[:-2], padded - 201, k.shape[-1], dtype=k.dtype)
    unmasked = F.scaled_dot_product_attention(q, torch.cat([k, zeros], -2), torch.cat([v, zeros], -2))
    with torch.inference_mode():
        out = attention(q, k, v)
    assert (out.float() - unmasked.float()).abs().max() > 0.01


def test_padding_buffers_are_reused_and_results_survive(half_units):
    q, k, v = fused_qkv(2, 201)
    with torch.inference_mode():
        first = attention(q, k, v)
        kept = first.clone()
        q2, k2, v2 = fused_qkv(2, 201, heads=3)
        attention(q2 * 0.5, k2, v2)
    assert torch.equal(first, kept)


@pytest.mark.parametrize(
    "case", ["fp32", "aligned", "long", "grad", "dropout", "no half units"]
)
def test_plain_attention_where_padding_does_not_pay(monkeypatch, case):
    monkeypatch.setattr(cpu, "has_half_matmul_units", lambda: case != "no half units")
    tokens = {"aligned": 208, "long": PADDED_MAX_KEYS + 5}.get(case, 201)
    q, k, v = fused_qkv(1, tokens, dtype=torch.float32 if case == "fp32" else torch.bfloat16)
    if case == "grad":
        q.requires_grad_(True)
    calls = spy_sdpa(monkeypatch)
    with torch.inference_mode(case != "grad"):
        assert not key_padding_usable(q, k, v) or case == "dropout"
        attention(q, k, v, dropout_p=0.1 if case == "dropout" else 0.0)
    assert calls == [(tokens, False)]


def test_masks_are_cached_per_shape():
    attention_module._padding_mask.cache_clear()
    mask = attention_module._padding_mask(3, 5, 16, torch.bfloat16)
    assert mask is attention_module._padding_mask(3, 5, 16, torch.bfloat16)
    assert torch.equal(mask[:, :5], torch.zeros(3, 5, dtype=torch.bfloat16))
    assert bool((mask[:, 5:] == float("-inf")).all())


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_a_bf16_vit_gives_the_same_tokens_with_and_without_padding(half_units, monkeypatch, mode):
    """The model reaches the padded path (3 prefix + 16 patch tokens -> 32 keys), with the outputs of plain SDPA."""
    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2, num_register_tokens=2,
        image_size=64,
    )  # fmt: skip
    model = randomize_(DINOv3ViTModel(config)).eval().to(torch.bfloat16)
    pixels = torch.randn(2, 3, 64, 64).bfloat16()
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    calls = spy_sdpa(monkeypatch)
    with context():
        padded = model(pixel_values=pixels).last_hidden_state
    assert calls == [(32, True)] * 2
    monkeypatch.setattr(attention_module, "key_padding_usable", lambda *tensors: False)
    with context():
        plain = model(pixel_values=pixels).last_hidden_state
    assert calls[2:] == [(19, False)] * 2
    scale = plain.float().abs().max()
    assert (padded.float() - plain.float()).abs().max() <= 0.02 * scale
