"""What every dinov3kit model shares: its config, dtype/device, gradient checkpointing and the
transformers-style `from_pretrained` / `save_pretrained` entry points (which delegate to `weights`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class PreTrainedModel(nn.Module):
    config_class: ClassVar[type]
    main_input_name: ClassVar[str] = "pixel_values"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self.attn_implementation = "sdpa"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_attn_implementation(self, name: str) -> None:
        """"sdpa" (fused kernels, the default) or "eager" (explicit softmax; always returns weights)."""
        if name not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
        self.attn_implementation = name

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute block activations in the backward pass (less memory, same gradients)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: str | torch.device | None = None,
        attn_implementation: str | None = None,
        config: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **config_overrides: Any,
    ):
        """Load weights from a hub id, a transformers folder or a Meta `.pth` checkpoint.

        `dtype`: a torch dtype or its name; None or "auto" keeps the checkpoint's dtype. `device` or
        `device_map` ("auto": the best single device) places the weights; they are read straight into
        that device and dtype. Keyword arguments that are config fields override the stored config
        (for example `out_indices=[3, 6, 9, 12]` for a backbone).
        """
        from ..weights.loading import load_model
        from ..weights.resolve import HubOptions

        return load_model(
            cls,
            source,
            dtype=dtype if dtype is not None else torch_dtype,
            device=device if device is not None else device_map,
            attn_implementation=attn_implementation,
            config=config,
            hub=HubOptions(revision, token, cache_dir, local_files_only),
            config_overrides=config_overrides,
        )

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_size: int | str = "5GB") -> Path:
        """Write `config.json` and `model.safetensors` (sharded beyond `max_shard_size`) that transformers loads."""
        from ..weights.loading import save_model

        return save_model(self, folder, max_shard_size=max_shard_size)
