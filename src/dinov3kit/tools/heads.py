"""Meta's released task heads, read from Meta's files onto our backbones: the linear ImageNet-1k classifier
(`dinov3_vit7b16_lc`, file `dinov3_vit7b16_imagenet1k_linear_head-*.pth`).

    from dinov3kit.tools.heads import load_linear_classifier, classify_images
    classifier = load_linear_classifier("dinov3_vit7b16_pretrain_lvd1689m.pth", "dinov3_vit7b16_imagenet1k_linear_head.pth")
    top5 = classify_images(classifier, ["cat.jpg"], top_k=5)

A head whose input width does not match the backbone (a head of another model) is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..models.heads import DINOv3LinearClassifier

#: Meta's linear-head file (a state dict of nn.Linear) → our module names, as (Meta pattern, ours).
META_LINEAR_HEAD_KEYS = (
    (r"^weight$", "classifier.weight"),
    (r"^bias$", "classifier.bias"),
)
#: Width of the backbones Meta released heads for, to name the model a mismatched head belongs to.
BACKBONE_WIDTHS = {384: "dinov3_vits16", 768: "dinov3_vitb16", 1024: "dinov3_vitl16", 1280: "dinov3_vith16plus", 4096: "dinov3_vit7b16"}


class HeadMismatchError(ValueError):
    """A head file that does not fit the backbone it is loaded onto (or is not a head file at all)."""


def map_keys(state: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]], source: str) -> dict[str, torch.Tensor]:
    """Rename every key of `state` by the first rule whose pattern matches; unknown keys are an error."""
    mapped = {}
    for key, value in state.items():
        for pattern, ours in rules:
            if re.match(pattern, key):
                mapped[re.sub(pattern, ours, key)] = value
                break
        else:
            raise HeadMismatchError(f"{source}: unexpected tensor {key!r}; not one of Meta's linear classifier heads")
    return mapped


def read_meta_head(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a Meta head `.pth` (read with weights_only)."""
    from ..weights.files import open_torch_pickle

    path = Path(path)
    if not path.is_file():
        raise HeadMismatchError(f"{path}: no such head file; Meta's heads are listed in the DINOv3 README (e.g. dinov3_vit7b16_imagenet1k_linear_head-90d8ed92.pth)")
    tensors = open_torch_pickle(path)
    return {key: tensors.load(key) for key in tensors.keys()}


def linear_head_state(path: str | os.PathLike, backbone_width: int) -> dict[str, torch.Tensor]:
    """Our state dict for the classifier layer of Meta's linear head file, checked against the backbone."""
    state = map_keys(read_meta_head(path), META_LINEAR_HEAD_KEYS, str(path))
    weight = state.get("classifier.weight")
    if weight is None or weight.ndim != 2 or "classifier.bias" not in state:
        raise HeadMismatchError(f"{path}: not a linear classifier head (needs `weight` [classes, 2 x width] and `bias`)")
    if weight.shape[1] != 2 * backbone_width:
        trained = weight.shape[1] // 2
        name = BACKBONE_WIDTHS.get(trained, "another model")
        raise HeadMismatchError(
            f"{path}: this head takes [CLS ; mean patch] features of a width-{trained} backbone ({name}), but the model has "
            f"width {backbone_width} ({BACKBONE_WIDTHS.get(backbone_width, 'another model')}); load it onto the backbone it was "
            "trained with (Meta's ImageNet-1k linear head goes with dinov3_vit7b16 pretrained on LVD-1689M)"
        )
    return state


def load_linear_classifier(
    backbone: str | os.PathLike | torch.nn.Module,
    head: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DINOv3LinearClassifier:
    """Meta's linear classifier: `backbone` (a loaded DINOv3ViTModel, or any source AutoModel reads: Meta
    .pth, transformers folder, hub id) with the head file `head` on top."""
    if not isinstance(backbone, torch.nn.Module):
        from .runtime import load_model, model_source

        backbone = load_model(model_source(backbone), torch.device(device), dtype)
    if not hasattr(backbone.config, "hidden_size") or not hasattr(backbone.config, "num_prefix_tokens"):
        raise HeadMismatchError(f"{head}: Meta's linear classifier heads sit on DINOv3 ViT backbones, not on {type(backbone).__name__}")
    state = linear_head_state(head, backbone.config.hidden_size)
    classifier = DINOv3LinearClassifier(backbone, num_labels=state["classifier.weight"].shape[0])
    classifier.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in state.items()})
    return classifier.to(device=backbone.device, dtype=backbone.dtype).eval()


@dataclass
class Classification:
    """One image's top classes: (class index, label, probability), best first (or why it failed)."""

    path: str
    top: list[tuple[int, str, float]]
    error: str | None = None


@torch.inference_mode()
def classify_images(classifier: DINOv3LinearClassifier, images: Sequence[str | os.PathLike], *, top_k: int = 5,
                    resolution: int = 224, batch_size: int = 16) -> list[Classification]:
    """Top-k classes of each image (resized to `resolution` square, the model's normalisation)."""
    from ..images import ImageLoadError, load_image
    from ..processing import processor_for_model
    from .sources import collect_images

    processor = processor_for_model(classifier.backbone, size={"height": resolution, "width": resolution})
    paths = [str(p) for p in collect_images(images)]
    results: dict[str, Classification] = {}
    good, pixels = [], []
    for path in paths:
        try:
            pixels.append(processor(load_image(path), return_tensors="pt")["pixel_values"][0])
            good.append(path)
        except (ImageLoadError, OSError, ValueError) as error:
            results[path] = Classification(path, [], getattr(error, "reason", None) or str(error))
    for start in range(0, len(good), batch_size):
        batch = torch.stack(pixels[start:start + batch_size]).to(classifier.backbone.device, classifier.backbone.dtype)
        probabilities = classifier(batch).logits.float().softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        for path, value, index in zip(good[start:start + batch_size], values, indices):
            results[path] = Classification(path, [(int(i), classifier.id2label[int(i)], float(v)) for v, i in zip(value, index)])
    return [results[path] for path in paths]
