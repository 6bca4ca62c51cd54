"""Meta's linear classifier (`dinov3_vit7b16_lc`): one Linear layer on the concatenation of the backbone's
normed CLS token and the mean of its normed patch tokens (registers left out)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..outputs import ModelOutput

IMAGENET1K_LABELS_FILE = Path(__file__).with_name("imagenet1k_labels.tsv")


@lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes in training order: (WordNet synset id, names), e.g.
    ("n01440764", "tench, Tinca tinca"). The names are WordNet lemmas, as timm's data/_info lists them."""
    rows = IMAGENET1K_LABELS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(tuple(row.split("\t", 1)) for row in rows)


@dataclass
class ImageClassifierOutput(ModelOutput):
    logits: torch.Tensor | None = None  # [B, num_labels]
    pooled_features: torch.Tensor | None = None  # [B, 2D]: CLS, then mean patch


def cls_and_mean_patch(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """[B, 2D]: the CLS token (first) beside the mean of the patch tokens (after CLS and registers)."""
    return torch.cat([tokens[:, 0], tokens[:, num_prefix_tokens:].mean(dim=1)], dim=1)


class DINOv3LinearClassifier(nn.Module):
    """A DINOv3 ViT (`DINOv3ViTModel`) with Meta's linear head: logits = classifier([CLS ; mean patch])."""

    def __init__(self, backbone: nn.Module, num_labels: int = 1000, id2label: dict[int, str] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(2 * backbone.config.hidden_size, num_labels)
        if id2label is None and num_labels == 1000:
            id2label = {i: names.split(",")[0] for i, (_, names) in enumerate(imagenet1k_labels())}
        self.id2label = id2label or {i: str(i) for i in range(num_labels)}

    @property
    def config(self):
        return self.backbone.config

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        tokens = self.backbone(pixel_values).last_hidden_state  # [B, prefix + h*w, D], normed
        features = cls_and_mean_patch(tokens, self.backbone.config.num_prefix_tokens)
        return ImageClassifierOutput(logits=self.classifier(features), pooled_features=features)
