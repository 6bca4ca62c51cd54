"""CPU kernels for the products of inference: prepacked weights (`packing`), outputs in pooled memory
(`pools`), oneDNN's linear with the exact GELU fused in, and fp32 products for half-precision models on
CPUs without half-precision matrix units. Measurements behind the thresholds: benchmarks/README.md."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .config import switches
from .packing import packed_weights
from .pools import activation_pool

#: Rows from which an fp32 product beats an emulated half-precision one (fewer do not repay converting the weight).
UPCAST_MIN_ROWS = 64
#: Rows (tokens in the batch) up to which the oneDNN linear + GELU beats MKL's product and a GELU pass.
LINEAR_GELU_MAX_ROWS = 1024
#: Bytes of a memory-bound step's operands that stay in one core's cache between its passes (L2: 1-2 MB).
CACHE_BLOCK_BYTES = 1 << 20
#: Dtypes whose CPU activations go to pooled memory.
POOLED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def plain_tensor(tensor: torch.Tensor | None) -> bool:
    """Whether `tensor` is a plain tensor or parameter (quantized tensor subclasses keep their own kernels)."""
    return tensor is None or type(tensor) in (torch.Tensor, torch.nn.Parameter)


def inference_only(x: torch.Tensor, weight: torch.Tensor | None = None, *others: torch.Tensor | None) -> bool:
    """Whether ops without autograd formulas may run: no gradient is tracked through `x`, `weight` or the
    `others` (a bias, a branch), we are not inside a compiled graph (the compiler fuses by itself), and
    `weight` is a plain tensor."""
    if torch.compiler.is_compiling() or not plain_tensor(weight):
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, *others)))


def cpu_inference(x: torch.Tensor, weight: torch.Tensor | None = None, *others: torch.Tensor | None) -> bool:
    """Inference on the CPU in fp32, bf16 or fp16 (with a plain weight) on a non-empty input: where outputs
    may go to pooled memory."""
    return x.device.type == "cpu" and x.dtype in POOLED_DTYPES and x.numel() > 0 and inference_only(x, weight, *others)


def fp32_inference(x: torch.Tensor, weight: torch.Tensor | None = None, *others: torch.Tensor | None) -> bool:
    """fp32 inference on the CPU (with a plain weight) on a non-empty input: where the fp32 kernels apply."""
    return x.dtype == torch.float32 and cpu_inference(x, weight, *others)


@functools.cache
def has_half_matmul_units() -> bool:
    """Whether this CPU multiplies bf16/fp16 matrices natively (AVX512-BF16 or AMX); without them oneDNN
    emulates those kernels at a fraction of the fp32 speed."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def rope_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the RoPE tables for tokens `x`: x's own for bf16/fp16 CPU inference, where the rotation's
    passes over q and k then need no conversions (ViT-S, bf16: a third of its time; the model's error against
    fp32 does not change, benchmarks/README.md), fp32 elsewhere."""
    return x.dtype if cpu_inference(x) and x.dtype != torch.float32 else torch.float32


def bf16_residual_stream(tokens: torch.Tensor) -> bool:
    """Whether a bf16 model keeps its residual stream in bf16 for `tokens`: in CPU inference. There the fp32
    stream costs a conversion after every LayerNorm and twice the traffic of every residual sum: ViT-S at
    batch 16 on a Xeon with AMX, 1 thread, 292 vs 268 ms a forward (ViT-B 830 vs 805 ms), for a relative
    error against fp32 of 6.6e-3 vs 1.02e-2 (transformers' bf16: 1.05e-2). GPUs (whose fused residual +
    LayerNorm kernel reads the fp32 stream in the same pass) and autograd keep fp32."""
    return tokens.dtype == torch.bfloat16 and cpu_inference(tokens)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` (the same sums), with three CPU inference paths:

    - fp32: a product of few rows multiplies by a prepacked copy of the weight (`packing`); a larger one
      is written into pooled memory (`pools`): fresh activation buffers cost page faults on first touch.
    - bf16/fp16 on a CPU without half-precision matrix units: a product of at least UPCAST_MIN_ROWS rows is
      computed in fp32 and rounded once to the input dtype. That is the arithmetic of oneDNN's half kernels
      (exact products, fp32 sums), and much faster on such CPUs.
    - bf16 on a CPU with them: oneDNN's linear with the bias added in the kernel (`onednn_linear`), with a
      prepacked weight for few rows.

    Weights of other tensor types (quantized) keep their own kernels, and compiled graphs leave the choice
    to the compiler."""
    if fp32_inference(x, weight, bias):
        rows = x.reshape(-1, x.shape[-1])
        out = packed_weights.linear(rows, weight, bias)
        if out is None:
            out = activation_pool.empty((rows.shape[0], weight.shape[0]), x.dtype, x.device)
            if bias is None:
                torch.mm(rows, weight.t(), out=out)
            else:
                torch.addmm(bias, rows, weight.t(), out=out)
        return out.view(*x.shape[:-1], weight.shape[0])
    if (
        x.dtype in (torch.bfloat16, torch.float16)
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and plain_tensor(weight)
        and x.numel() >= UPCAST_MIN_ROWS * x.shape[-1] > 0
        and not has_half_matmul_units()
    ):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    if onednn_bf16_usable(x, weight, bias):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def onednn_bf16_usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `onednn_linear` may compute a bf16 product: CPU inference with plain bf16 weights on a CPU
    with bf16 matrix units, and a torch with oneDNN's linear."""
    return (
        x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and (bias is None or bias.dtype == torch.bfloat16)
        and cpu_inference(x, weight, bias)
        and has_half_matmul_units()
        and _onednn_linear() is not None
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """activation(x @ weight.T + bias) in one oneDNN call ("none" or the exact "gelu"): the bias and the
    activation are applied as each block of the product is written (no broadcast copy of the bias, no second
    pass), with a prepacked copy of the weight where `packing` keeps one (bf16, few rows)."""
    packed = packed_weights.packed(weight, x.numel() // x.shape[-1]) if x.dtype == torch.bfloat16 else None
    algorithm = "none" if activation == "gelu" else ""
    return _onednn_linear()(x, weight if packed is None else packed, bias, activation, [], algorithm)


@functools.cache
def _onednn_linear():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def linear_gelu_usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `linear_gelu` may replace linear + exact GELU: fused kernels on, and either fp32 CPU inference
    with plain weights and few rows, or a bf16 product `onednn_bf16_usable` allows."""
    if not switches.fused_kernels:
        return False
    if onednn_bf16_usable(x, weight, bias):
        return True
    small = x.numel() <= LINEAR_GELU_MAX_ROWS * x.shape[-1]
    return small and fp32_inference(x, weight, bias) and _onednn_linear() is not None


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """gelu(x @ weight.T + bias) (exact GELU) in one oneDNN call: the activation is applied as each block of
    the product is written, which saves a pass over the MLP's widest activation (the values of the two ops,
    except that a bf16 product is rounded once, after the GELU, instead of before and after it)."""
    return onednn_linear(x, weight, bias, "gelu")


def scaled_add(x: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x + branch * scale in one pass, into pooled memory for CPU inference."""
    if cpu_inference(x, scale, branch) and branch.shape == x.shape:
        dtype = torch.promote_types(torch.promote_types(x.dtype, branch.dtype), scale.dtype)
        return torch.addcmul(x, branch, scale, out=activation_pool.empty(x.shape, dtype, x.device))
    return torch.addcmul(x, branch, scale)


def workspace(shape: tuple[int, ...], dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor | None:
    """Pooled memory for a temporary of CPU inference on `like`, or None (let the op allocate)."""
    return activation_pool.empty(shape, dtype, like.device) if cpu_inference(like) else None


def cache_blocks(x: torch.Tensor, *others: torch.Tensor | None) -> list[slice]:
    """Slices of the batch (x's first dimension) for a step that makes several memory-bound passes over x
    and `others`: in CPU inference, as many images as keep their operands within CACHE_BLOCK_BYTES (at
    least one), so the later passes read from the cache instead of memory; elsewhere the whole batch.
    RoPE's four passes over ViT-S's q and k at batch 16, 1 thread, Xeon with AMX: bf16 2.07 -> 1.63 ms,
    fp32 2.71 -> 1.76 ms (benchmarks/README.md)."""
    if x.shape[0] <= 1 or not cpu_inference(x):
        return [slice(None)]
    image_bytes = sum(t[0].numel() * t.element_size() for t in (x, *others) if t is not None)
    step = max(1, CACHE_BLOCK_BYTES // image_bytes)  # image_bytes > 0: cpu_inference saw a non-empty x
    return [slice(start, min(start + step, x.shape[0])) for start in range(0, x.shape[0], step)]
