"""Fused kernels for the inference hot spots; each has a plain-torch twin in rope.py / layers.py.

On GPUs, Triton kernels (below). On CPUs, oneDNN's linear with the exact GELU fused into it
(`cpu_linear_gelu`), which saves a pass over the MLP's widest activation.

Triton ships with PyTorch's CUDA builds on Linux. It is imported lazily, only on the first CUDA call, and
everything here is used only when `fused_kernels_usable` says so: CUDA tensors, no autograd, not inside
a compiled graph (the compiler fuses those ops itself), and `enabled` (set from DINOV3KIT_FUSED_KERNELS=0 or
by assignment) is true.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

#: Switch for the fused kernels (e.g. to time or debug the plain torch path).
enabled = os.environ.get("DINOV3KIT_FUSED_KERNELS", "1") != "0"


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


#: Rows (tokens in the batch) up to which the oneDNN linear + GELU beats MKL's product and a GELU pass.
#: Measured on the 2-core box, whole model: ViT-S 1.06x and ViT-B 1.09x at batch 1 (201 rows); at batch
#: 16 (3216 rows) 1.01x and 0.97x, so larger inputs keep the plain ops.
CPU_LINEAR_GELU_MAX_ROWS = 1024


def inference_only(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether ops without autograd formulas may run: no gradient is tracked through `x` (or `weight`), we
    are not inside a compiled graph (the compiler fuses by itself), and `weight` is a plain tensor
    (quantized tensor types keep their own kernels)."""
    if torch.compiler.is_compiling():
        return False
    if weight is not None and type(weight) not in (torch.Tensor, torch.nn.Parameter):
        return False
    tracked = x.requires_grad or (weight is not None and weight.requires_grad)
    return not (torch.is_grad_enabled() and tracked)


def cpu_fp32_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """fp32 inference on the CPU with a plain weight: where the CPU fast paths apply."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and inference_only(x, weight)


def cpu_linear_gelu_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `cpu_linear_gelu` may replace linear + GELU: fp32 CPU inference with plain weights, few rows."""
    return (
        enabled
        and x.numel() <= CPU_LINEAR_GELU_MAX_ROWS * x.shape[-1]
        and cpu_fp32_inference(x, weight)
        and _onednn_linear() is not None
    )


@functools.cache
def _onednn_linear():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def cpu_linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """gelu(x @ weight.T + bias) (exact GELU) in one oneDNN call: the activation is applied as each block of
    the product is written (ViT-S's fc1 at batch 1, 2 threads: 3.4 -> 2.2 ms; the same values)."""
    return _onednn_linear()(x, weight, bias, "gelu", [], "none")


def fused_kernels_usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels may replace the torch ops for this tensor."""
    return enabled and x.is_cuda and inference_only(x) and _triton_available()


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
    module = _kernels()
    triton, kernel = module.triton, module.silu_mul_kernel
    block = 1024
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[(triton.cdiv(out.numel(), block),)](x, out, out.numel(), hidden=hidden, block=block)
    return out
