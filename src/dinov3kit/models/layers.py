"""The building blocks of a DINOv3 ViT, one small module each. Shapes: B batch, N tokens, D width.

Every module calls its submodules (`self.qkv(x)`), so hooks, PEFT/LoRA wrappers and swapped modules take
effect. The speed tricks sit behind `dinov3kit.backend`: `FastLinear` / `FastConv2d` pick their CPU kernel
in their own forward, and the few fusions of two modules apply only where nobody can tell (`unobserved`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backend import cpu
from ..backend.attention import attention
from ..backend.kernels import fused_kernels_usable, rotate_qk_
from ..backend.modules import (
    FastConv2d,
    FastLinear,
    gated_activation,
    linear_plus_bias,
    linear_then_activation,
    unobserved,
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


def residual_dtype(tokens: torch.Tensor) -> torch.dtype:
    """The dtype the residual stream of `tokens` (the embeddings, in the model's dtype) is kept in: fp32 for
    bf16/fp16 models. Rounding the stream to half precision after every block is the largest error of a
    half-precision forward (ViT-S, bf16, a real photo: 1.02e-2 relative error against fp32; 6.7e-3 with an
    fp32 stream); fp16 streams can also overflow. Everything else, matmuls included, stays in the model's
    dtype. The exception, decided by the backend (`cpu.bf16_residual_stream`): bf16 inference on the CPU,
    where the fp32 stream's conversions cost more than its accuracy is worth."""
    if tokens.dtype == torch.float16 or (tokens.dtype == torch.bfloat16 and not cpu.bf16_residual_stream(tokens)):
        return torch.float32
    return tokens.dtype


def activation(name: str) -> nn.Module:
    """The activation module for a transformers `hidden_act` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens; a remainder that does not fill a patch is cropped."""

    def __init__(self, num_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = FastConv2d(num_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]


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
        self.qkv = FastLinear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if query_bias else None
        self.k_bias = nn.Parameter(torch.zeros(dim)) if key_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if value_bias else None
        self.proj = FastLinear(dim, dim, bias=proj_bias)

    def qkv_bias(self) -> torch.Tensor | None:
        """The [3D] bias of the fused projection (zeros for projections without bias), or None."""
        biases = (self.q_bias, self.k_bias, self.v_bias)
        present = [b for b in biases if b is not None]
        if not present:
            return None
        zeros = torch.zeros_like(present[0])
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
        qkv = linear_plus_bias(self.qkv, self.qkv_bias(), x)  # [B, N, 3D], ours to rotate in place
        qkv = qkv.view(batch, tokens, 3, self.num_heads, self.head_dim)
        if fused_kernels_usable(qkv) and qkv.is_contiguous():
            rotate_qk_(qkv, *rope, num_prefix_tokens)  # one pass over the buffer on GPUs
        else:
            cos, sin = (table[:, None, None] for table in rope)  # [patches, 1, 1, d]: over q/k and heads
            patches_qk = qkv[:, num_prefix_tokens:, :2]  # the patch rows of q and k, in the fused buffer
            workspace = cpu.workspace(patches_qk.shape, cos.dtype, qkv)
            for images in cpu.cache_blocks(patches_qk, workspace):  # on CPUs a few images at a time
                rotate_(patches_qk[images], cos, sin, None if workspace is None else workspace[images])
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # strided views [B, H, N, d], no copies
        dropout = self.dropout if self.training else 0.0
        if eager:
            weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # [B, H, N, N]
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            weights = None
            out = attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out), weights


class Mlp(nn.Module):
    """Feed-forward network. Gated (SwiGLU-style) when `gated`: fc1 holds the gate rows, then the up rows,
    so one matmul computes both."""

    def __init__(self, dim: int, hidden: int, *, act: str, bias: bool, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.fc1 = FastLinear(dim, 2 * hidden if gated else hidden, bias=bias)
        self.act = activation(act)
        self.fc2 = FastLinear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.fc2(gated_activation(self.act, self.fc1(x)))  # act(gate) * up
        return self.fc2(linear_then_activation(self.fc1, self.act, x))  # act(fc1(x))


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

    @property
    def active(self) -> bool:
        """Whether it drops anything: in training, with a non-zero rate."""
        return self.training and self.drop_prob > 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (output, attention weights or None)."""
        attn, weights = self.attn(self.norm1(x), rope, num_prefix_tokens, eager=eager)
        x = self.residual(x, attn, self.ls1)
        return self.residual(x, self.mlp(self.norm2(x)), self.ls2), weights

    def residual(self, x: torch.Tensor, branch: torch.Tensor, scale: nn.Module) -> torch.Tensor:
        """x + drop_path(scale(branch)); one multiply-add where no path is dropped and nobody can tell."""
        if unobserved(scale, LayerScale) and unobserved(self.drop_path, DropPath) and not self.drop_path.active:
            return cpu.scaled_add(x, branch, scale.gamma)
        return x + self.drop_path(scale(branch))
