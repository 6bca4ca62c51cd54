"""Fused GPU kernels for the inference hot spots; each has a plain-torch twin (`models.rope.rotate_`, the
residual and LayerNorm of `models.layers.Block`, the gated activation of `models.layers.Mlp`).

Triton ships with PyTorch's CUDA builds on Linux. It is imported lazily, only on the first CUDA call, and
the kernels are used only when `fused_kernels_usable` says so: CUDA tensors, no autograd, not inside a
compiled graph (the compiler fuses those ops itself), and `switches.fused_kernels` on. An empty input
never launches a kernel: each function returns the empty result first.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .config import switches
from .cpu import inference_only


def _kernels():
    """The Triton module (its import compiles nothing; each kernel is built on its first launch)."""
    from . import triton_kernels

    return triton_kernels


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_kernels_usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels may replace the torch ops for this tensor."""
    return switches.fused_kernels and x.is_cuda and inference_only(x) and _triton_available()


def rotate_qk_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """RoPE on the patch rows of q and k, in place, in one pass over the fused buffer qkv [B, N, 3, H, d].

    The same arithmetic as `rope.rotate_` (fp32, rounded once): each program loads one token's q and k
    channels and their rotate-half partners, and writes the result back, so the buffer is read and
    written once instead of through fp32 temporaries.
    """
    batch, tokens, _, heads, head_dim = qkv.shape
    patches = tokens - num_prefix_tokens
    if qkv.stride(-1) != 1 or qkv.stride(-2) != head_dim or qkv.stride(2) != heads * head_dim:
        raise ValueError("rotate_qk_ needs each token's q, k, v channels contiguous")
    if qkv.numel() == 0 or patches <= 0:
        return qkv
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    width = 2 * heads * head_dim
    module = _kernels()
    triton, kernel = module.triton, module.rope_qk_kernel
    with torch.cuda.device(qkv.device) if qkv.is_cuda else contextlib.nullcontext():  # CPU: the interpreter
        kernel[(batch * patches,)](
            qkv, cos, sin, patches, num_prefix_tokens, qkv.stride(0), qkv.stride(1), head_dim=head_dim,
            width=width, block=triton.next_power_of_2(width), num_warps=4 if width <= 2048 else 8,
        )  # fmt: skip
    return qkv


def add_layer_norm(
    x: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor, norm: torch.nn.LayerNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + branch * gamma, norm(x + branch * gamma)) in one pass: the layer-scaled residual and the
    LayerNorm that follows it, the sum rounded to x's dtype before it is normalised (as the two torch ops do).
    The normed output has the norm's dtype, which differs from x's when x is an fp32 residual stream."""
    dim = x.shape[-1]
    x, branch = x.contiguous(), branch.contiguous()
    out, normed = torch.empty_like(x), torch.empty_like(x, dtype=norm.weight.dtype)
    rows = x.numel() // dim
    if rows == 0:
        return out, normed
    module = _kernels()
    triton, kernel = module.triton, module.add_norm_kernel
    block_dim = triton.next_power_of_2(dim)
    block_rows = max(1, 4096 // block_dim)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[(triton.cdiv(rows, block_rows),)](
            x, branch, gamma, norm.weight, norm.bias, out, normed, rows, norm.eps, dim=dim, block_rows=block_rows,
            block_dim=block_dim, num_warps=4 if block_dim <= 1024 else 8,
        )  # fmt: skip
    return out, normed


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = [..., gate | up] (the gated MLP), in one pass instead of three."""
    x = x.contiguous()
    hidden = x.shape[-1] // 2
    out = x.new_empty(*x.shape[:-1], hidden)
    if out.numel() == 0:
        return out
    module = _kernels()
    triton, kernel = module.triton, module.silu_mul_kernel
    block = 1024
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[(triton.cdiv(out.numel(), block),)](x, out, out.numel(), hidden=hidden, block=block)
    return out
