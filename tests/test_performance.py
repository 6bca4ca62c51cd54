"""The fast paths keep their promises (logic only; speed itself is shown by benchmarks/): RoPE tables cached
and rotated in place, patch matmul = convolution, fp32-computed half matmuls on CPUs without half units,
one compiled graph for every resolution, bf16 accuracy on a real photo. (`device_map`: test_placement.py.)"""

from unittest.mock import patch

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.dinov3_vit import modeling_dinov3_vit as hf

from dinov3kit import DINOv3ViTBackbone, DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.backend import cpu
from dinov3kit.backend.cpu import linear
from dinov3kit.models import layers, vit
from dinov3kit.models.layers import PatchEmbed
from dinov3kit.models.rope import rope_cos_sin, rope_periods, rotate_
from oracles.hf_twin import save_hf_vit
from oracles.random_weights import randomize_

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, num_register_tokens=4)


def tiny_model(cls=DINOv3ViTModel, **config) -> DINOv3ViTModel:
    torch.manual_seed(0)
    return randomize_(cls(DINOv3ViTConfig(**{**TINY, **config})), seed=0).eval()


# --- RoPE --------------------------------------------------------------------------------------------


def test_cache_blocks_cover_the_batch_in_order_within_the_budget():
    x = torch.empty(5, 196, 2, 6, 64, dtype=torch.bfloat16)  # ViT-S's q/k patch rows: 301 kB an image
    workspace = torch.empty_like(x)
    with torch.inference_mode():
        blocks = cpu.cache_blocks(x, workspace)
        assert blocks == [slice(i, i + 1) for i in range(5)]  # 602 kB an image with its workspace
        assert cpu.cache_blocks(x[:, :150], None) == [slice(0, 4), slice(4, 5)]  # 230 kB an image
        assert cpu.cache_blocks(x[:1], workspace[:1]) == [slice(None)]
    assert cpu.cache_blocks(x.float().requires_grad_()) == [slice(None)]  # autograd: one pass, as torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_in_cache_blocks_gives_the_same_tokens(monkeypatch, dtype):
    model = tiny_model().to(dtype)
    pixels = torch.randn(3, 3, 64, 64, dtype=dtype)
    blocks = []
    original = cpu.cache_blocks
    monkeypatch.setattr(cpu, "cache_blocks", lambda *tensors: blocks.append(original(*tensors)) or blocks[-1])
    monkeypatch.setattr(cpu, "CACHE_BLOCK_BYTES", 1)  # one image a block
    with torch.inference_mode():
        per_image = model(pixel_values=pixels).last_hidden_state
    assert blocks[0] == [slice(0, 1), slice(1, 2), slice(2, 3)]
    monkeypatch.setattr(cpu, "CACHE_BLOCK_BYTES", 1 << 40)  # the whole batch
    with torch.inference_mode():
        whole = model(pixel_values=pixels).last_hidden_state
    assert blocks[-1] == [slice(0, 3)]
    assert torch.equal(per_image, whole)


def test_rope_tables_are_cached_per_grid_in_eval_mode(monkeypatch):
    model = tiny_model()
    calls = []
    monkeypatch.setattr(vit, "rope_cos_sin", lambda *args, **kw: calls.append(args[:2]) or rope_cos_sin(*args, **kw))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(1, 3, 64, 48))
        model(torch.randn(1, 3, 32, 32))
    assert calls == [(4, 3), (2, 2)]
    assert model.rope_tables((4, 3))[0] is model.rope_tables((4, 3))[0]


def test_rope_tables_are_cached_per_dtype_and_half_cpu_inference_uses_its_own():
    model = tiny_model().to(torch.bfloat16)
    tables = model.rope_tables((3, 3), torch.bfloat16)
    assert tables[0].dtype == torch.bfloat16 and model.rope_tables((3, 3), torch.bfloat16)[0] is tables[0]
    assert torch.equal(tables[1], rope_cos_sin(3, 3, model.rope_periods)[1].bfloat16())  # fp32, rounded once
    assert model.rope_tables((3, 3))[0].dtype == torch.float32
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert cpu.rope_dtype(x) == torch.bfloat16 and cpu.rope_dtype(x.float()) == torch.float32
    assert cpu.rope_dtype(x.requires_grad_()) == torch.float32  # training keeps fp32 positions


def test_rope_cache_follows_the_periods_buffer():
    model = tiny_model()
    first = model.rope_tables((3, 3))
    with torch.no_grad():
        model.rope_periods.mul_(2)  # edited in place
    edited = model.rope_tables((3, 3))
    assert not torch.equal(edited[1], first[1])
    assert torch.equal(edited[1], rope_cos_sin(3, 3, model.rope_periods)[1])
    model.to(torch.float64)  # replaced
    assert model.rope_tables((3, 3))[0] is not edited[0]


def test_rope_tables_are_random_in_training_and_bounded_cache():
    model = tiny_model().train()
    assert not torch.equal(model.rope_tables((4, 4))[0], model.rope_tables((4, 4))[0])
    model.eval()
    for size in range(1, vit.ROPE_CACHE_SIZE + 5):
        model.rope_tables((size, 1))
    assert len(model._rope_cache) == vit.ROPE_CACHE_SIZE


