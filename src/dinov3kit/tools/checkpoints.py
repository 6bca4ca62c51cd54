"""`convert` (Meta .pth ↔ transformers folder) and `info` (what a checkpoint holds)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..fileio import atomic_write, input_files, refuse_overwriting_sources
from ..processing import processor_for_model
from ..variants import NORMALIZATION, find_vit_variant
from ..weights import save_meta_checkpoint
from .runtime import load_image_model, model_source

META_SUFFIXES = (".pth", ".pt")


def convert_checkpoint(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Write the checkpoint `source` (hub id, folder or .pth) to `destination`: a Meta `.pth` file when
    its name ends in .pth/.pt, else a transformers folder. Weights keep their stored dtype.

    A destination that is the source, or holds one of its files (same path, symlink or hard link), is
    refused (`dinov3kit.fileio.SameFileError`) before anything is read: the source is memory-mapped
    while the destination is written. A `.pth` is written beside its name and renamed into place."""
    destination = Path(destination)
    source = model_source(source)
    sources = input_files(source)
    refuse_overwriting_sources(destination, sources)
    if destination.suffix in META_SUFFIXES:
        if destination.is_dir():
            raise ValueError(f"{destination}: a folder; name the .pth file to write, or a folder without a .pth suffix")
        model = load_image_model(source, torch.device("cpu"), None)
        with atomic_write(destination, sources=sources) as temporary:
            save_meta_checkpoint(model, temporary)
        return destination
    if destination.exists() and not destination.is_dir():
        raise ValueError(f"{destination}: exists and is not a folder; a transformers checkpoint is a folder (or name a .pth file)")
    model = load_image_model(source, torch.device("cpu"), None)
    return model.save_pretrained(destination)


def describe_model(source: str | os.PathLike | None = None) -> dict:
    """Variant, architecture, parameter count, stored dtype and input normalisation of a checkpoint.

    The weights are read but not kept (they go to the meta device), so this is cheap in memory.
    """
    source = model_source(source)
    model = load_image_model(source, torch.device("meta"), None)
    config = model.config
    processor = processor_for_model(config)
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    dataset = next((name for name, stats in NORMALIZATION.items() if stats == (mean, std)), "custom")
    info = {
        "model": source,
        "class": type(model).__name__,
        "model_type": config.model_type,
        "variant": _variant_name(config),
        "parameters": model.num_parameters(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "pretrain_dataset": config.extra.get("dinov3_pretrain_dataset", "unknown"),
        "normalization": f"{dataset} (mean {list(mean)}, std {list(std)})",
    }
    for key in ("patch_size", "hidden_size", "hidden_sizes", "num_hidden_layers", "depths", "num_attention_heads", "num_register_tokens"):
        if hasattr(config, key):
            info[key] = getattr(config, key)
    return info


def _variant_name(config) -> str:
    if config.model_type == "dinov3_vit":
        variant = find_vit_variant(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            intermediate_size=config.intermediate_size,
            use_gated_mlp=config.use_gated_mlp,
        )
        return variant.name if variant else "custom ViT"
    return config.model_type
