"""The model behind every tool: which checkpoint, device and dtype, its preprocessing, and its features.

Tools see a model only through `Embedder`, which turns images into CLS, mean-patch and patch-grid
features with the normalisation the checkpoint was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..auto import AutoModel
from ..processing import processor_for_model
from ..weights.errors import CheckpointError
from .devices import pick_device, pick_dtype
from .text_models import is_text_model_source, load_image_tower

DEFAULT_MODEL = "facebook/dinov3-vits16-pretrain-lvd1689m"
MODEL_ENV = "DINOV3KIT_MODEL"
DEFAULT_RESOLUTION = 224
#: A hub repository id: owner/name, letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LOCAL_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".json")
#: Weights sampled per tensor for the index's record of its model (see `model_fingerprint`).
SAMPLES_PER_TENSOR = 2


def model_source(model: str | os.PathLike | None = None) -> str:
    """The checkpoint to use: `model`, else $DINOV3KIT_MODEL, else the default hub id.

    Local paths are made absolute so that an index records a checkpoint that can be found again.
    """
    source = str(model) if model else os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    path = Path(source).expanduser()
    return os.path.abspath(path) if path.exists() else source


class ModelUnavailableError(CheckpointError):
    """No weights could be loaded for the requested model; the message says how to get them."""


def is_hub_id(source: str) -> bool:
    """Whether `source` names a hub repository ("owner/name") rather than a local file or folder."""
    return bool(_HUB_ID.fullmatch(source)) and not os.path.exists(source) and not source.endswith(LOCAL_SUFFIXES)


def how_to_get_weights(source: str) -> str:
    """What to do when a checkpoint cannot be had: for hub ids, that DINOv3 weights are gated and how to
    get access; for local paths, what a checkpoint on disk looks like."""
    local = (
        "pass --model /path/to/folder (config.json + model.safetensors, as transformers saves it) or "
        "--model /path/to/dinov3_vits16_pretrain_lvd1689m.pth (Meta's file), "
        f"or set {MODEL_ENV} to either."
    )
    if not is_hub_id(source):
        return (
            f"No weights were loaded from {source!r}, and dinov3kit never substitutes random weights.\n"
            f"Check the path: {local}"
        )
    return (
        f"No weights were loaded for {source!r}, and dinov3kit never substitutes random weights.\n"
        f"DINOv3 weights on the Hugging Face hub are gated: request access at https://huggingface.co/{source} "
        "(accept the DINOv3 license), then log in with `hf auth login` or set HF_TOKEN.\n"
        f"Or use a checkpoint you already have: {local}"
    )


def load_image_model(source: str, device: torch.device, dtype: torch.dtype | None):
    """The image model of any checkpoint a tool is given: a DINOv3 ViT or ConvNeXt from a hub id, a
    transformers folder or a Meta .pth file, or a dino.txt model's `ImageTower` (`dtype` None keeps the
    stored dtype). Unlike `weights.load_model` (one given class), it recognises the kind of model, and
    raises `ModelUnavailableError` saying how to get weights."""
    if is_text_model_source(source):  # dino.txt: its image side, whose embedding aligns with text
        return load_image_tower(source, device, dtype)
    try:
        return AutoModel.from_pretrained(source, dtype=dtype, device=device)
    except CheckpointError as error:
        raise ModelUnavailableError(f"{error}\n{how_to_get_weights(source)}") from error


def feature_dim(config) -> int:
    """Width of the model's features (ViT hidden size, or ConvNeXt's last stage width)."""
    return int(config.hidden_size if hasattr(config, "hidden_size") else config.hidden_sizes[-1])


@dataclass
class Features:
    """Features of a batch: CLS [B, D] and mean patch [B, D] in float32, the patch grid [B, h, w, D]."""

    cls: torch.Tensor
    mean_patch: torch.Tensor
    patches: torch.Tensor


class Embedder:
    """A loaded model with its preprocessing, turning images into features."""

    def __init__(self, model, source: str, resolution: int = DEFAULT_RESOLUTION) -> None:

        self.model, self.source, self.resolution = model, source, int(resolution)
        self._fingerprint: dict | None = None
        self.processor = processor_for_model(model, size={"height": self.resolution, "width": self.resolution})
        self.dense_processor = processor_for_model(model, size={"shortest_edge": self.resolution}, keep_aspect_ratio=True)
        if self.resolution < self.processor.patch_size:
            raise ValueError(f"resolution {resolution} is smaller than one {self.processor.patch_size}px patch")

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        resolution: int = DEFAULT_RESOLUTION,
    ) -> Embedder:
        """Load the checkpoint `model` (see `model_source`) on `device` in `dtype` (both "auto" by default)."""
        source = model_source(model)
        device = pick_device(device)
        return cls(load_image_model(source, device, pick_dtype(dtype, device)), source, resolution)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """[3, resolution, resolution] pixels for `embed` and `search` (the image is resized to a square)."""
        return self.processor(image, return_tensors="pt")["pixel_values"][0]

    def preprocess_dense(self, image: Image.Image) -> torch.Tensor:
        """[1, 3, H, W] pixels keeping the aspect ratio, shortest side `resolution`, for dense maps."""
        return self.dense_processor(image, return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> Features:
        pixel_values = pixel_values.to(self.device, self.dtype, non_blocking=True)
        output = self.model(pixel_values)
        prefix = int(getattr(self.model.config, "num_prefix_tokens", 1))
        patches = output.last_hidden_state[:, prefix:].float()
        grid = self.patch_grid(pixel_values, patches.shape[1])
        return Features(
            cls=output.pooler_output.float(),
            mean_patch=patches.mean(dim=1),
            patches=patches.unflatten(1, grid),
        )

    def patch_grid(self, pixel_values: torch.Tensor, num_patches: int) -> tuple[int, int]:
        """Rows and columns of the patch tokens: the ViT's own count, or the input size over the total
        stride (32 for ConvNeXt)."""
        if hasattr(self.model, "patch_grid"):
            return tuple(self.model.patch_grid(pixel_values))
        stride = self.processor.patch_size
        grid = (pixel_values.shape[-2] // stride, pixel_values.shape[-1] // stride)
        if grid[0] * grid[1] != num_patches:
            raise ValueError(f"{num_patches} patch tokens do not form the {grid[0]}x{grid[1]} grid of a {tuple(pixel_values.shape[-2:])} input")
        return grid

    def describe(self) -> dict:
        """What an index records about the model, so that queries are embedded the same way and by the
        same weights (`model_digest`, `weight_sample`: see `model_fingerprint`)."""
        config = self.model.config
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return {
            "model": self.source,
            "model_type": config.model_type,
            "resolution": self.resolution,
            "dtype": str(self.dtype).removeprefix("torch."),
            "image_mean": list(self.processor.image_mean),
            "image_std": list(self.processor.image_std),
            "dim": feature_dim(config),
            **self._fingerprint,
        }


def model_fingerprint(model) -> dict:
    """What identifies a model's weights whatever their dtype or device: `model_digest`, a SHA-256 of its
    config (without dtype) and of its tensors' names and shapes, and `weight_sample`, a few weights of
    every tensor (compared with a tolerance, since bf16 and fp32 copies of one checkpoint differ a little).
    Cheap: it reads `SAMPLES_PER_TENSOR` values per tensor, not the weights."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    config = {k: v for k, v in config.items() if "dtype" not in k and not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    sample: list[float] = []
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)};".encode())
        if tensor.is_floating_point() and tensor.numel() and tensor.device.type != "meta":
            flat = tensor.detach().reshape(-1)
            positions = [(flat.numel() * (i + 1)) // (SAMPLES_PER_TENSOR + 1) for i in range(SAMPLES_PER_TENSOR)]
            sample += [round(float(flat[p]), 7) for p in positions]
    return {"model_digest": digest.hexdigest(), "weight_sample": sample}


