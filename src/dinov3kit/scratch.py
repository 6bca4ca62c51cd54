"""Reusable per-thread buffers for intermediate results.

A fresh multi-megabyte tensor costs page faults on first touch, which can take longer than the work done
in it (converting a 640x480 photo to float: 0.8 ms into fresh memory, 0.2-0.35 ms into a reused buffer;
CPU activations of a ViT at batch 16 likewise). Two kinds of buffers are kept per thread:

- `scratch(slot, ...)`: one buffer per named slot, handed out again on the next request for that slot
  whatever still points into it, so a result that leaves the function that asked for it must never be one.
  Used by preprocessing, where each slot's lifetime is plain to see.
- `pooled(...)`: a pool of buffers, each handed out again only once no tensor uses its memory any more
  (its storage's reference count says so), so results may be returned and kept. Used for the activations
  of CPU inference (ViT-B at batch 16 in fp32: about 150 MB kept).

Both stay allocated until the thread ends or `release()` is called.
"""

from __future__ import annotations

import math
import threading

import torch

#: Largest buffer kept for reuse (per thread and slot); larger requests get fresh memory.
SCRATCH_BYTES = 32 << 20
#: Most memory the pool of one thread keeps; beyond it, idle buffers are dropped, then requests get fresh memory.
POOL_BYTES = 512 << 20
#: Smaller requests get `torch.empty`: the C allocator reuses small blocks without page faults.
POOL_MIN_BYTES = 1 << 20
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


def pooled(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor that may be returned and kept: on the CPU it is carved from a pooled buffer
    that nothing else uses, of at least its size and at most twice it; a new buffer joins the pool while
    the pool stays under POOL_BYTES. Other devices have caching allocators, and requests under
    POOL_MIN_BYTES need none: they get `torch.empty`."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if torch.device(device).type != "cpu" or nbytes < POOL_MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    pool = _local.__dict__.setdefault("pool", [])
    fits = [
        entry
        for entry in pool
        if entry[0].dtype == dtype and count <= entry[0].numel() <= 2 * count and _idle(entry)
    ]
    if fits:
        buffer = min(fits, key=lambda entry: entry[0].numel())[0]
        return buffer[:count].view(shape)
    kept = sum(_nbytes(entry) for entry in pool)
    for entry in [entry for entry in pool if _idle(entry)]:
        if kept + nbytes <= POOL_BYTES:
            break
        pool.remove(entry)
        kept -= _nbytes(entry)
    if kept + nbytes > POOL_BYTES:
        return torch.empty(shape, dtype=dtype)
    buffer = _plain_empty(count, dtype)
    pool.append((buffer, buffer.untyped_storage()))
    return buffer.view(shape)


def release() -> None:
    """Free this thread's buffers (they are rebuilt on the next use); pooled tensors still in use stay valid."""
    _local.__dict__.pop("buffers", None)
    _local.__dict__.pop("pool", None)


def _plain_empty(count: int, dtype: torch.dtype) -> torch.Tensor:
    """A normal tensor (not an inference tensor), so it is writable both inside and outside inference mode."""
    with torch.inference_mode(False):
        return torch.empty(count, dtype=dtype)


def _idle(entry: tuple[torch.Tensor, torch.UntypedStorage]) -> bool:
    """Whether only the pool holds this buffer's memory: its base tensor and storage object, no views."""
    return torch._C._storage_Use_Count(entry[1]._cdata) == 2


def _nbytes(entry: tuple[torch.Tensor, torch.UntypedStorage]) -> int:
    return entry[1].nbytes()