def test_tables_cached_in_inference_mode_serve_autograd_later():
    model = tiny_model()
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
    pixels = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(pixels).pooler_output.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_rotation_of_the_fused_qkv_buffer_matches_transformers(dtype):
    batch, prefix, heads, head_dim, grid = 2, 5, 3, 16, (3, 4)
    qkv = torch.randn(batch, prefix + grid[0] * grid[1], 3, heads, head_dim).to(dtype)
    cos, sin = rope_cos_sin(*grid, rope_periods(head_dim, 100.0))
    q, k, v = (t.clone() for t in qkv.permute(2, 0, 3, 1, 4).float())
    q_ref, k_ref = hf.apply_rotary_pos_emb(q, k, cos, sin)  # fp32 reference, rounded once below
    rotate_(qkv[:, prefix:, :2], cos[:, None, None], sin[:, None, None])
    q_ours, k_ours, v_ours = qkv.permute(2, 0, 3, 1, 4)
    tolerance = 1e-6 if dtype == torch.float32 else 0
    for ours, ref in ((q_ours, q_ref), (k_ours, k_ref)):
        expected = ref.to(dtype)
        close = (ours.float() - expected.float()).abs() <= tolerance + 2 * torch.finfo(dtype).eps * expected.float().abs()
        assert close.all()
    assert torch.equal(v_ours.float(), v)  # values untouched
    assert torch.equal(q_ours[:, :, :prefix].float(), q[:, :, :prefix])  # prefix tokens untouched


# --- matmuls -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 48), (70, 50)])
def test_patch_matmul_equals_the_convolution(size):
    embed = PatchEmbed(3, 32, 16)
    randomize_(embed)
    pixels = torch.randn(2, 3, *size)
    expected = F.conv2d(pixels, embed.proj.weight, embed.proj.bias, stride=16).flatten(2).transpose(1, 2)
    assert (embed(pixels) - expected).abs().max() <= 1e-5


def test_half_matmul_on_cpu_without_half_units_is_fp32_rounded_once(monkeypatch):
    x, weight, bias = (torch.randn(*shape).bfloat16() for shape in ((2, 40, 32), (16, 32), (16,)))
    exact = F.linear(x.double(), weight.double(), bias.double())
    monkeypatch.setattr(cpu, "has_half_matmul_units", lambda: False)
    upcast = linear(x, weight, bias)
    assert upcast.dtype == torch.bfloat16
    assert torch.equal(upcast, exact.float().bfloat16())  # fp32 products and sums, one rounding
    seen, original = [], F.linear
    monkeypatch.setattr(F, "linear", lambda a, *rest: seen.append(a.dtype) or original(a, *rest))
    linear(x[:1, :10], weight, bias)  # too few rows to repay converting the weight: the half kernel
    linear(x, weight, bias)
    assert seen == [torch.bfloat16, torch.float32]
    monkeypatch.setattr(cpu, "has_half_matmul_units", lambda: True)
    native = linear(x, weight, bias)
    assert (native.float() - exact.float()).abs().max() <= 0.02 * exact.abs().max()


@pytest.mark.skipif(not cpu.has_half_matmul_units(), reason="needs a CPU with bf16 matrix units (AVX512-BF16/AMX)")
def test_bf16_products_on_cpus_with_half_units_use_onednn_with_the_bias_and_gelu_inside(monkeypatch):
    x, weight, bias = (torch.randn(*shape).bfloat16() for shape in ((2, 40, 32), (48, 32), (48,)))
    exact = F.linear(x.double(), weight.double(), bias.double())
    calls = []
    onednn = cpu.onednn_linear
    monkeypatch.setattr(cpu, "onednn_linear", lambda x, w, b, act="none": calls.append(act) or onednn(x, w, b, act))
    with torch.inference_mode():
        product = linear(x, weight, bias)
        assert cpu.linear_gelu_usable(x, weight, bias)
        fused = cpu.linear_gelu(x, weight, bias)
    assert calls == ["none", "gelu"] and product.dtype == fused.dtype == torch.bfloat16
    assert (product.double() - exact).abs().max() <= 0.01 * exact.abs().max()
    assert (fused.double() - F.gelu(exact)).abs().max() <= 0.01 * exact.abs().max()
    assert not cpu.linear_gelu_usable(x, weight.requires_grad_(), bias)  # autograd: the plain ops


