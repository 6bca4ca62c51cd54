"""transformers twins: a random DINOv3 ViT saved as transformers writes it."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DINOv3ViTConfig as HFConfig
from transformers import DINOv3ViTModel as HFModel

from .random_weights import randomize_

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1)


def hf_vit(seed: int = 0, attn_implementation: str = "eager", **config) -> HFModel:
    """A transformers DINOv3ViTModel with random non-trivial weights (tiny unless told otherwise)."""
    hf_config = HFConfig(**{**TINY, **config})
    torch.manual_seed(seed)
    model = HFModel(hf_config).eval()
    model.set_attn_implementation(attn_implementation)
    return randomize_(model, seed)


def save_hf_vit(folder: Path, seed: int = 0, **config) -> tuple[HFModel, Path]:
    model = hf_vit(seed, **config)
    model.save_pretrained(folder)
    return model, folder
