"""Checkpoint → model and model → checkpoint, for every supported layout.

The model is built on the meta device (no memory, no random init), each tensor is read once from the
file, converted to the target dtype and device, and assigned: no second full copy of the weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..configs import CONFIG_CLASSES, DINOv3ViTConfig
from ..errors import CheckpointError
from ..fileio import atomic_write, parse_size, refuse_overwriting_sources
from ..rope_math import rope_periods
from ..source import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, HubOptions, Source, resolve_source
from . import hf, meta
from .copies import convert
from .files import TensorFile, open_source
from .keymap import KeyRule, translate
from .placement import device_of, dispatch, resolve_device, resolve_device_map, resolve_dtype

#: Config key under which a saved folder keeps RoPE periods that differ from the ones rope_theta gives
#: (Meta checkpoints store them rounded to bf16). transformers ignores it; we use it to stay exact.
ROPE_PERIODS_KEY = "dinov3kit_rope_periods"
#: Tensors kept in float32 whatever the model dtype.
FLOAT32_KEYS = ("rope_periods",)


@dataclass(frozen=True)
class Layout:
    """How one model type is stored in one checkpoint layout ("hf" = transformers, "meta" = Meta .pth)."""

    rules: Callable[[Any], list[KeyRule]]
    canonical_key: Callable[[str], str] = lambda key: key
    loader: Callable[[TensorFile], Callable[[str], torch.Tensor]] = lambda tensors: tensors.load
    ignored: tuple[re.Pattern, ...] = ()
    derived: Callable[[Any], dict[str, torch.Tensor]] = lambda config: {}
    #: Meta layout only: whether a state dict holds this model type, and its config from the tensors.
    detect: Callable[[TensorFile], bool] | None = None
    infer_config: Callable[[TensorFile, str], Any] | None = None
    #: Adjusts a state dict written in this layout (Meta: bias masks, token shapes).
    finish_save: Callable[[dict[str, torch.Tensor], Any], None] = lambda state, config: None
    #: Records in the saved config what our state dict holds and the layout does not store.
    save_config: Callable[[dict[str, torch.Tensor], Any], None] = lambda state, config: None


def vit_derived_tensors(config: DINOv3ViTConfig) -> dict[str, torch.Tensor]:
    """Tensors that the transformers layout does not store but computes from the config."""
    if ROPE_PERIODS_KEY in config.extra:
        return {"rope_periods": torch.tensor(config.extra[ROPE_PERIODS_KEY], dtype=torch.float32)}
    return {"rope_periods": rope_periods(config.head_dim, config.rope_theta)}


def record_rope_periods(state: dict[str, torch.Tensor], config: DINOv3ViTConfig) -> None:
    """Keep RoPE periods that `rope_theta` does not give (Meta's bf16-rounded ones) in the config."""
    periods = state["rope_periods"].float().cpu()
    if not torch.equal(periods, rope_periods(config.head_dim, config.rope_theta)):
        config.extra[ROPE_PERIODS_KEY] = periods.tolist()


#: (model_type, layout) → how to read and write it.
LAYOUTS: dict[tuple[str, str], Layout] = {
    ("dinov3_vit", "hf"): Layout(
        hf.vit_rules, hf.canonical_key, derived=vit_derived_tensors, save_config=record_rope_periods
    ),
    ("dinov3_vit", "meta"): Layout(
        meta.vit_rules,
        loader=meta.masked_loader,
        ignored=tuple(meta.IGNORED),
        detect=meta.is_meta_vit,
        infer_config=meta.infer_vit_config,
        finish_save=meta.finish_vit_checkpoint,
    ),
    ("dinov3_convnext", "hf"): Layout(hf.convnext_rules, hf.canonical_key, ignored=tuple(hf.CONVNEXT_IGNORED)),
    ("dinov3_convnext", "meta"): Layout(
        meta.convnext_rules,
        ignored=tuple(meta.CONVNEXT_IGNORED),
        detect=meta.is_meta_convnext,
        infer_config=meta.infer_convnext_config,
        finish_save=meta.finish_convnext_checkpoint,
    ),
}


def model_type_of(source: Source) -> str:
    """The `model_type` of a source: from its config.json, or recognised from a Meta state dict's keys."""
    if source.layout == "hf":
        return source.config_data()["model_type"]
    tensors = open_source(source)
    for (model_type, layout_name), layout in LAYOUTS.items():
        if layout_name == "meta" and layout.detect(tensors):
            return model_type
    raise CheckpointError(
        f"{source.name}: not a DINOv3 checkpoint in Meta's layout (no ViT or ConvNeXt keys); first keys: "
        f"{tensors.keys()[:5]}"
    )


def read_config(source: Source, config_class: type | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """The config stored beside the weights (transformers layout) or inferred from them (Meta layout),
    with `overrides` applied to its fields; read once per source (the caller gets its own copy).
    `config_class` (when given) must match the checkpoint's model type."""
    model_type = model_type_of(source)
    if config_class is not None and model_type != config_class.model_type:
        if source.layout == "meta":
            raise CheckpointError(f"{source.name}: holds a {model_type} model, not {config_class.model_type}")
        raise CheckpointError(
            f"{source.config_file}: model_type is {model_type!r}, expected {config_class.model_type!r}"
        )
    if model_type not in CONFIG_CLASSES:
        raise CheckpointError(
            f"{source.name}: model_type {model_type!r} is not a DINOv3 model; dinov3kit supports {sorted(CONFIG_CLASSES)}"
        )
    where = source.config_file if source.layout == "hf" else source.name
    try:
        if source.layout == "hf":  # overrides replace stored values before they are validated
            data = source.config_data()
            if overrides and {"out_indices", "out_features"} & set(overrides):  # a new stage selection
                data = {key: value for key, value in data.items() if key not in ("out_indices", "out_features")}
            return CONFIG_CLASSES[model_type].from_dict(data, **(overrides or {}))
        inferred = source.remember(
            "config", lambda: LAYOUTS[model_type, "meta"].infer_config(open_source(source), Path(source.name).name)
        )
        return inferred.copy(**(overrides or {}))
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{where}: invalid config{' or overrides ' + str(overrides) if overrides else ''} ({error})") from error


def load_model(
    model_class: type,
    source: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
    config: Any = None,
    hub: HubOptions | None = None,
    config_overrides: dict[str, Any] | None = None,
    device_map: str | dict | torch.device | None = None,
    max_memory: dict | None = None,
):
    """Build `model_class` with the weights of `source` (see `PreTrainedModel.from_pretrained`)."""
    source = resolve_source(source, hub)
    if config is None:
        config = read_config(source, model_class.config_class, config_overrides)
    elif config_overrides:
        config = config.copy(**config_overrides)
    layout = LAYOUTS[config.model_type, source.layout]
    tensors = open_source(source)
    original = {layout.canonical_key(key): key for key in tensors.keys()}
    read = layout.loader(tensors)
    weight_key = next((k for k in original if k.endswith(".weight")), None)
    stored_dtype = tensors.load(original[weight_key]).dtype if weight_key else torch.float32
    target_dtype = resolve_dtype(dtype, stored_dtype, device)

    with torch.device("meta"):
        model = model_class(config)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    if device_map is None:
        devices = {"": resolve_device(device)}
    else:
        devices = resolve_device_map(device_map, model, target_dtype, max_memory)

    def finalize(key: str, tensor: torch.Tensor) -> torch.Tensor:
        wanted_dtype = torch.float32 if key in FLOAT32_KEYS else target_dtype
        return convert(tensor, device_of(devices, key), wanted_dtype if tensor.is_floating_point() else None)

    state, used = translate(
        [r for r in layout.rules(config) if not _reads_only_ignorable(r, expected, layout.ignored)],
        lambda key: read(original[key]),
        original,
        expected,
        direction="to_ours",
        origin=source.name,
        finalize=finalize,
    )
    for key, value in layout.derived(config).items():
        state.setdefault(key, finalize(key, value))
    for key, shape in expected.items():
        if key not in state and torch.Size(shape).numel() == 0:  # e.g. no register tokens
            state[key] = torch.empty(shape, device=device_of(devices, key), dtype=target_dtype)
    check_state(source.name, state, expected, set(original) - used, layout.ignored)
    model.load_state_dict(state, assign=True, strict=True)
    if source.is_local:  # saving over these files while the model may map them is refused (see `save_model`)
        model.checkpoint_files = tuple(source.weight_files()[0])
    dispatch(model, devices)
    model.set_attn_implementation(attn_implementation or "sdpa")
    return model.eval()


def _reads_only_ignorable(rule: KeyRule, expected: dict[str, torch.Size], ignored: tuple[re.Pattern, ...]) -> bool:
    """Whether a rule fills no tensor of the model from tensors the layout may leave unused (a backbone
    has no final norm; the norm of a model checkpoint is then skipped)."""
    return not any(key in expected for key in rule.ours) and all(
        any(p.fullmatch(key) for p in ignored) for key in rule.theirs
    )


def check_state(
    origin: str,
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Size],
    unused: set[str],
    ignored: tuple[re.Pattern, ...],
) -> None:
    """Refuse a partial or mismatched load, naming every offending tensor."""
    problems = []
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(f"missing tensors {_preview(missing)}")
    unexpected = sorted(k for k in unused if not any(p.fullmatch(k) for p in ignored))
    if unexpected:
        problems.append(f"unexpected tensors {_preview(unexpected)}")
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(shape)}"
        for key, shape in expected.items()
        if key in state and state[key].shape != shape
    ]
    if mismatched:
        problems.append(f"tensors of the wrong shape {_preview(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{origin}: does not match the model configuration: " + "; ".join(problems)
            + ". Check that the checkpoint and the config (or model class) belong together."
        )


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def refuse_unsavable(model: nn.Module) -> None:
    """Quantized (tensor-subclass) parameters have no place in either checkpoint layout: say so before
    writing anything."""
    if any(type(p) not in (torch.Tensor, nn.Parameter) for p in model.parameters()):
        raise CheckpointError(
            f"{type(model).__name__} is quantized and cannot be saved as a checkpoint; save the unquantized "
            "model and quantize when loading: from_pretrained(..., quantization_config=...)"
        )


