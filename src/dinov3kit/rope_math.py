"""RoPE periods as a function of the config: below both the weights (which derive them when a checkpoint
does not store them) and the models (which rotate with them)."""

from __future__ import annotations

import torch


def rope_periods(head_dim: int, base: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Periods base^(4i / head_dim) for i in [0, head_dim / 4): one per row/column frequency.

    Computed on the CPU, then moved to the default device: under `torch.device("meta")` (how checkpoints
    are loaded) a meta `arange` would import torch._dynamo, which costs seconds and hundreds of MB.
    """
    exponents = torch.arange(head_dim // 4, dtype=torch.float32, device="cpu") * 4 / head_dim
    return (base**exponents).to(dtype=dtype, device=torch.get_default_device())  # [head_dim / 4]
