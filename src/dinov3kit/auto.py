"""`AutoConfig`, `AutoModel`, `AutoBackbone`, `AutoImageProcessor`: pick the DINOv3 class from a
checkpoint's `model_type` ("dinov3_vit" or "dinov3_convnext"), as transformers' Auto classes do.

Sources: hub ids and folders (their `config.json`), a `config.json` file, and Meta `.pth` checkpoints
(recognised from their tensor names). Model classes are imported by name when first needed.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from .weights.errors import CheckpointError

#: model_type → role → (module, class name).
MODEL_CLASSES: dict[str, dict[str, tuple[str, str]]] = {
    "dinov3_vit": {
        "config": ("dinov3kit.configs", "DINOv3ViTConfig"),
        "model": ("dinov3kit.models.vit", "DINOv3ViTModel"),
        "backbone": ("dinov3kit.models.vit", "DINOv3ViTBackbone"),
    },
    "dinov3_convnext": {
        "config": ("dinov3kit.configs", "DINOv3ConvNextConfig"),
        "model": ("dinov3kit.models.convnext", "DINOv3ConvNextModel"),
        "backbone": ("dinov3kit.models.convnext", "DINOv3ConvNextBackbone"),
    },
}
HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only")


def class_for(model_type: str, role: str) -> type:
    """The dinov3kit class playing `role` ("config", "model", "backbone") for `model_type`."""
    if model_type not in MODEL_CLASSES:
        raise CheckpointError(
            f"model_type {model_type!r} is not a DINOv3 model; dinov3kit supports {sorted(MODEL_CLASSES)}"
        )
    module_name, class_name = MODEL_CLASSES[model_type][role]
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise CheckpointError(f"{class_name} ({model_type}) is not available in this dinov3kit install: {error}") from error


def model_type_of(source: str | os.PathLike, **hub_kwargs: Any) -> str:
    """The `model_type` of a hub id, folder, `config.json` or Meta checkpoint file."""
    if _is_meta_file(source):
        from .weights.loading import meta_model_type
        from .weights.resolve import locate

        return meta_model_type(locate(source, _hub(hub_kwargs)))
    return _config_json(source, hub_kwargs)[1]["model_type"]


def _config_json(source: str | os.PathLike, hub_kwargs: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    from .weights.resolve import resolve_config_file

    config_file = Path(resolve_config_file(source, _hub(hub_kwargs)))
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_file}: not a readable JSON config ({error})") from error
    if not isinstance(data, dict) or "model_type" not in data:
        raise CheckpointError(f"{config_file}: has no model_type; is it a transformers config.json?")
    return config_file, data


def _is_meta_file(source: str | os.PathLike) -> bool:
    path = Path(source).expanduser()
    return path.is_file() and path.suffix != ".json" and not path.name.endswith(".safetensors")


def _hub(hub_kwargs: dict[str, Any]):
    from .weights.resolve import HubOptions

    return HubOptions(**{key: hub_kwargs.get(key) for key in HUB_KEYS})


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in HUB_KEYS if key in kwargs}


class AutoConfig:
    """The config class of a checkpoint's model type."""

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any):
        """Read (or, for a Meta checkpoint, infer from the tensors) the config of `source`; keyword
        arguments that are not hub options (revision, token, cache_dir, local_files_only) override fields."""
        hub_kwargs = _hub_kwargs(kwargs)
        overrides = {key: value for key, value in kwargs.items() if key not in HUB_KEYS}
        if _is_meta_file(source):
            from .weights.loading import meta_model_type, read_config
            from .weights.resolve import locate

            checkpoint = locate(source, _hub(hub_kwargs))
            config = read_config(checkpoint, class_for(meta_model_type(checkpoint), "config"))
            return config.copy(**overrides) if overrides else config
        config_file, data = _config_json(source, hub_kwargs)
        config_class = class_for(data["model_type"], "config")
        try:
            return config_class.from_dict(data, **overrides)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{config_file}: invalid config ({error})") from error

    @classmethod
    def for_model(cls, model_type: str, **kwargs: Any):
        """A new config of `model_type` ("dinov3_vit" or "dinov3_convnext")."""
        return class_for(model_type, "config")(**kwargs)


class _AutoModelClass:
    role: str

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *args: Any, **kwargs: Any):
        """`<ModelClass>.from_pretrained(source, ...)` for the class of the checkpoint's model type."""
        config = kwargs.get("config")
        model_type = config.model_type if config is not None else model_type_of(source, **_hub_kwargs(kwargs))
        return class_for(model_type, cls.role).from_pretrained(source, *args, **kwargs)

    @classmethod
    def from_config(cls, config: Any):
        """A randomly initialised model for `config` (training from scratch)."""
        return class_for(config.model_type, cls.role)(config)


class AutoModel(_AutoModelClass):
    """`DINOv3ViTModel` or `DINOv3ConvNextModel`, chosen by the checkpoint's model type."""

    role = "model"


class AutoBackbone(_AutoModelClass):
    """`DINOv3ViTBackbone` or `DINOv3ConvNextBackbone`, chosen by the checkpoint's model type."""

    role = "backbone"


class AutoImageProcessor:
    """The image processor of a checkpoint (DINOv3 ViT and ConvNeXt share `DINOv3ViTImageProcessor`)."""

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any):
        """See `DINOv3ViTImageProcessor.from_pretrained`; `use_fast` is accepted and ignored."""
        from .processing import DINOv3ViTImageProcessor

        kwargs.pop("use_fast", None)
        return DINOv3ViTImageProcessor.from_pretrained(source, **kwargs)
