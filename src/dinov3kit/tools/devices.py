"""Device and dtype choices of the tools, where "auto" means the fastest choice the machine has."""

from __future__ import annotations

import torch

from ..weights.placement import resolve_device, resolve_dtype


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (the default here): CUDA, then MPS, then the CPU, as everywhere (`resolve_device`)."""
    return resolve_device("auto" if device is None else device)


#: The --dtype help of every command.
DTYPE_HELP = "auto (bf16 on GPUs and on CPUs with AMX or AVX512-BF16, else fp32), bf16, fp16, fp32"


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto" here is `resolve_dtype`'s "fast" (`fast_dtype`: bfloat16 on GPUs and on CPUs with bf16 matrix
    units, float32 elsewhere); otherwise a dtype or its name (bf16, fp16, fp32)."""
    if dtype in (None, "auto", "fast"):
        return resolve_dtype("fast", device=device)
    try:
        return resolve_dtype(dtype)
    except ValueError:
        raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {dtype!r}") from None
