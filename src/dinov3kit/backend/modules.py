"""The door to the fast paths: module subclasses that pick their kernel in their own `forward`, and the
fusions of two modules into one kernel, each used only where nobody can tell the difference.

`FastLinear` and `FastConv2d` are `nn.Linear` / `nn.Conv2d` (same parameters, same state-dict keys, same
results up to float rounding) whose `forward` uses the CPU paths of `backend.cpu`. Because the model calls
them as modules, forward hooks fire, and a module swapped in their place (a PEFT LoRA wrapper, a quantized
or user subclass) is used as it is: the fast path then simply does not apply to it.

A fusion replaces calling two modules (a linear and its activation, a layer scale and the residual sum)
only when `unobserved` holds for both: each is exactly the class the model built and has no hooks, so the
fused kernel computes what calling them would, and no one sees the intermediate result.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from . import cpu
from .kernels import fused_kernels_usable, silu_mul


def unobserved(module: nn.Module, cls: type) -> bool:
    """Whether `module` is exactly a `cls` (not a subclass or wrapper) with no hooks, its own or global:
    then replacing its call by an equivalent fused kernel changes nothing anyone can see."""
    return (
        type(module) is cls
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (module._backward_hooks or module._backward_pre_hooks)
        and not (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)
        and not (torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks)
    )


class FastLinear(nn.Linear):
    """`nn.Linear` whose forward uses the CPU inference paths of `backend.cpu.linear` (prepacked weights,
    pooled outputs, fp32 products for half-precision weights on CPUs without half units)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu.linear(x, self.weight, self.bias)


class FastConv2d(nn.Conv2d):
    """`nn.Conv2d` that computes a non-overlapping convolution (stride = kernel, no padding) as one matmul
    over the flattened patches: the same sums, about twice as fast as the convolution on CPUs. The output
    is an NCHW view of channels-last memory, so its pixels flattened to tokens need no copy. Compiled graphs
    use the convolution, which needs no shape guard for the crop of a remainder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._is_patchify() or x.ndim != 4 or torch.compiler.is_compiling():
            return super().forward(x)
        batch, channels, height, width = x.shape
        p, q = self.kernel_size
        rows, cols = height // p, width // q
        patches = (
            x[:, :, : rows * p, : cols * q]
            .reshape(batch, channels, rows, p, cols, q)
            .permute(0, 2, 4, 1, 3, 5)  # [B, h, w, C, p, q]: the weight's (C, p, q) order
            .reshape(batch, rows, cols, channels * p * q)
        )
        return cpu.linear(patches, self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)  # [B, D, h, w]

    def _is_patchify(self) -> bool:
        return (
            self.stride == self.kernel_size
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
        )


def linear_plus_bias(linear: nn.Module, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """linear(x) + bias in a buffer of the caller's own (it may be modified in place). For our unhooked
    `FastLinear` without a bias of its own, the bias is added inside the product, which saves a pass."""
    if unobserved(linear, FastLinear) and linear.bias is None:
        return cpu.linear(x, linear.weight, bias)
    out = linear(x)  # a hook or another module may keep this output: never modify it
    return out.clone() if bias is None else out + bias


def linear_then_activation(linear: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(linear(x)). For GELU in inference: in fp32 on the CPU with few rows one oneDNN call with the exact
    GELU fused in; otherwise the GELU in place in the product's fresh output (no second buffer)."""
    plain = unobserved(linear, FastLinear) and unobserved(act, nn.GELU)
    if plain and cpu.inference_only(x, linear.weight, linear.bias):
        if act.approximate == "none" and cpu.linear_gelu_usable(x, linear.weight, linear.bias):
            return cpu.linear_gelu(x, linear.weight, linear.bias)
        return torch.ops.aten.gelu_(linear(x), approximate=act.approximate)
    return act(linear(x))


def gated_activation(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(gate) * up for x = [..., gate | up]; on GPUs, SiLU and the product in one pass."""
    if unobserved(act, nn.SiLU) and fused_kernels_usable(x):
        return silu_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return act(gate) * up
