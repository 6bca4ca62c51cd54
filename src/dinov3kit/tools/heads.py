"""Meta's released task heads, read from Meta's files onto our backbones: the linear ImageNet-1k classifier
(`dinov3_vit7b16_lc`, file `dinov3_vit7b16_imagenet1k_linear_head-*.pth`) and the DPT depth heads
(`dinov3_vit7b16_dd`: `dinov3_vit7b16_synthmix_dpt_head-*.pth`; CHMv2 canopy height on ViT-L SAT:
`dinov3_vitl16_chmv2_dpt_head-*.pth`).

    from dinov3kit.tools.heads import load_linear_classifier, classify_images
    classifier = load_linear_classifier("dinov3_vit7b16_pretrain_lvd1689m.pth", "dinov3_vit7b16_imagenet1k_linear_head.pth")
    top5 = classify_images(classifier, ["cat.jpg"], top_k=5)
    depther = load_depth_estimator("dinov3_vit7b16_pretrain_lvd1689m.pth", "dinov3_vit7b16_synthmix_dpt_head.pth")
    depth = estimate_depth(depther, "room.jpg")          # [H, W] metres, at the image's size

A head whose input width does not match the backbone (a head of another model) is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import ImageLoadError, load_image
from ..models.heads import DPT_PRESETS, DINOv3DepthEstimator, DINOv3LinearClassifier, DPTConfig
from ..processing import processor_for_model
from ..weights.files import open_torch_pickle
from .runtime import load_image_model, model_source
from .sources import collect_images

#: Meta's linear-head file (a state dict of nn.Linear) → our module names, as (Meta pattern, ours).
META_LINEAR_HEAD_KEYS = (
    (r"^weight$", "classifier.weight"),
    (r"^bias$", "classifier.bias"),
)
#: Meta's DPT head files (DPTHead state dicts) → our `DPTHead` names, as (Meta pattern, ours).
META_DPT_HEAD_KEYS = (
    (r"^reassemble_blocks\.projects\.(\d+)\.conv\.", r"reassemble.\1.project."),
    (r"^reassemble_blocks\.resize_layers\.(\d+)\.", r"reassemble.\1.resize."),
    (r"^reassemble_blocks\.readout_projects\.(\d+)\.0\.", r"reassemble.\1.readout.proj."),
    (r"^reassemble_blocks\.batchnorm_layers\.(\d+)\.", r"reassemble.\1.norm."),
    (r"^convs\.(\d+)\.conv\.", r"convs.\1."),
    (r"^fusion_blocks\.(\d+)\.project\.conv\.", r"fusion.\1.project."),
    (r"^fusion_blocks\.(\d+)\.res_conv_unit1\.conv([12])\.conv\.", r"fusion.\1.skip_unit.conv\2."),
    (r"^fusion_blocks\.(\d+)\.res_conv_unit2\.conv([12])\.conv\.", r"fusion.\1.unit.conv\2."),
    (r"^project\.conv\.", "project."),
    (r"^conv_depth\.head\.0\.", "head.conv1."),
    (r"^conv_depth\.head\.2\.", "head.conv2."),
    (r"^conv_depth\.head\.4\.", "head.conv3."),
)
#: Width of the backbones Meta released heads for, to name the model a mismatched head belongs to.
BACKBONE_WIDTHS = {384: "dinov3_vits16", 768: "dinov3_vitb16", 1024: "dinov3_vitl16", 1280: "dinov3_vith16plus", 4096: "dinov3_vit7b16"}


class HeadMismatchError(ValueError):
    """A head file that does not fit the backbone it is loaded onto (or is not a head file at all)."""


def map_keys(state: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]], source: str, kind: str = "linear classifier") -> dict[str, torch.Tensor]:
    """Rename every key of `state` by the first rule whose pattern matches; unknown keys are an error."""
    mapped = {}
    for key, value in state.items():
        for pattern, ours in rules:
            if re.match(pattern, key):
                mapped[re.sub(pattern, ours, key)] = value
                break
        else:
            raise HeadMismatchError(f"{source}: unexpected tensor {key!r}; not one of Meta's {kind} heads")
    return mapped


def read_meta_head(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a Meta head `.pth` (read with weights_only)."""

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

        backbone = load_image_model(model_source(backbone), torch.device(device), dtype)
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


def dpt_config_from_state(state: dict[str, torch.Tensor], preset: DPTConfig) -> DPTConfig:
    """The preset with the shapes found in a head file (so reduced-width heads load too)."""
    stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("reassemble.")})
    return preset.scaled(
        reassemble_channels=tuple(state[f"reassemble.{i}.project.weight"].shape[0] for i in stages),
        channels=state["convs.0.weight"].shape[0],
        hidden_channels=state["head.conv2.weight"].shape[0],
        bins=state["head.conv3.weight"].shape[0],
        batchnorm="reassemble.0.norm.weight" in state,
        use_cls_token="reassemble.0.readout.proj.weight" in state,
        unit_bias="fusion.0.unit.conv1.bias" in state,
        project_after_fusion="project.weight" in state,
    )


