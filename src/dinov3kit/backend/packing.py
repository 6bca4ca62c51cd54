"""Prepacked weights for CPU products with few rows.

MKL (fp32) and oneDNN (bf16) re-pack the whole weight into their kernels' layout on every product. With
few rows (one image: 201 rows for a ViT at 224 px) that packing is a large part of the work (timings in
benchmarks/README.md). Products of up to MAX_ROWS rows therefore multiply by a copy of the weight packed
once (`torch.ops.mkl._mkl_reorder_linear_weight` for fp32, `torch.ops.mkldnn._reorder_linear_weight` for
bf16) and kept while the weight lives and is unchanged (its memory, layout and version counter are checked
on every call; a change packs again).

A pack serves one row count, as MKL defines it. Each weight keeps packs for its last ROW_COUNTS_PER_WEIGHT
row counts, so alternating sizes (or a short last batch) do not repack on every call, which costs more
than it saves. Apart from the budget (below), a result does not depend on earlier calls: every product of
up to MAX_ROWS rows uses a pack for its own row count.

Only module parameters are packed (a view built on each call would be packed on each call). The copies
cost about the weights' size in resident memory, so they are capped at `switches.packed_weights_bytes`
in all (DINOV3KIT_PACKED_WEIGHTS_MB; 0 turns packing off); weights beyond the cap use plain products, and
are not tried again until they change or the cache is released. The owner of the copies is
`packed_weights`; `packed_weights.release()` (or `dinov3kit.backend.release()`) frees them all, and copies
of values that have since changed (a model moved to another device or dtype) are dropped when the next
weight is packed.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from .config import switches

#: Most rows a product may have to use a packed weight; larger products keep their output in pooled
#: memory (`pools`), which pays more there (measurements in benchmarks/README.md).
MAX_ROWS = 1024
#: Row counts a weight keeps packs for (the oldest pack makes way for a new count).
ROW_COUNTS_PER_WEIGHT = 2
_UNTRIED = object()


@functools.cache
def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch packs weights of `dtype`: fp32 with MKL's packed products (x86 builds), bf16 with
    oneDNN's (where it supports bf16); without them every product is plain."""
    try:
        if dtype == torch.float32:
            return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
        if dtype == torch.bfloat16:
            mkldnn = torch.ops.mkldnn
            return hasattr(mkldnn, "_reorder_linear_weight") and bool(mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


@dataclass
class _Packs:
    """The packs of one weight."""

    weight_key: tuple  # `_key` of the weight when they were packed
    by_rows: dict[int, torch.Tensor | None]  # row count -> pack, oldest first; None: not packed (over budget)


class PackedWeights:
    """Packed copies of CPU weights, shared by all threads, dropped with their weights."""

    def __init__(self) -> None:
        self._packs: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # weight -> _Packs
        self._lock = threading.Lock()

    def linear(self, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """rows [M, K] @ weight.T + bias with a packed copy of `weight` [N, K], fp32 inference on the CPU;
        None where packing does not apply (see `packed`), and the caller multiplies as usual."""
        packed = self.packed(weight, rows.shape[0])
        if packed is None:
            return None
        return torch.ops.mkl._mkl_linear(rows, packed, weight, bias, rows.shape[0])

    def packed(self, weight: torch.Tensor, rows: int) -> torch.Tensor | None:
        """The packed copy of `weight` [N, K] (fp32: MKL's, bf16: oneDNN's) for products of `rows` rows; None
        where packing does not apply (no rows, too many rows, a weight that is not a plain parameter or not
        contiguous, over the budget, a dtype this torch does not pack)."""
        if not 0 < rows <= MAX_ROWS or type(weight) is not torch.nn.Parameter or weight.is_inference():
            return None
        if not available(weight.dtype):
            return None
        entry = self._packs.get(weight)
        fresh = entry is not None and entry.weight_key == _key(weight)
        packed = entry.by_rows.get(rows, _UNTRIED) if fresh else _UNTRIED  # (a lookup: another thread may drop it)
        if packed is _UNTRIED:
            packed = self._pack(weight, rows)
        return packed

    def kept_bytes(self) -> int:
        """Bytes the packed copies take (about the size of the weights they copy)."""
        with self._lock:
            return self._kept_bytes()

    def release(self) -> None:
        """Free every packed copy (they are rebuilt on the next small product)."""
        with self._lock:
            self._packs.clear()

    def __len__(self) -> int:
        return len(self._packs)

    def row_counts(self, weight: torch.Tensor) -> list[int]:
        """The row counts `weight` holds packs (or refusals) for, oldest first."""
        entry = self._packs.get(weight)
        return [] if entry is None else list(entry.by_rows)

    def _kept_bytes(self) -> int:
        return sum(
            weight.nbytes * sum(packed is not None for packed in held.by_rows.values())
            for weight, held in self._packs.items()
        )

    def _pack(self, weight: torch.nn.Parameter, rows: int) -> torch.Tensor | None:
        """Pack `weight` for products of `rows` rows if the budget allows, and remember the outcome until the
        weight changes (a weight over the budget is not tried again on every product)."""
        with self._lock:
            key = _key(weight)
            for other, held in list(self._packs.items()):  # values since changed (moved, converted)
                if held.weight_key != _key(other):
                    del self._packs[other]
            entry = self._packs.get(weight)
            if entry is None:
                entry = self._packs[weight] = _Packs(key, {})
            elif rows in entry.by_rows:  # another thread packed it meanwhile
                return entry.by_rows[rows]
            while entry.by_rows and len(entry.by_rows) >= ROW_COUNTS_PER_WEIGHT:
                del entry.by_rows[next(iter(entry.by_rows))]
            fits = weight.is_contiguous() and self._kept_bytes() + weight.nbytes <= switches.packed_weights_bytes
            packed = _reorder(weight.detach(), rows) if fits else None
            entry.by_rows[rows] = packed
            return packed


#: The packed copies the CPU fast path uses.
packed_weights = PackedWeights()


def _reorder(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` in the layout of its dtype's kernels for products of `rows` rows."""
    if weight.dtype == torch.float32:
        return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _key(weight: torch.nn.Parameter) -> tuple:
    """What a pack depends on besides the row count: the weight's memory, layout and version counter."""
    return weight.data_ptr(), weight.shape, weight.stride(), weight._version
