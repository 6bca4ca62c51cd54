"""Scaled dot-product attention for inference, with the key padding that torch's CPU kernel wants.

torch's fused CPU attention (torch 2.14) in bf16 and fp16 is up to twice as slow when the number of keys is
not a multiple of 16: ViT-S/16 at 224 px has 201 tokens, and its 16 x 6 heads take 7.2 ms a layer
(1 thread, Xeon with AMX), 4.0 ms with the keys padded to 208 and the padding masked out. Beyond
PADDED_MAX_KEYS keys (the kernel then works through the keys in blocks of 512 itself) padding measured
slower, and on CPUs without bf16 matrix units it pays nothing, so `attention` pads only where it was measured
to help (benchmarks/README.md). The padding keys are zeros and their scores -inf: each query's softmax
weights, and so its output, are those of the unpadded keys.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import cpu
from .pools import activation_pool

#: Key counts are padded up to a multiple of this.
KEY_ALIGNMENT = 16
#: Key counts from which padding is left out.
PADDED_MAX_KEYS = 512


def padded_key_count(keys: int) -> int:
    """The number of keys to hand torch's CPU kernel for `keys` real ones: the next multiple of
    KEY_ALIGNMENT below PADDED_MAX_KEYS, `keys` itself from there on."""
    if keys >= PADDED_MAX_KEYS:
        return keys
    return -(-keys // KEY_ALIGNMENT) * KEY_ALIGNMENT


def key_padding_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `attention` pads the keys of these inputs: bf16/fp16 inference on a CPU with half-precision
    matrix units, and a key count that `padded_key_count` changes."""
    return (
        q.dtype in (torch.bfloat16, torch.float16)
        and cpu.cpu_inference(q, None, k, v)
        and cpu.has_half_matmul_units()
        and padded_key_count(k.shape[-2]) != k.shape[-2]
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)` for q, k, v [..., tokens, head_dim];
    in half-precision CPU inference with the keys and values copied into a zero-padded buffer and the
    padding masked out (`key_padding_usable`)."""
    if dropout_p or not key_padding_usable(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    keys = k.shape[-2]
    padded = padded_key_count(keys)
    buffer = activation_pool.empty((2, *k.shape[:-2], padded, k.shape[-1]), k.dtype, k.device)
    buffer[..., keys:, :].zero_()
    padded_k, padded_v = buffer.unbind(0)
    padded_k[..., :keys, :].copy_(k)
    padded_v[..., :keys, :].copy_(v)
    mask = _padding_mask(q.shape[-2], keys, padded, q.dtype)
    return F.scaled_dot_product_attention(q, padded_k, padded_v, attn_mask=mask)


@functools.lru_cache(maxsize=16)
def _padding_mask(queries: int, keys: int, padded: int, dtype: torch.dtype) -> torch.Tensor:
    """[queries, padded] additive mask: 0 for the real keys, -inf for the padding."""
    with torch.inference_mode(False):
        mask = torch.zeros(queries, padded, dtype=dtype)
        mask[:, keys:] = float("-inf")
    return mask
