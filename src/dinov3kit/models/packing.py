"""Prepacked weights for CPU products with few rows.

MKL re-packs the whole weight into its kernels' layout on every product. With few rows (one image: 201
rows for a ViT at 224 px) that packing is a large part of the work: ViT-S's 1536-wide MLP weight, 201
rows, 2 threads: 1.88 ms plain, 1.42 ms prepacked, the same values. Products of up to MAX_ROWS rows
therefore multiply by a copy of the weight packed once (`torch.ops.mkl._mkl_reorder_linear_weight`) and
kept while the weight lives and is unchanged: its data, version counter and the row count are checked
on every call, and a change packs again.

Only module parameters are packed (a view built on each call would be packed on each call). The copies
cost about the weights' size in resident memory (MKL reserves more address space than it touches), so
they are capped at BUDGET_BYTES in all (environment variable DINOV3KIT_PACKED_WEIGHTS_MB, 0 turns packing
off); weights beyond the cap use plain products, and are not tried again until they change or
`release()` (call it after changing BUDGET_BYTES at run time). Copies of values that have since changed (a
model moved to another device or dtype) are dropped when the next weight is packed; `release()` frees all
copies now.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import NamedTuple

import torch
from torch.utils.weak import WeakTensorKeyDictionary

#: Most rows a product may have to use a packed weight. Whole model, 2-core box, in-process A/B: ViT-S
#: 1.03-1.08x at batch 1 (201 rows) and 1.09x at batch 4 (804 rows), ViT-B 1.07-1.14x at batch 1. Larger
#: products keep their output in pooled memory (`scratch.pooled`), which pays more there.
MAX_ROWS = 1024
#: Most resident memory the packed copies may take, in all.
BUDGET_BYTES = int(os.environ.get("DINOV3KIT_PACKED_WEIGHTS_MB", "512")) << 20


class _Pack(NamedTuple):
    key: tuple  # `_key` of the weight when it was packed
    packed: torch.Tensor | None  # None: not packed (over the budget, or not contiguous)


_packs: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # weight -> _Pack, dropped with the weight
_lock = threading.Lock()


@functools.cache
def _available() -> bool:
    """Whether this torch has MKL's packed products (x86 builds do)."""
    try:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):
        return False


def linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """rows [M, K] @ weight.T + bias with a packed copy of `weight` [N, K], fp32 inference on the CPU; None
    where packing does not apply (too many rows, a weight that is not a plain parameter, over the budget,
    no MKL), and the caller multiplies as usual."""
    count = rows.shape[0]
    if count > MAX_ROWS or type(weight) is not torch.nn.Parameter or weight.is_inference() or not _available():
        return None
    pack = _packs.get(weight)
    if pack is None or pack.key != _key(weight, count):
        pack = _pack(weight, count)
    if pack.packed is None:
        return None
    return torch.ops.mkl._mkl_linear(rows, pack.packed, weight, bias, count)


def _key(weight: torch.nn.Parameter, rows: int) -> tuple:
    """What a pack depends on: the row count and the weight's memory, layout and version counter."""
    return rows, weight.data_ptr(), weight.shape, weight.stride(), weight._version


def _pack(weight: torch.nn.Parameter, rows: int) -> _Pack:
    """Pack `weight` for products of `rows` rows if the budget allows, and remember the outcome until the
    weight changes (a weight over the budget is not tried again on every product)."""
    with _lock:
        key = _key(weight, rows)
        pack = _packs.get(weight)
        if pack is not None and pack.key == key:  # another thread packed it meanwhile
            return pack
        for other, other_pack in list(_packs.items()):  # values since changed (moved, converted), this one's too
            if other_pack.key != _key(other, other_pack.key[0]):
                del _packs[other]
        kept = sum(other.nbytes for other, held in _packs.items() if held.packed is not None and other is not weight)
        fits = weight.is_contiguous() and kept + weight.nbytes <= BUDGET_BYTES
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), rows) if fits else None
        pack = _packs[weight] = _Pack(key, packed)
        return pack


def release() -> None:
    """Free every packed copy (they are rebuilt on the next small product)."""
    with _lock:
        _packs.clear()