def load_depth_estimator(
    backbone: str | os.PathLike | torch.nn.Module,
    head: str | os.PathLike,
    *,
    preset: str | None = None,
    out_layers: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DINOv3DepthEstimator:
    """Meta's DPT depther: `backbone` (a loaded DINOv3ViTModel or any AutoModel source) with the DPT head
    file `head`. `preset` ("dinov3_vit7b16_dd" or "dinov3_vitl16_chmv2") is inferred from the file (CHMv2's
    head reads the CLS token) unless given; `out_layers` overrides the blocks the preset reads."""
    if not isinstance(backbone, torch.nn.Module):

        backbone = load_image_model(model_source(backbone), torch.device(device), dtype)
    if not hasattr(backbone, "get_intermediate_layers") or not hasattr(backbone.config, "num_prefix_tokens"):
        raise HeadMismatchError(f"{head}: Meta's DPT heads sit on DINOv3 ViT backbones, not on {type(backbone).__name__}")
    raw = read_meta_head(head)
    raw = {k.removeprefix("decoder."): v for k, v in raw.items()}
    state = map_keys(raw, META_DPT_HEAD_KEYS, str(head), kind="DPT depth")
    if "reassemble.0.project.weight" not in state or "head.conv3.weight" not in state:
        raise HeadMismatchError(f"{head}: not a DPT head (no reassemble / conv_depth tensors)")
    if preset is None:
        preset = "dinov3_vitl16_chmv2" if "reassemble.0.readout.proj.weight" in state else "dinov3_vit7b16_dd"
    if preset not in DPT_PRESETS:
        raise ValueError(f"preset must be one of {sorted(DPT_PRESETS)}, got {preset!r}")
    config = dpt_config_from_state(state, DPT_PRESETS[preset])
    if out_layers is not None:
        config = config.scaled(out_layers=tuple(out_layers))
    width, depth = backbone.config.hidden_size, backbone.config.num_hidden_layers
    trained = state["reassemble.0.project.weight"].shape[1]
    if trained != width or max(config.out_layers) >= depth:
        raise HeadMismatchError(
            f"{head}: a {preset} head for {config.backbone} (width {trained}, reads blocks {list(config.out_layers)}), "
            f"but the model has width {width} and {depth} blocks; load it onto the backbone it was trained with"
        )
    estimator = DINOv3DepthEstimator(backbone, config)
    estimator.decoder.load_state_dict(state, strict=True)
    return estimator.to(device=backbone.device, dtype=backbone.dtype).eval()


@torch.inference_mode()
def estimate_depth(estimator: DINOv3DepthEstimator, image, *, resolution: int | None | str = "preset") -> torch.Tensor:
    """[H, W] depth in metres (canopy height for CHMv2) of `image`, at the image's own size.

    The model sees the image with its shorter side at `resolution` (aspect ratio kept; None: at its own
    size, as Meta's CHMv2 notebook), normalised as the preset says, zero-padded (centred) to the patch
    size; the map is cropped back and resized bilinearly to the image."""


    config = estimator.config
    resolution = config.resolution if resolution == "preset" else resolution
    options = {"do_resize": False} if resolution is None else {"size": {"shortest_edge": int(resolution)}}
    if config.normalization is not None:
        options.update(image_mean=list(config.normalization[0]), image_std=list(config.normalization[1]))
    image = load_image(image)
    pixels = processor_for_model(estimator.backbone, **options)(image, return_tensors="pt")["pixel_values"]
    depth = estimator(pixels.to(estimator.backbone.device, estimator.backbone.dtype)).predicted_depth.float()
    return F.interpolate(depth.unsqueeze(1), size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0].cpu()


def colorize_depth(depth: torch.Tensor, *, invert: bool = True):
    """A PIL image of a depth (or height) map in the Turbo colour map, scaled between its 2nd and 98th
    percentiles; `invert` makes small values bright (near objects, for depth)."""

    values = depth.float().numpy()
    low, high = np.percentile(values, [2, 98])
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0, 1)
    if invert:
        scaled = 1.0 - scaled
    return Image.fromarray((turbo(scaled) * 255 + 0.5).astype(np.uint8), "RGB")


def turbo(x):
    """Google's Turbo colour map (polynomial approximation): [..] in [0, 1] → [.., 3] RGB in [0, 1]."""

    x = np.clip(x, 0.0, 1.0)[..., None]
    red = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
    green = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
    blue = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)
    powers = np.concatenate([x**i for i in range(6)], axis=-1)
    return np.clip(np.stack([powers @ np.array(c) for c in (red, green, blue)], axis=-1), 0.0, 1.0)