def save_model(model, folder: str | os.PathLike, *, max_shard_size: int | str = "5GB") -> Path:
    """Write a transformers-layout folder (config.json + safetensors, sharded past `max_shard_size`).

    Each file is written beside its destination and renamed into place (a crash leaves the old file or
    none, never half of one). Writing over the files the model was loaded from is refused before
    anything is written: they may still be mapped into the model's memory.
    """

    refuse_unsavable(model)
    folder = Path(folder)
    config = model.config.copy()
    ours = model.state_dict()
    LAYOUTS[config.model_type, "hf"].save_config(ours, config)
    config.extra.update(architectures=[type(model).__name__], dtype=str(model.dtype).removeprefix("torch."))
    theirs, _ = translate(
        LAYOUTS[config.model_type, "hf"].rules(config),
        ours.__getitem__,
        ours,
        None,
        direction="to_theirs",
        origin=type(model).__name__,
        finalize=lambda key, tensor: tensor.detach().contiguous(),
    )
    shards = _shard(theirs, parse_size(max_shard_size))
    names = [SAFE_WEIGHTS_NAME] if len(shards) == 1 else [
        f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)
    ]
    sources = getattr(model, "checkpoint_files", ())
    stale = [*folder.glob("model*.safetensors"), folder / SAFE_WEIGHTS_INDEX_NAME] if folder.is_dir() else []
    for path in [*(folder / name for name in names), *stale]:
        refuse_overwriting_sources(path, sources)
    for name, shard in zip(names, shards):
        with atomic_write(folder / name, sources=sources) as temporary:
            save_file(shard, str(temporary), metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        total = sum(t.numel() * t.element_size() for t in theirs.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with atomic_write(folder / SAFE_WEIGHTS_INDEX_NAME) as temporary:
            temporary.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    for path in stale:
        if path.name not in names and not (path.name == SAFE_WEIGHTS_INDEX_NAME and len(shards) > 1):
            path.unlink(missing_ok=True)
    config.save_pretrained(folder)
    return folder


def _shard(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    return shards


def save_meta_checkpoint(model, path: str | os.PathLike) -> Path:
    """Write Meta's original `.pth` layout (fused QKV bias with its `bias_mask`, SwiGLU as w1/w2/w3),
    atomically; writing over the file the model was loaded from is refused."""
    refuse_unsavable(model)
    path = Path(path)
    sources = getattr(model, "checkpoint_files", ())
    refuse_overwriting_sources(path, sources)
    ours = model.state_dict()
    theirs, _ = translate(
        LAYOUTS[model.config.model_type, "meta"].rules(model.config),
        ours.__getitem__,
        ours,
        None,
        direction="to_theirs",
        origin=type(model).__name__,
        finalize=lambda key, tensor: tensor.detach().cpu().contiguous(),
    )
    LAYOUTS[model.config.model_type, "meta"].finish_save(theirs, model.config)
    with atomic_write(path, sources=sources) as temporary:
        torch.save(theirs, temporary)
    return path
