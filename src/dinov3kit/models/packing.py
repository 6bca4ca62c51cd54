"""Prepacked weights for CPU products with few rows.

MKL re-packs the whole weight into its kernels' layout on every product. With few rows (one image: 201
rows for a ViT at 224 px) that packing is a large part of the work: ViT-S's 1536-wide MLP weight, 201
rows, 2 threads: 1.88 ms plain, 1.42 ms prepacked, the same values. Products of up to MAX_ROWS rows
therefore multiply by a copy of the weight packed once (`torch.ops.mkl._mkl_reorder_linear_weight`) and
kept while the weight lives and is unchanged (its memory, layout and version counter are checked on
every call; a change packs again).

A pack serves one row count, as MKL defines it. Each weight keeps packs for its last ROW_COUNTS_PER_WEIGHT
row counts, so alternating sizes (or a short last batch) do not repack on every call, which costs more
than it saves (ViT-S, 224 and 208 px in turn, repacking on each change: 0.9x). Apart from the budget
(below), a result does not depend on earlier calls: every product of up to MAX_ROWS rows uses a pack for
its own row count.

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
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakTensorKeyDictionary

#: Most rows a product may have to use a packed weight. Whole model, 2-core box, in-process A/B: ViT-S
#: 1.03-1.09x at batch 1 (201 rows) and 1.09x at batch 4 (804 rows), ViT-B 1.07-1.14x at batch 1. Larger
#: products keep their output in pooled memory (`scratch.pooled`), which pays more there.
MAX_ROWS = 1024
#: Most resident memory the packed copies may take, in all.
BUDGET_BYTES = int(os.environ.get("DINOV3KIT_PACKED_WEIGHTS_MB", "512")) << 20
#: Row counts a weight keeps packs for (the oldest pack makes way for a new count).
ROW_COUNTS_PER_WEIGHT = 2


@dataclass
class _Packs:
    """The packs of one weight."""

    weight_key: tuple  # `_key` of the weight when they were packed
    by_rows: dict[int, torch.Tensor | None]  # row count -> pack, oldest first; None: not packed (over budget)


_packs: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # weight -> _Packs, dropped with the weight
_lock = threading.Lock()
_UNTRIED = object()


@functools.cache
def _available() -> bool:
    """Whether this torch has MKL's packed products (x86 builds do)."""
    try:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):
        return False


def linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """rows [M, K] @ weight.T + bias with a packed copy of `weight` [N, K], fp32 inference on the CPU; None
    where packing does not apply (too many rows, a weight that is not a plain parameter or not contiguous,
    over the budget, no MKL), and the caller multiplies as usual."""
    count = rows.shape[0]
    if count > MAX_ROWS or type(weight) is not torch.nn.Parameter or weight.is_inference() or not _available():
        return None
    entry = _packs.get(weight)
    packed = entry.by_rows.get(count, _UNTRIED) if entry is not None and entry.weight_key == _key(weight) else _UNTRIED
    if packed is _UNTRIED:  # (a lookup, not `in` + index: another thread may drop the pack in between)
        packed = _pack(weight, count)
    if packed is None:
        return None
    return torch.ops.mkl._mkl_linear(rows, packed, weight, bias, count)


def _key(weight: torch.nn.Parameter) -> tuple:
    """What a pack depends on besides the row count: the weight's memory, layout and version counter."""
    return weight.data_ptr(), weight.shape, weight.stride(), weight._version


def _pack(weight: torch.nn.Parameter, rows: int) -> torch.Tensor | None:
    """Pack `weight` for products of `rows` rows if the budget allows, and remember the outcome until the
    weight changes (a weight over the budget is not tried again on every product)."""
    with _lock:
        key = _key(weight)
        for other, held in list(_packs.items()):  # values since changed (moved, converted), this one's too
            if held.weight_key != _key(other):
                del _packs[other]
        entry = _packs.get(weight)
        if entry is None:
            entry = _packs[weight] = _Packs(key, {})
        elif rows in entry.by_rows:  # another thread packed it meanwhile
            return entry.by_rows[rows]
        while entry.by_rows and len(entry.by_rows) >= ROW_COUNTS_PER_WEIGHT:
            del entry.by_rows[next(iter(entry.by_rows))]
        kept = sum(
            other.nbytes * sum(packed is not None for packed in held.by_rows.values()) for other, held in _packs.items()
        )
        fits = weight.is_contiguous() and kept + weight.nbytes <= BUDGET_BYTES
        packed = entry.by_rows[rows] = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), rows) if fits else None
        return packed


def release() -> None:
    """Free every packed copy (they are rebuilt on the next small product)."""
    with _lock:
        _packs.clear()
