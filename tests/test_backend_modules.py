"""FastLinear / FastConv2d are their torch parents in all but speed; fusions apply only to unobserved modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinov3kit.backend.modules import FastConv2d, FastLinear, linear_plus_bias, linear_then_activation, unobserved


@pytest.mark.parametrize("mode", ["inference", "autograd"])
def test_fast_modules_compute_what_their_parents_do_with_the_same_keys(mode):
    torch.manual_seed(0)
    pairs = [
        (FastLinear(24, 40), nn.Linear(24, 40), torch.randn(3, 7, 24)),
        (FastConv2d(3, 16, 4, stride=4), nn.Conv2d(3, 16, 4, stride=4), torch.randn(2, 3, 18, 13)),  # cropped
        (FastConv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1), torch.randn(2, 3, 9, 9)),  # overlapping
    ]
    for fast, plain, x in pairs:
        plain.load_state_dict(fast.state_dict())
        assert list(fast.state_dict()) == list(plain.state_dict())
        with torch.inference_mode() if mode == "inference" else torch.enable_grad():
            got, expected = fast(x), plain(x)
        assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5


def test_unobserved_means_exact_class_and_no_hooks():
    linear = FastLinear(4, 4)
    assert unobserved(linear, FastLinear) and not unobserved(linear, nn.Linear)
    handle = linear.register_forward_pre_hook(lambda *args: None)
    assert not unobserved(linear, FastLinear)
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert not unobserved(linear, FastLinear)  # a global hook sees every module
    finally:
        handle.remove()
    assert unobserved(linear, FastLinear)


def test_a_hooked_linear_sees_its_own_output_not_the_fused_activation():
    torch.manual_seed(0)
    linear, act, x = FastLinear(16, 32), nn.GELU(), torch.randn(5, 16)
    seen = []
    linear.register_forward_hook(lambda module, args, output: seen.append(output.clone()))
    with torch.inference_mode():
        out = linear_then_activation(linear, act, x)
    expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
    assert (seen[0] - expected).abs().max() <= 1e-6 and (out - act(expected)).abs().max() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_bias_added_to_a_product_is_the_callers_to_modify(dtype):
    torch.manual_seed(0)
    linear, bias, x = FastLinear(16, 24, bias=False).to(dtype), torch.randn(24).to(dtype), torch.randn(3, 16).to(dtype)
    expected = torch.nn.functional.linear(x.double(), linear.weight.double(), bias.double())
    tolerance = 1e-5 if dtype == torch.float32 else 0.02 * expected.abs().max().item()
    with torch.inference_mode():
        fused = linear_plus_bias(linear, bias, x)  # the bias inside the product
        assert (fused.double() - expected).abs().max() <= tolerance
        seen = []
        linear.register_forward_hook(lambda module, args, output: seen.append(output))
        observed = linear_plus_bias(linear, bias, x)
        kept = seen[0].clone()
        observed.mul_(0)  # the caller rotates its buffer in place; what the hook kept stays as it was
        assert torch.equal(seen[0], kept)
        assert (kept.double() - (expected - bias.double())).abs().max() <= tolerance
        unbiased = linear_plus_bias(linear, None, x)
        unbiased.mul_(0)
        assert torch.equal(seen[-1], kept)
