"""Reusable per-thread buffers for intermediate results of preprocessing.

A fresh multi-megabyte tensor costs page faults on first touch, which can take longer than the work done
in it (timings in benchmarks/README.md). `scratch(slot, ...)` keeps one buffer per named slot and thread,
handed out again on the next request for that slot whatever still points into it, so a result that leaves
the function that asked for it must never be one. Used by preprocessing (`resize`), where each slot's
lifetime is plain to see. (Model activations that callers may keep use `backend.pools` instead.)

The buffers stay allocated until the thread ends or `release()` is called in it.
"""

from __future__ import annotations

import math
import threading

import torch

#: Largest buffer kept for reuse (per thread and slot); larger requests get fresh memory.
SCRATCH_BYTES = 32 << 20
_local = threading.local()


def scratch(
    slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, max_bytes: int = SCRATCH_BYTES
) -> torch.Tensor:
    """An uninitialised tensor for an intermediate result that does not outlive its caller. CPU buffers
    up to `max_bytes` are kept per thread and slot, grown as needed, and reused."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if torch.device(device).type != "cpu" or nbytes > max_bytes:
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.numel() < count:
        buffer = buffers[(slot, dtype)] = _plain_empty(count, dtype)
    return buffer[:count].view(shape)


def release() -> None:
    """Free this thread's scratch buffers (they are rebuilt on the next use)."""
    _local.__dict__.pop("buffers", None)


def _plain_empty(count: int, dtype: torch.dtype) -> torch.Tensor:
    """A normal tensor (not an inference tensor), so it is writable both inside and outside inference mode."""
    with torch.inference_mode(False):
        return torch.empty(count, dtype=dtype)
