"""The building blocks of a DINOv3 ViT, one small module each. Shapes: B batch, N tokens, D width."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..scratch import pooled
from . import packing
from .kernels import (
    add_layer_norm,
    cpu_fp32_inference,
    cpu_linear_gelu,
    cpu_linear_gelu_usable,
    fused_kernels_usable,
    rotate_qk_,
    silu_mul,
)
from .rope import rotate_

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
}


#: Rows from which an fp32 product beats an emulated half-precision one (measured: 2x at 201 rows, 0.5x at 1).
UPCAST_MIN_ROWS = 64


@functools.cache
def cpu_has_half_matmul_units() -> bool:
    """Whether this CPU multiplies bf16/fp16 matrices natively (AVX512-BF16 or AMX); without them oneDNN
    emulates those kernels at a fraction of the fp32 speed."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear`, with two CPU inference paths:

    - fp32 (see `cpu_fp32_inference`): a product of few rows multiplies by a prepacked copy of the weight
      (`packing.linear`); a larger one is written into pooled memory (`scratch.pooled`). Fresh activation
      buffers cost page faults on first touch, a tenth to a quarter of a forward at batch 16.
    - bf16/fp16 on a CPU without half-precision matrix units: a product of at least UPCAST_MIN_ROWS rows is
      computed in fp32 and rounded once to the input dtype. That is the arithmetic of oneDNN's half kernels
      (exact products, fp32 sums), 2-3x faster on such CPUs (fewer rows do not repay converting the weight).

    Weights of other tensor types (quantized) keep their own kernels, and compiled graphs leave the choice
    to the compiler."""
    if cpu_fp32_inference(x, weight):
        rows = x.reshape(-1, x.shape[-1])
        out = packing.linear(rows, weight, bias)
        if out is None:
            out = pooled((rows.shape[0], weight.shape[0]), x.dtype, x.device)
            if bias is None:
                torch.mm(rows, weight.t(), out=out)
            else:
                torch.addmm(bias, rows, weight.t(), out=out)
        return out.view(*x.shape[:-1], weight.shape[0])
    if (
        x.dtype in (torch.bfloat16, torch.float16)
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and type(weight) in (torch.Tensor, nn.Parameter)
        and x.numel() >= UPCAST_MIN_ROWS * x.shape[-1]
        and not cpu_has_half_matmul_units()
    ):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    return F.linear(x, weight, bias)


def residual_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the residual stream of a model in `dtype` is kept in: fp32 for bf16/fp16 models. Rounding
    the stream to half precision after every block is the largest error of a half-precision forward
    (ViT-S, bf16, a real photo: 1.03e-2 relative error against fp32; 6.9e-3 with an fp32 stream); fp16
    streams can also overflow. Everything else, matmuls included, stays in the model's dtype."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def activation(name: str) -> nn.Module:
    """The activation module for a transformers `hidden_act` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens; a remainder that does not fill a patch is cropped.

    The weights are those of a stride = kernel convolution, applied as one matmul over the flattened
    patches: the same sums, about twice as fast as the convolution on CPUs, and tokens come out contiguous.
    Compiled graphs use the convolution, which needs no shape guard for the crop.
    """

    def __init__(self, num_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(num_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # the crop would add a shape guard (a recompile per remainder)
            return self.proj(pixel_values).flatten(2).transpose(1, 2)
        batch, channels, height, width = pixel_values.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        patches = (
            pixel_values[:, :, : rows * p, : cols * p]
            .reshape(batch, channels, rows, p, cols, p)
            .permute(0, 2, 4, 1, 3, 5)  # [B, h, w, C, p, p]: the conv weight's (C, p, p) order
            .reshape(batch, rows * cols, channels * p * p)
        )
        return linear(patches, self.proj.weight.flatten(1), self.proj.bias)  # [B, h*w, D]


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV matmul and optional per-projection biases."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        query_bias: bool,
        key_bias: bool,
        value_bias: bool,
        proj_bias: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if query_bias else None
        self.k_bias = nn.Parameter(torch.zeros(dim)) if key_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if value_bias else None
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def qkv_bias(self) -> torch.Tensor | None:
        """The [3D] bias of the fused projection (zeros for projections without bias), or None."""
        biases = (self.q_bias, self.k_bias, self.v_bias)
        if all(b is None for b in biases):
            return None
        zeros = torch.zeros(self.proj.in_features, dtype=self.qkv.weight.dtype, device=self.qkv.weight.device)
        return torch.cat([zeros if b is None else b for b in biases])

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        num_prefix_tokens: int,
        *,
        eager: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, dim = x.shape
        qkv = linear(x, self.qkv.weight, self.qkv_bias()).view(batch, tokens, 3, self.num_heads, self.head_dim)
        if fused_kernels_usable(qkv):
            rotate_qk_(qkv, *rope, num_prefix_tokens)  # one pass over the buffer on GPUs
        else:
            cos, sin = (table[:, None, None] for table in rope)  # [patches, 1, 1, d]: over q/k and heads
            patches_qk = qkv[:, num_prefix_tokens:, :2]  # the patch rows of q and k, in the fused buffer
            reuse = cpu_fp32_inference(x, self.qkv.weight)  # the fp32 temporary of `rotate_` into pooled memory
            workspace = pooled(patches_qk.shape, cos.dtype, x.device) if reuse else None
            rotate_(patches_qk, cos, sin, workspace)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views [B, H, N, d], no copies
        dropout = self.dropout if self.training else 0.0
        if eager:
            weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # [B, H, N, N]
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return linear(out, self.proj.weight, self.proj.bias), weights


class Mlp(nn.Module):
    """Feed-forward network. Gated (SwiGLU-style) when `gated`: fc1 holds the gate rows, then the up rows,
    so one matmul computes both."""

    def __init__(self, dim: int, hidden: int, *, act: str, bias: bool, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.fc1 = nn.Linear(dim, 2 * hidden if gated else hidden, bias=bias)
        self.act = activation(act)
        self.fused_silu = gated and act in ("silu", "swish")
        self.exact_gelu = not gated and act == "gelu"
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact_gelu and cpu_linear_gelu_usable(x, self.fc1.weight):
            return linear(cpu_linear_gelu(x, self.fc1.weight, self.fc1.bias), self.fc2.weight, self.fc2.bias)
        if self.exact_gelu and cpu_fp32_inference(x, self.fc1.weight):  # in place in the pooled hidden layer
            hidden = torch.ops.aten.gelu_(linear(x, self.fc1.weight, self.fc1.bias))
            return linear(hidden, self.fc2.weight, self.fc2.bias)
        x = linear(x, self.fc1.weight, self.fc1.bias)
        if self.fused_silu and fused_kernels_usable(x):
            x = silu_mul(x)
        elif self.gated:
            gate, up = x.chunk(2, dim=-1)
            x = self.act(gate) * up
        else:
            x = self.act(x)
        return linear(x, self.fc2.weight, self.fc2.bias)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that also takes the fp32 residual stream of a half-precision model (`residual_dtype`):
    it normalises in fp32 and returns its weights' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None or x.dtype == self.weight.dtype:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), bias, self.eps).to(self.weight.dtype)


class LayerScale(nn.Module):
    """Per-channel residual scale."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of random samples in training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    x, the residual stream, may be fp32 in a half-precision block (see `residual_dtype`): the norms then
    hand the attention and the MLP their inputs in the block's dtype, and the residuals sum in fp32."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        *,
        act: str,
        gated_mlp: bool,
        query_bias: bool,
        key_bias: bool,
        value_bias: bool,
        proj_bias: bool,
        mlp_bias: bool,
        layerscale_value: float,
        norm_eps: float,
        drop_path: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            query_bias=query_bias,
            key_bias=key_bias,
            value_bias=value_bias,
            proj_bias=proj_bias,
            dropout=attention_dropout,
        )
        self.ls1 = LayerScale(dim, layerscale_value)
        self.norm2 = LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden, act=act, bias=mlp_bias, gated=gated_mlp)
        self.ls2 = LayerScale(dim, layerscale_value)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        num_prefix_tokens: int,
        eager: bool = False,
        *,
        normed: torch.Tensor | None = None,
        next_norm: nn.LayerNorm | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (output, attention weights or None, next_norm(output) or None).

        On GPUs each layer-scaled residual and the LayerNorm after it run as one fused pass: the second
        residual is fused with `next_norm` (the next block's norm1, passed in as `normed`) when given.
        """
        attn, weights = self.attn(self.norm1(x) if normed is None else normed, rope, num_prefix_tokens, eager=eager)
        fused = fused_kernels_usable(x) and not (self.training and self.drop_path.drop_prob > 0.0)
        if fused:
            x, normed = add_layer_norm(x, attn, self.ls1.gamma, self.norm2)
        else:
            x = self.residual(x, attn, self.ls1)
            normed = self.norm2(x)
        branch = self.mlp(normed)
        if fused and next_norm is not None and next_norm.weight.device == x.device:
            x, following = add_layer_norm(x, branch, self.ls2.gamma, next_norm)
            return x, weights, following
        return self.residual(x, branch, self.ls2), weights, None

    def residual(self, x: torch.Tensor, branch: torch.Tensor, scale: LayerScale) -> torch.Tensor:
        """x + drop_path(scale(branch)); one fused multiply-add when no path is dropped."""
        if self.training and self.drop_path.drop_prob > 0.0:
            return x + self.drop_path(scale(branch))
        if cpu_fp32_inference(x, scale.gamma) and branch.shape == x.shape:  # into pooled memory, see `linear`
            return torch.addcmul(x, branch, scale.gamma, out=pooled(x.shape, x.dtype, x.device))
        return torch.addcmul(x, branch, scale.gamma)
