"""The fused Triton kernels against their torch twins (on the CPU through Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from dinov3kit.backend import cpu, kernels  # noqa: E402
from dinov3kit.backend.config import switches  # noqa: E402
from dinov3kit.models.rope import rope_cos_sin, rope_periods, rotate_  # noqa: E402


def switches_off():
    from dinov3kit.backend.config import overridden

    return overridden(fused_kernels=False)


#: On a GPU the compiled kernels run; elsewhere conftest.py has Triton interpret them on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, head_dim, prefix, grid", [(3, 16, 5, (3, 4)), (2, 64, 1, (2, 2))])
def test_fused_rope_matches_the_torch_rotation(dtype, heads, head_dim, prefix, grid):
    torch.manual_seed(0)
    tokens = prefix + grid[0] * grid[1]
    qkv = torch.randn(2, tokens, 3 * heads * head_dim).to(DEVICE, dtype).view(2, tokens, 3, heads, head_dim)
    cos, sin = (t.to(DEVICE) for t in rope_cos_sin(*grid, rope_periods(head_dim, 100.0)))
    expected = qkv.clone()
    rotate_(expected[:, prefix:, :2], cos[:, None, None], sin[:, None, None])
    got = kernels.rotate_qk_(qkv.clone(), cos, sin, prefix)
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -7  # bf16: at most one rounding step apart
    assert (got.float() - expected.float()).abs().max() <= tolerance * expected.float().abs().clamp(min=1).max()
    assert torch.equal(got[:, :prefix], qkv[:, :prefix]) and torch.equal(got[:, :, 2], qkv[:, :, 2])


def test_fused_kernels_are_only_used_where_they_apply(monkeypatch):
    x = torch.randn(2, 3)
    assert not kernels.fused_kernels_usable(x)  # CPU tensors keep the torch ops
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with switches_off():
        assert not kernels.fused_kernels_usable(x)
    assert kernels.fused_kernels_usable(x)
    assert not kernels.fused_kernels_usable(x.requires_grad_())  # autograd needs the differentiable ops
    with torch.no_grad():
        assert kernels.fused_kernels_usable(x)


def test_fused_rope_refuses_a_non_fused_layout():
    qkv = torch.randn(1, 5, 3, 2, 8).transpose(3, 4)
    cos = sin = torch.ones(4, 8)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.rotate_qk_(qkv, cos, sin, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, dim", [(7, 48), (3, 384), (2, 1280)])
def test_fused_residual_and_layer_norm_match_the_torch_ops(dtype, rows, dim):
    torch.manual_seed(0)
    x, branch = torch.randn(2, rows, dim).to(DEVICE, dtype), torch.randn(2, rows, dim).to(DEVICE, dtype)
    gamma = (0.5 + 0.25 * torch.randn(dim)).to(DEVICE, dtype)
    norm = torch.nn.LayerNorm(dim, eps=1e-5).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(dim, device=DEVICE))
        norm.bias.copy_(0.1 * torch.randn(dim, device=DEVICE))
        expected = torch.addcmul(x, branch, gamma)
        expected_normed = norm(expected)
        got, normed = kernels.add_layer_norm(x, branch, gamma, norm)
    step = 1e-6 if dtype == torch.float32 else 2**-7
    assert (got.float() - expected.float()).abs().max() <= step * expected.float().abs().max()
    assert (normed.float() - expected_normed.float()).abs().max() <= 4 * step * expected_normed.float().abs().max()


def test_fused_residual_keeps_an_fp32_stream_and_norms_to_the_blocks_dtype():
    from dinov3kit.models.layers import LayerNorm

    torch.manual_seed(0)
    x = (4 * torch.randn(2, 5, 96)).to(DEVICE)  # the fp32 residual stream of a bf16 block
    branch, gamma = torch.randn(2, 5, 96).to(DEVICE, torch.bfloat16), (0.5 + torch.randn(96)).to(DEVICE, torch.bfloat16)
    norm = LayerNorm(96, eps=1e-5).to(DEVICE, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(96, device=DEVICE))
        norm.bias.copy_(0.1 * torch.randn(96, device=DEVICE))
        expected = torch.addcmul(x, branch, gamma)
        got, normed = kernels.add_layer_norm(x, branch, gamma, norm)
    assert got.dtype == torch.float32 and normed.dtype == torch.bfloat16
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert (normed.float() - norm(expected).float()).abs().max() <= 2**-7 * norm(expected).float().abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_gate_matches_the_torch_ops(dtype):
    torch.manual_seed(0)
    x = (2 * torch.randn(3, 5, 2 * 40)).to(DEVICE, dtype)
    gate, up = x.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    got = kernels.silu_mul(x)
    step = 1e-6 if dtype == torch.float32 else 2**-7
    assert got.shape == expected.shape
    assert (got.float() - expected.float()).abs().max() <= step * expected.float().abs().max()


@pytest.mark.parametrize("gated", [False, True])
def test_model_with_fused_kernels_matches_the_torch_path(monkeypatch, gated):
    from tests.oracles.random_weights import randomize_

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
    from dinov3kit.backend import modules
    from dinov3kit.models import layers, vit

    config = DINOv3ViTConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_register_tokens=2,
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
    )  # fmt: skip
    model = randomize_(DINOv3ViTModel(config).eval()).to(DEVICE)
    pixels = torch.randn(2, 3, 48, 64, device=DEVICE)
    calls = []
    fused_block = vit.fused_block
    monkeypatch.setattr(vit, "fused_block", lambda *args: calls.append(1) or fused_block(*args))
    with torch.inference_mode():
        for module in (layers, vit, modules):
            monkeypatch.setattr(module, "fused_kernels_usable", lambda x: False)
        expected = model(pixels, output_hidden_states=True)
        assert not calls
        for module in (layers, vit, modules):  # on a CPU: the interpreted kernels
            monkeypatch.setattr(module, "fused_kernels_usable", lambda x: True)
        hooked = []  # hooks on the linears fire in the fused path too
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.register_forward_hook(lambda *args: hooked.append(1))
        got = model(pixels, output_hidden_states=True)
    assert len(calls) == 2 and len(hooked) == 1 + 4 * 2
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert (a - b).abs().max() <= 1e-5
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() <= 1e-5


def test_cpu_linear_gelu_matches_linear_then_gelu():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 9, 24), torch.randn(40, 24) / 5, torch.randn(40)
    with torch.inference_mode():
        assert cpu.linear_gelu_usable(x, weight)
        expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
        assert (cpu.linear_gelu(x, weight, bias) - expected).abs().max() <= 1e-6
        assert not cpu.linear_gelu_usable(x.bfloat16(), weight)
    assert not cpu.linear_gelu_usable(x, weight.requires_grad_())  # autograd keeps the torch ops


def test_cpu_fused_mlp_keeps_model_parity(monkeypatch):
    from tests.oracles.random_weights import randomize_

    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
    model = randomize_(DINOv3ViTModel(config).eval())
    pixels = torch.randn(2, 3, 48, 64)
    calls = []
    fused = cpu.linear_gelu
    monkeypatch.setattr(cpu, "linear_gelu", lambda *a: calls.append(1) or fused(*a))
    with torch.inference_mode():
        got = model(pixels).last_hidden_state
        monkeypatch.setattr(switches, "fused_kernels", False)
        expected = model(pixels).last_hidden_state
    assert len(calls) == 2 and (got - expected).abs().max() <= 1e-5


def test_reused_cpu_buffers_serve_inference_mode_then_no_grad():
    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel

    model = DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        first = model.eval()(pixels).last_hidden_state.clone()
    with torch.no_grad():
        assert torch.equal(model(pixels).last_hidden_state, first)
    plain = model(pixels).last_hidden_state.detach()  # autograd on: the plain ops (other kernels, same sums)
    assert (plain - first).abs().max() <= 1e-5


def test_outputs_never_share_the_reused_buffers():
    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = DINOv3ViTModel(config).eval()
    with torch.inference_mode():
        first = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
        kept = [h.clone() for h in first.hidden_states] + [first.last_hidden_state.clone()]
        model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip([*first.hidden_states, first.last_hidden_state], kept))


def test_empty_inputs_launch_no_kernel(monkeypatch):
    monkeypatch.setattr(kernels, "_kernels", lambda: pytest.fail("a kernel was launched on an empty input"))
    qkv = torch.randn(0, 7, 3, 2, 8)
    cos = sin = torch.ones(6, 8)
    assert kernels.rotate_qk_(qkv, cos, sin, 1).shape == qkv.shape
    norm = torch.nn.LayerNorm(16)
    out, normed = kernels.add_layer_norm(torch.randn(0, 5, 16), torch.randn(0, 5, 16), torch.ones(16), norm)
    assert out.shape == normed.shape == (0, 5, 16)
    assert kernels.silu_mul(torch.randn(0, 5, 32)).shape == (0, 5, 16)


def test_a_hooked_norm_or_layer_scale_keeps_the_block_out_of_the_fused_step():
    from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
    from dinov3kit.models import vit

    config = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = DINOv3ViTModel(config)
    assert all(vit.fusable(block) for block in model.blocks)
    model.blocks[0].norm2.register_forward_hook(lambda *args: None)
    model.blocks[1].ls1 = torch.nn.Identity()
    model.train()
    assert not any(vit.fusable(block) for block in model.blocks)
