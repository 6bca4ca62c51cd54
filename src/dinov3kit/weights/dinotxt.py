"""dino.txt checkpoints: Meta's `dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth` (vision head,
text encoder, logit scale; the backbone comes from its own ViT-L/16 `.pth`) and our folders
(`config.json` + `model.safetensors` holding the backbone too).

Meta's names map to ours through `META_RULES`: each rule says that our tensor equals the concatenation
(along dim 0) of Meta's tensors, for every block index `{n}`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..configs import CONFIG_NAME, DINOv3TextConfig, swiglu_hidden
from ..fileio import atomic_write
from ..source import SAFE_WEIGHTS_NAME
from .errors import CheckpointError
from .placement import resolve_device, resolve_dtype

#: Head width of Meta's text transformer (1280 / 20); used when the number of heads is not given.
TEXT_HEAD_DIM = 64

_HEAD = "visual_model.head"
_TEXT = "text_model.backbone"


def _pair(ours: str, theirs: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


#: (our key, Meta keys concatenated along dim 0).
META_RULES: list[tuple[str, tuple[str, ...]]] = [
    *_pair("vision_head.blocks.{n}.norm1", f"{_HEAD}.blocks.{{n}}.norm1"),
    ("vision_head.blocks.{n}.attn.qkv.weight", (f"{_HEAD}.blocks.{{n}}.attn.qkv.weight",)),
    *_pair("vision_head.blocks.{n}.attn.proj", f"{_HEAD}.blocks.{{n}}.attn.proj"),
    ("vision_head.blocks.{n}.ls1.gamma", (f"{_HEAD}.blocks.{{n}}.ls1.gamma",)),
    *_pair("vision_head.blocks.{n}.norm2", f"{_HEAD}.blocks.{{n}}.norm2"),
    *(
        (f"vision_head.blocks.{{n}}.mlp.fc1.{p}", (f"{_HEAD}.blocks.{{n}}.mlp.w1.{p}", f"{_HEAD}.blocks.{{n}}.mlp.w2.{p}"))
        for p in ("weight", "bias")
    ),
    *_pair("vision_head.blocks.{n}.mlp.fc2", f"{_HEAD}.blocks.{{n}}.mlp.w3"),
    ("vision_head.blocks.{n}.ls2.gamma", (f"{_HEAD}.blocks.{{n}}.ls2.gamma",)),
    *_pair("vision_head.norm", f"{_HEAD}.ln_final"),
    ("vision_projection.weight", (f"{_HEAD}.linear_projection.weight",)),
    ("text_model.token_embedding.weight", (f"{_TEXT}.token_embedding.weight",)),
    ("text_model.position_embedding", (f"{_TEXT}.positional_embedding",)),
    *_pair("text_model.blocks.{n}.norm1", f"{_TEXT}.blocks.{{n}}.attention_norm"),
    ("text_model.blocks.{n}.attn.qkv.weight", (f"{_TEXT}.blocks.{{n}}.attention.qkv.weight",)),
    *_pair("text_model.blocks.{n}.attn.proj", f"{_TEXT}.blocks.{{n}}.attention.proj"),
    *_pair("text_model.blocks.{n}.norm2", f"{_TEXT}.blocks.{{n}}.ffn_norm"),
    *_pair("text_model.blocks.{n}.mlp.fc1", f"{_TEXT}.blocks.{{n}}.feed_forward.fc1"),
    *_pair("text_model.blocks.{n}.mlp.fc2", f"{_TEXT}.blocks.{{n}}.feed_forward.fc2"),
    *_pair("text_model.norm", f"{_TEXT}.ln_final"),
    ("text_projection.weight", ("text_model.head.linear_projection.weight",)),
    ("logit_scale", ("logit_scale",)),
]
#: Meta tensors that inference does not read (a backbone copy inside the file is ignored: the backbone
#: comes from its own checkpoint, as in Meta's hub loader).
IGNORED = [re.compile(r"visual_model\.backbone\..*")]


def _regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape("{n}"), r"(?P<n>\d+)") + r"\Z")


def meta_to_ours(state: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Our non-backbone state dict from Meta's dino.txt state dict; unknown or half-present keys raise."""
    out, used = {}, set()
    for ours, theirs in META_RULES:
        first = _regex(theirs[0])
        for key in sorted(state):
            match = first.match(key)
            if not match:
                continue
            sources = [t.format(**match.groupdict()) for t in theirs]
            missing = [s for s in sources if s not in state]
            if missing:
                raise CheckpointError(f"{origin}: {missing} are missing (they go with {key!r})")
            used.update(sources)
            tensors = [state[s] for s in sources]
            out[ours.format(**match.groupdict())] = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
    unknown = sorted(k for k in state if k not in used and not any(p.match(k) for p in IGNORED))
    if unknown:
        raise CheckpointError(
            f"{origin}: unexpected tensors {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
            "is this Meta's dinotxt vision-head-and-text-encoder checkpoint?"
        )
    return out


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def infer_config(
    ours: dict[str, torch.Tensor], vision_config: dict[str, Any], overrides: dict[str, Any], origin: str
) -> DINOv3TextConfig:
    """The config that fits our-named tensors `ours` (number of text heads: width / 64 unless overridden)."""
    for key in ("text_model.token_embedding.weight", "text_projection.weight", "text_model.position_embedding"):
        if key not in ours:
            raise CheckpointError(f"{origin}: no tensor for {key!r}; is this a dino.txt checkpoint?")
    vocab, text_dim = ours["text_model.token_embedding.weight"].shape
    projection_dim = ours["text_projection.weight"].shape[0]
    inferred: dict[str, Any] = dict(
        vision_config=vision_config,
        projection_dim=projection_dim,
        vision_head_layers=_count(ours, "vision_head.blocks"),
        text_vocab_size=vocab,
        text_context_length=ours["text_model.position_embedding"].shape[0],
        text_hidden_size=text_dim,
        text_num_attention_heads=max(text_dim // TEXT_HEAD_DIM, 1),
        text_num_hidden_layers=_count(ours, "text_model.blocks"),
    )
    if inferred["text_num_hidden_layers"]:
        inferred["text_mlp_ratio"] = ours["text_model.blocks.0.mlp.fc1.weight"].shape[0] / text_dim
    config = DINOv3TextConfig(**{**inferred, **overrides})
    if config.vision_head_layers:
        dim = vision_config["hidden_size"]
        stored = ours["vision_head.blocks.0.mlp.fc2.weight"].shape[1]
        if swiglu_hidden(dim, config.vision_head_mlp_ratio) != stored:
            raise CheckpointError(
                f"{origin}: the vision head's SwiGLU width {stored} does not match vision_head_mlp_ratio="
                f"{config.vision_head_mlp_ratio} for width {dim}; pass vision_head_mlp_ratio="
            )
    return config


def _assemble(
    model_class: type[nn.Module],
    config: DINOv3TextConfig,
    backbone: nn.Module | None,
    state: dict[str, torch.Tensor],
    origin: str,
) -> nn.Module:
    """Build the model without initialising it (meta tensors) and assign the loaded tensors."""
    with torch.device("meta"):
        model = model_class(config)
    if backbone is not None:
        model.backbone = backbone
    expected = {k for k in model.state_dict() if backbone is None or not k.startswith("backbone.")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{origin}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    shapes = model.state_dict()
    for key, tensor in state.items():
        if tensor.shape != shapes[key].shape:
            raise CheckpointError(f"{origin}: {key} has shape {tuple(tensor.shape)}, the config needs {tuple(shapes[key].shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    return model


def load_dinotxt(
    model_class: type[nn.Module],
    source: str | os.PathLike,
    *,
    backbone: str | os.PathLike | nn.Module | None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """A dino.txt `model_class` from our folder, or from Meta's head-and-text `.pth` plus a backbone (a
    loaded model, or a source for `model_class.backbone_class.from_pretrained`)."""
    overrides = dict(overrides or {})
    path = Path(source)
    device = None if device is None else resolve_device(device)
    dtype = None if dtype in (None, "auto") else resolve_dtype(dtype, device=device)  # None: as stored
    if path.is_dir():
        if backbone is not None:
            raise ValueError(f"{path} is a saved dino.txt folder and holds its backbone; do not pass backbone=")
        if not (path / CONFIG_NAME).is_file() or not (path / SAFE_WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME} and {SAFE_WEIGHTS_NAME}; is it a saved dino.txt model?")
        config = DINOv3TextConfig.from_json_file(path / CONFIG_NAME)
        if overrides:
            config = DINOv3TextConfig.from_dict(config.to_dict(), **overrides)
        model = _assemble(model_class, config, None, load_file(str(path / SAFE_WEIGHTS_NAME)), str(path))
    elif path.is_file():
        if backbone is None:
            raise ValueError(
                f"{path}: Meta's dino.txt checkpoint holds the vision head and the text encoder only; pass "
                "backbone= the ViT-L/16 checkpoint (dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
        ours = meta_to_ours(state, str(path))
        vision = (
            backbone
            if isinstance(backbone, nn.Module)
            else model_class.backbone_class.from_pretrained(backbone, dtype=dtype, device=device)
        )
        config = infer_config(ours, vision.config.to_dict(), overrides, str(path))
        model = _assemble(model_class, config, vision, ours, str(path))
    else:
        raise FileNotFoundError(f"{source}: no such dino.txt folder or checkpoint file")
    return model.eval().to(device=device, dtype=dtype)


def save_dinotxt(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write `config.json` and `model.safetensors` (backbone included) into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = DINOv3TextConfig.from_dict(model.config.to_dict(), vision_config=model.backbone.config.to_dict())
    config.extra.update(architectures=[type(model).__name__], dtype=str(model.dtype).removeprefix("torch."))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _write(folder / SAFE_WEIGHTS_NAME, lambda temporary: save_file(state, str(temporary), metadata={"format": "pt"}))
    _write(folder / CONFIG_NAME, lambda temporary: temporary.write_text(config.to_json_string(), encoding="utf-8"))
    return folder


def _write(destination: Path, writer: Callable[[Path], Any]) -> None:
    with atomic_write(destination) as temporary:
        writer(temporary)
