"""dino.txt models as the tools load them: recognising a dino.txt source, finding the backbone of Meta's
head checkpoint, and `ImageTower`, the image side that `embed`, `search`, `pca` and `similarity` use."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.dinotxt import DINOv3TextModel
from ..models.outputs import BaseModelOutputWithPooling
from .devices import pick_device, pick_dtype

MODEL_TYPE = "dinov3_dinotxt"
#: Path of the ViT-L/16 backbone `.pth` for a Meta dino.txt head checkpoint not lying beside it.
BACKBONE_ENV = "DINOV3KIT_DINOTXT_BACKBONE"
BACKBONE_GLOB = "dinov3_vitl16_pretrain_*.pth"


class NotATextModelError(ValueError):
    """A model without a text encoder was given to a text tool; the message says which models can."""


def text_models_hint() -> str:
    return (
        "text queries, zero-shot labels and segmentation need a dino.txt model: a folder written by "
        "DINOv3TextModel.save_pretrained (config.json with model_type 'dinov3_dinotxt'), or Meta's "
        "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth with its backbone "
        f"{BACKBONE_GLOB} in the same folder (or named by ${BACKBONE_ENV})"
    )


def is_text_model_source(source: str | os.PathLike | None) -> bool:
    """Whether `source` names a dino.txt checkpoint (our folder, or Meta's head-and-text `.pth`)."""
    if source is None:
        return False
    path = Path(source).expanduser()
    if path.is_dir():
        config = path / "config.json"
        try:
            return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
        except (OSError, ValueError):
            return False
    return path.suffix == ".pth" and "dinotxt" in path.name


def find_backbone(head: Path) -> Path:
    """The ViT-L/16 `.pth` for Meta's head checkpoint `head`: ${BACKBONE_ENV}, else the one file beside it."""
    named = os.environ.get(BACKBONE_ENV)
    if named:
        if not Path(named).is_file():
            raise FileNotFoundError(f"${BACKBONE_ENV}={named}: no such file")
        return Path(named)
    candidates = sorted(head.parent.glob(BACKBONE_GLOB))
    if len(candidates) != 1:
        found = f"found {[c.name for c in candidates]}" if candidates else "found none"
        raise FileNotFoundError(
            f"{head}: Meta's dino.txt checkpoint needs its ViT-L/16 backbone; looked for one {BACKBONE_GLOB} "
            f"beside it and {found}. Set ${BACKBONE_ENV} to the backbone file, or save both as one folder with "
            "DINOv3TextModel.from_pretrained(head, backbone=...).save_pretrained(folder)"
        )
    return candidates[0]


def load_text_model(
    source: str | os.PathLike, *, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto"
) -> DINOv3TextModel:
    """A dino.txt model in eval mode on `device` in `dtype` ("auto": `pick_dtype`'s, bf16 on GPUs and on CPUs
    with bf16 matrix units, else fp32; None: as stored). Raises `NotATextModelError` for other checkpoints."""
    if not is_text_model_source(source):
        kind = "a vision-only checkpoint" if Path(source).expanduser().exists() else "no local dino.txt folder or file"
        raise NotATextModelError(f"{source} is not a dino.txt model ({kind}); {text_models_hint()}")
    target = pick_device(device)
    path = Path(source).expanduser()
    backbone = None if path.is_dir() else find_backbone(path)
    dtype = None if dtype is None else pick_dtype(dtype, target)
    model = DINOv3TextModel.from_pretrained(path, backbone=backbone, dtype=dtype, device=target)
    return model.eval()


@dataclass
class TowerConfig:
    """What `Embedder`, the processors and an index read from a model's config."""

    model_type: str
    hidden_size: int
    patch_size: int
    extra: dict[str, Any] = field(default_factory=dict)
    num_prefix_tokens: int = 1


class ImageTower(nn.Module):
    """The image side of a dino.txt model for `embed`, `search`, `pca` and `similarity`.

    `pooler_output` is the aligned image embedding E = [head CLS, mean head patch]; each patch token is
    [head CLS, head patch], so the mean of the patch tokens is E again (index columns `cls` = `mean_patch`),
    and the last half of a patch token is the head patch feature that text embeddings align with."""

    def __init__(self, model: DINOv3TextModel) -> None:
        super().__init__()
        self.text_model = model
        self.config = TowerConfig(MODEL_TYPE, model.config.projection_dim, model.backbone.config.patch_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.device

    def patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        return self.text_model.backbone.patch_grid(pixel_values)

    def num_parameters(self) -> int:
        """Parameters of the whole dino.txt model (for `dinov3kit info`)."""
        return self.text_model.num_parameters()

    def save_pretrained(self, folder: str | os.PathLike, **_: Any) -> Path:
        """The whole dino.txt model as one folder (`dinov3kit convert HEAD.pth FOLDER`)."""
        return self.text_model.save_pretrained(folder)

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        image, patches = self.text_model.get_image_and_patch_features(pixel_values)  # [B, E], [B, h, w, P]
        patches = patches.flatten(1, 2)
        if not self.text_model.config.vision_use_class_token:
            tokens = patches
        else:
            cls = image[:, None, : image.shape[1] - patches.shape[2]].expand(-1, patches.shape[1], -1)
            tokens = torch.cat([cls, patches], dim=-1)  # [B, h*w, E]
        return BaseModelOutputWithPooling(last_hidden_state=torch.cat([image[:, None], tokens], dim=1), pooler_output=image)


def load_image_tower(source: str, device: torch.device, dtype: torch.dtype | None) -> ImageTower:
    """`runtime.load_image_model` for dino.txt checkpoints."""
    return ImageTower(load_text_model(source, device=device, dtype=dtype))
