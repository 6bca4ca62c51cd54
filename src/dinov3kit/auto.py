"""`AutoConfig`, `AutoModel`, `AutoBackbone`, `AutoImageProcessor`: pick the DINOv3 class from a
checkpoint's `model_type` ("dinov3_vit" or "dinov3_convnext"), as transformers' Auto classes do.

Sources: hub ids and folders (their `config.json`), a `config.json` file, and Meta `.pth` checkpoints
(recognised from their tensor names). Model classes are imported by name when first needed.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .errors import CheckpointError
from .source import HubOptions, Source, resolve_source
from .weights.loading import model_type_of as _source_model_type
from .weights.loading import read_config

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


def source_of(source: str | os.PathLike | Source, **kwargs: Any) -> Source:
    """The resolved source, hub options taken from `kwargs` (revision, token, cache_dir, local_files_only)."""
    return resolve_source(source, HubOptions(**{key: kwargs.get(key) for key in HUB_KEYS}))


def model_type_of(source: str | os.PathLike | Source, **hub_kwargs: Any) -> str:
    """The `model_type` of a hub id, folder, `config.json` or Meta checkpoint file."""
    return _source_model_type(source_of(source, **hub_kwargs))


def _split_hub_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    hub = {key: kwargs[key] for key in HUB_KEYS if key in kwargs}
    return hub, {key: value for key, value in kwargs.items() if key not in HUB_KEYS}


class AutoConfig:
    """The config class of a checkpoint's model type."""

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | Source, **kwargs: Any):
        """Read (or, for a Meta checkpoint, infer from the tensors) the config of `source`; keyword
        arguments that are not hub options (revision, token, cache_dir, local_files_only) override fields."""
        hub_kwargs, overrides = _split_hub_kwargs(kwargs)
        return read_config(source_of(source, **hub_kwargs), overrides=overrides)

    @classmethod
    def for_model(cls, model_type: str, **kwargs: Any):
        """A new config of `model_type` ("dinov3_vit" or "dinov3_convnext")."""
        return class_for(model_type, "config")(**kwargs)


class _AutoModelClass:
    role: str

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | Source, *args: Any, **kwargs: Any):
        """`<ModelClass>.from_pretrained(source, ...)` for the class of the checkpoint's model type."""
        config = kwargs.get("config")
        source = source_of(source, **kwargs)
        model_type = config.model_type if config is not None else _source_model_type(source)
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
    def from_pretrained(cls, source: str | os.PathLike | Source, **kwargs: Any):
        """See `DINOv3ViTImageProcessor.from_pretrained`; `use_fast` is accepted and ignored."""
        from .pixels.processor import DINOv3ViTImageProcessor  # PIL loads on first use: `import dinov3kit` stays fast

        kwargs.pop("use_fast", None)
        return DINOv3ViTImageProcessor.from_pretrained(source, **kwargs)
