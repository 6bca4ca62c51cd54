"""What every dinov3kit model shares: its config, dtype/device, gradient checkpointing and the
transformers-style `from_pretrained` / `save_pretrained` entry points (which delegate to `weights`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..quantize import quantize
from ..source import HubOptions
from ..weights.loading import load_model, save_model

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class PreTrainedModel(nn.Module):
    config_class: ClassVar[type]
    main_input_name: ClassVar[str] = "pixel_values"
    #: Names of module lists whose items may sit on different devices (see `weights.placement`).
    split_module_lists: ClassVar[tuple[str, ...]] = ()

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

    def compile(self, *, dynamic: bool | None = None, fullgraph: bool = True, mode: str | None = None, **kwargs: Any):
        """Compile the forward pass in place with `torch.compile` (one graph, no breaks) and return the model.

        Shapes: with `dynamic=None` the first input shape is compiled as is and a second one triggers a
        single recompilation with symbolic batch/height/width that serves every later size; `dynamic=True`
        compiles symbolically from the start (one compilation for all resolutions, plus one the first time
        height and width differ if the first input was square); `dynamic=False`
        specialises each shape (fixed-shape serving). `mode="reduce-overhead"` replays CUDA graphs on GPUs,
        `"max-autotune"` also tunes matmuls. Other keyword arguments go to `torch.compile`.
        On CPUs the eager model's own fast paths do about as well (benchmarks/README.md).
        """
        super().compile(dynamic=dynamic, fullgraph=fullgraph, mode=mode, **kwargs)
        return self

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: str | dict | torch.device | int | None = None,
        max_memory: dict | None = None,
        attn_implementation: str | None = None,
        config: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        torch_dtype: torch.dtype | str | None = None,
        quantization_config: Any = None,
        **config_overrides: Any,
    ):
        """Load weights from a hub id, a transformers folder or a Meta `.pth` checkpoint.

        `dtype`: a torch dtype or its name; None or "auto" keeps the checkpoint's dtype. `device` places the
        whole model ("auto": CUDA, then MPS, then the CPU). `device_map` as in transformers: a device, a dict
        {module name: device}, or "auto": one device when the model fits (the first GPU with room), split
        between blocks across the visible GPUs when it does not, the CPU for the rest as a last resort
        (`max_memory`, e.g. {0: "20GiB", "cpu": "64GiB"}, caps what each device takes; default 90% of its
        free memory). Weights are read straight into their device and dtype. Keyword arguments that are config fields override the stored config
        (for example `out_indices=[3, 6, 9, 12]` for a backbone). `quantization_config`: a torchao
        config, a transformers `TorchAoConfig` or a `dinov3kit.quantize` scheme name ("int8", "int4", ...)
        applied to the loaded weights.
        """

        model = load_model(
            cls,
            source,
            dtype=dtype if dtype is not None else torch_dtype,
            device=device,
            device_map=device_map,
            max_memory=max_memory,
            attn_implementation=attn_implementation,
            config=config,
            hub=HubOptions(revision, token, cache_dir, local_files_only),
            config_overrides=config_overrides,
        )
        if quantization_config is not None:

            quantize(model, quantization_config)
        return model

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_size: int | str = "5GB") -> Path:
        """Write `config.json` and `model.safetensors` (sharded beyond `max_shard_size`) that transformers loads."""

        return save_model(self, folder, max_shard_size=max_shard_size)


def layer_indices(n: int | Sequence[int], count: int) -> list[int]:
    """Meta's `get_intermediate_layers` selection: the last `n` of `count` layers, or the listed 0-based
    indices (negative ones from the end)."""
    return list(range(count - n, count)) if isinstance(n, int) else [i % count for i in n]


class BackboneMixin:
    """Stage selection read from the config, as transformers' backbones expose it; a backbone class
    defines `num_features` (channels of every stage)."""

    config: Any
    num_features: list[int]

    @property
    def stage_names(self) -> list[str]:
        return self.config.stage_names

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @property
    def channels(self) -> list[int]:
        """Channels of each selected stage."""
        return [self.num_features[self.stage_names.index(name)] for name in self.out_features]