def test_bf16_matches_fp32_on_a_real_photo(tmp_path):
    """Relative error of the bf16 model's tokens against fp32 on a real photo (ViT-S/16 size, random weights,
    which amplify rounding more than trained ones), no worse than transformers' own bf16 path."""
    from skimage import data

    reference, _ = save_hf_vit(
        tmp_path, attn_implementation="sdpa", hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
        num_attention_heads=6, num_register_tokens=4,
    )  # fmt: skip
    ours = DINOv3ViTModel.from_pretrained(tmp_path)
    image = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224), Image.BICUBIC), dtype=np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(((image / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        fp32 = ours(pixels).last_hidden_state
        bf16 = ours.to(torch.bfloat16)(pixels.bfloat16()).last_hidden_state.float()  # bf16 stream (CPU)
        theirs = reference.to(torch.bfloat16)(pixels.bfloat16()).last_hidden_state.float()
    with torch.no_grad(), patch.object(cpu, "bf16_residual_stream", lambda tokens: False):
        fp32_stream = ours(pixels.bfloat16()).last_hidden_state.float()  # as on GPUs and under autograd
    error = ((bf16 - fp32).norm() / fp32.norm()).item()
    fp32_stream_error = ((fp32_stream - fp32).norm() / fp32.norm()).item()
    their_error = ((theirs - fp32).norm() / fp32.norm()).item()
    assert error <= their_error, (error, their_error)  # measured: 1.02e-2 vs 1.05e-2 (2026-12-04)
    assert fp32_stream_error <= 0.8 * their_error, (fp32_stream_error, their_error)  # measured: 6.8e-3
    assert F.cosine_similarity(bf16[0], fp32[0], dim=-1).min() > 0.999


def test_half_precision_blocks_sum_in_fp32_except_bf16_cpu_inference_and_outputs_keep_the_model_dtype():
    model = tiny_model().to(torch.bfloat16)
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, output: seen.append(output[0].dtype))
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    model(pixels)  # autograd tracks the weights: fp32
    with torch.inference_mode():
        output = model(pixels, output_hidden_states=True)  # bf16 CPU inference: bf16 (cpu.bf16_residual_stream)
        half = model.to(torch.float16)(pixels.half())
    assert seen == [torch.float32, torch.bfloat16, torch.float32]  # fp16 streams would overflow: fp32
    assert {h.dtype for h in output.hidden_states} == {torch.bfloat16}
    assert output.last_hidden_state.dtype == torch.bfloat16 and half.last_hidden_state.dtype == torch.float16
    assert layers.residual_dtype(torch.ones(1, dtype=torch.float64)) == torch.float64


def test_layer_norm_of_an_fp32_stream_computes_in_fp32_and_returns_its_dtype():
    norm = randomize_(layers.LayerNorm(16, eps=1e-5), seed=1).to(torch.bfloat16)
    x = 3 + torch.randn(4, 16)
    expected = F.layer_norm(x, (16,), norm.weight.float(), norm.bias.float(), 1e-5).bfloat16()
    assert torch.equal(norm(x), expected)
    assert torch.equal(norm(x.bfloat16()), F.layer_norm(x.bfloat16(), (16,), norm.weight, norm.bias, 1e-5))


# --- CPU activations ------------------------------------------------------------------------------


def test_pooled_activations_kept_by_the_caller_survive_later_forwards(monkeypatch):
    """fp32 CPU inference writes activations into pooled buffers; whatever a caller keeps (hidden states,
    hooked module outputs) must never be handed out again."""
    from dinov3kit.backend import pools

    monkeypatch.setattr(pools, "MIN_BYTES", 0)  # pool the tiny model's activations too
    model = tiny_model()
    hooked = []
    model.blocks[0].attn.register_forward_hook(lambda module, args, output: hooked.append(output[0]))
    model.blocks[1].mlp.register_forward_hook(lambda module, args, output: hooked.append(output))
    with torch.inference_mode():
        first = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
        kept = [t.clone() for t in (*first.hidden_states, *hooked)]
        for seed in range(3):
            model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)), output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip((*first.hidden_states, *hooked[:2]), kept))


def test_only_the_hidden_states_asked_for_are_kept():
    model = tiny_model()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        everything, _ = model.encode(pixels)
        some, _ = model.encode(pixels, keep=[1])
        output = model(pixels)
    assert [h is None for h in some] == [True, False, True, False]  # the last one is always kept
    assert torch.equal(some[1], everything[1]) and torch.equal(some[-1], everything[-1])
    assert output.hidden_states is None


# --- torch.compile -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DINOv3ViTModel, DINOv3ViTBackbone])
def test_compiled_model_is_one_graph_for_every_resolution(cls):
    import torch._dynamo

    model = tiny_model(cls, out_indices=[1, 3])
    compiled = tiny_model(cls, out_indices=[1, 3])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compiled.compile(backend="eager", dynamic=True) is compiled  # fullgraph: a graph break would raise
    with torch.no_grad():
        for size in ((48, 80), (64, 64), (70, 50)):  # non-square first: a square first shape makes
            # PyTorch assume height == width ("duck sizing") and recompile once for the first non-square one
            pixels = torch.randn(2, 3, *size)
            got, expected = compiled(pixels), model(pixels)
            key = "last_hidden_state" if cls is DINOv3ViTModel else "feature_maps"
            for a, b in zip(torch.atleast_1d(*[getattr(got, key)]), torch.atleast_1d(*[getattr(expected, key)])):
                assert (a - b).abs().max() <= 1e-5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
