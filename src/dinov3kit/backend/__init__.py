"""The fast paths of dinov3kit, in one place: the models in `dinov3kit.models` read like the math and
reach these only through the module subclasses and fusions of `backend.modules`.

- `config`: the switches (environment variables read once) every fast path reads.
- `modules`: `FastLinear`, `FastConv2d` and the fusions of two modules into one kernel.
- `cpu`: CPU products (prepacked weights, pooled outputs, oneDNN linear + GELU, fp32 products for
  half-precision models); `packing` and `pools` own the memory they keep.
- `attention`: scaled dot-product attention with the keys padded to what torch's CPU kernel wants.
- `kernels` (+ `triton_kernels`): fused GPU kernels (RoPE, residual + LayerNorm, gated SiLU).
- `allocator`: glibc settings that keep freed activations for reuse, applied only by the `dinov3kit`
  command to its own process.

Memory kept between calls has an owner and a `release()`: `packing.packed_weights` (shared by all threads)
and `pools.activation_pool` (per thread). `release()` below frees both.
"""

from __future__ import annotations

from .config import Switches, overridden, switches
from .packing import packed_weights
from .pools import activation_pool


def release() -> None:
    """Free the memory the fast paths keep: every packed weight, and this thread's pooled activation
    buffers (other threads release their own). Both are rebuilt on the next forward that needs them."""
    packed_weights.release()
    activation_pool.release()


__all__ = ["Switches", "activation_pool", "overridden", "packed_weights", "release", "switches"]
