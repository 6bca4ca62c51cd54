"""Reusable CPU memory for the activations of inference.

A fresh multi-megabyte tensor costs page faults on first touch, which can take longer than the work done
in it (see benchmarks/README.md). `ActivationPool.empty` hands out uninitialised tensors carved from
buffers this thread keeps, each handed out again only once no tensor uses its memory any more (its
storage's reference count says so), so results may be returned and kept by the caller.

The owner is `activation_pool` (one per process, buffers per thread). Its buffers stay allocated until the
thread ends or `activation_pool.release()` (or `dinov3kit.backend.release()`) is called in that thread;
`switches.activation_pool_bytes` caps what each thread keeps.
"""

from __future__ import annotations

import math
import threading

import torch

from .config import switches

#: Smaller requests get `torch.empty`: the C allocator reuses small blocks without page faults.
MIN_BYTES = 1 << 20


class ActivationPool:
    """Per-thread pools of CPU buffers for tensors that may outlive the call that asked for them."""

    def __init__(self) -> None:
        self._local = threading.local()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor: on the CPU carved from a pooled buffer that nothing else uses, of at
        least its size and at most twice it; a new buffer joins the pool while the pool stays under its
        budget. Other devices have caching allocators, and requests under MIN_BYTES need none."""
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if torch.device(device).type != "cpu" or nbytes < MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        pool = self._buffers()
        fits = [
            entry
            for entry in pool
            if entry[0].dtype == dtype and count <= entry[0].numel() <= 2 * count and _idle(entry)
        ]
        if fits:
            buffer = min(fits, key=lambda entry: entry[0].numel())[0]
            return buffer[:count].view(shape)
        budget = switches.activation_pool_bytes
        kept = sum(_nbytes(entry) for entry in pool)
        for entry in [entry for entry in pool if _idle(entry)]:
            if kept + nbytes <= budget:
                break
            pool.remove(entry)
            kept -= _nbytes(entry)
        if kept + nbytes > budget:
            return torch.empty(shape, dtype=dtype)
        buffer = _plain_empty(count, dtype)
        pool.append((buffer, buffer.untyped_storage()))
        return buffer.view(shape)

    def kept_bytes(self) -> int:
        """Bytes this thread's pool holds."""
        return sum(_nbytes(entry) for entry in self._buffers())

    def release(self) -> None:
        """Drop this thread's buffers (new ones are made on the next use); tensors still in use stay valid."""
        self._local.__dict__.pop("pool", None)

    def _buffers(self) -> list[tuple[torch.Tensor, torch.UntypedStorage]]:
        return self._local.__dict__.setdefault("pool", [])


#: The pool the CPU fast paths draw from.
activation_pool = ActivationPool()


def _plain_empty(count: int, dtype: torch.dtype) -> torch.Tensor:
    """A normal tensor (not an inference tensor), so it is writable both inside and outside inference mode."""
    with torch.inference_mode(False):
        return torch.empty(count, dtype=dtype)


def storage_use_count(storage: torch.UntypedStorage) -> int | None:
    """How many tensors and storage objects share `storage`'s memory (torch's private
    `_storage_Use_Count`), or None where this torch lacks it."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(storage._cdata)


def _idle(entry: tuple[torch.Tensor, torch.UntypedStorage]) -> bool:
    """Whether only the pool holds this buffer's memory: its base tensor and storage object, no views.
    Without the count a buffer is never handed out twice (the pool then only saves its first faults)."""
    return storage_use_count(entry[1]) == 2


def _nbytes(entry: tuple[torch.Tensor, torch.UntypedStorage]) -> int:
    return entry[1].nbytes()
