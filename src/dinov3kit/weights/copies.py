"""Tensor copies made while loading a checkpoint, on the calling thread, with torch's settings untouched.

Copying into freshly allocated memory is bound by page faults, which the threads of one process serialise
on: torch's multi-threaded copies load a ViT-B several times slower than one thread does. A CPU copy of at
most `SERIAL_ELEMENTS` elements never leaves the calling thread, so large CPU copies go in such pieces
(instead of lowering `torch.set_num_threads`, which would change the whole process).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: torch's intra-op grain size: an elementwise CPU copy of at most this many elements runs on one thread.
SERIAL_ELEMENTS = 32768


def concatenate(parts: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """`torch.cat(parts)` (along dim 0) in `dtype` (default: the first part's), copied on the calling thread
    when the parts are on the CPU. The result is always a new tensor."""
    dtype = dtype or parts[0].dtype
    first = parts[0]
    if any(part.dim() == 0 or part.device.type != "cpu" for part in parts):
        return torch.cat(list(parts)).to(dtype) if len(parts) > 1 else first.to(dtype, copy=True)
    out = torch.empty((sum(part.shape[0] for part in parts), *first.shape[1:]), dtype=dtype)
    start = 0
    for part in parts:
        source = part.reshape(-1)
        target = out.view(-1)[start : start + source.numel()]
        for target_piece, source_piece in zip(target.split(SERIAL_ELEMENTS), source.split(SERIAL_ELEMENTS)):
            target_piece.copy_(source_piece)
        start += source.numel()
    return out


def convert(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """`tensor.to(device, dtype)`: a CPU to CPU conversion is copied on the calling thread."""
    dtype = dtype or tensor.dtype
    if tensor.dtype == dtype or device.type != "cpu" or tensor.device.type != "cpu" or tensor.dim() == 0:
        return tensor.to(device=device, dtype=dtype)
    return concatenate([tensor], dtype)
