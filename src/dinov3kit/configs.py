"""Model configurations with transformers' names and defaults, read from and written to `config.json`."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .variants import CONVNEXT_VARIANTS, VIT_VARIANTS

CONFIG_NAME = "config.json"


@dataclass
class BaseConfig:
    """JSON round trip and backbone stage selection shared by every DINOv3 config.

    Keys of a `config.json` that are not fields (``architectures``, ``dtype``, keys of newer
    transformers releases) are kept in `extra` and written back unchanged.
    """

    model_type: ClassVar[str] = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)

    # --- JSON --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "BaseConfig":
        data = {**data, **overrides}
        declared = data.get("model_type", cls.model_type)
        if declared != cls.model_type:
            raise ValueError(f"config has model_type {declared!r}, but {cls.__name__} needs {cls.model_type!r}")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("model_type", "stage_names")}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        out["stage_names"] = self.stage_names
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BaseConfig":
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `config.json` into `folder` (created if needed) and return its path."""
        path = Path(folder) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json_string(), encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **overrides: Any) -> "BaseConfig":
        """Read the config of a local folder, a `config.json` path or a hub id."""
        from .weights.resolve import resolve_config_file

        with open(resolve_config_file(source), encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle), **overrides)

    # --- backbone stages ---------------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        raise NotImplementedError

    def _align_out_features(self) -> None:
        """Fill whichever of `out_features`/`out_indices` is missing, as transformers does, and validate."""
        stages = self.stage_names
        features, indices = self.out_features, self.out_indices
        if features is not None:
            features = list(features)
            unknown = [name for name in features if name not in stages]
            if unknown:
                raise ValueError(f"out_features {unknown} are not stages; choose from {stages}")
            if features != [name for name in stages if name in features]:
                raise ValueError(f"out_features must follow the order of {stages}, got {features}")
        if indices is not None:
            indices = list(indices)
            bad = [i for i in indices if not -len(stages) <= i < len(stages)]
            if bad:
                raise ValueError(f"out_indices {bad} are out of range for {len(stages)} stages {stages}")
        if features is None and indices is None:
            features, indices = [stages[-1]], [len(stages) - 1]
        elif features is None:
            features = [stages[i] for i in indices]
        elif indices is None:
            indices = [stages.index(name) for name in features]
        elif [stages[i] for i in indices] != features:
            raise ValueError(f"out_features {features} and out_indices {indices} name different stages")
        self.out_features, self.out_indices = features, indices

    def set_out_indices(self, out_indices: list[int]) -> None:
        """Select backbone stages by index (0 = stem, i = output of block i)."""
        self.out_features, self.out_indices = None, list(out_indices)
        self._align_out_features()

    def copy(self, **changes: Any) -> "BaseConfig":
        data = self.to_dict()
        if "out_indices" in changes or "out_features" in changes:
            data["out_indices"] = data["out_features"] = None
        return type(self).from_dict(data, **changes)


@dataclass
class DINOv3ViTConfig(BaseConfig):
    """Configuration of a DINOv3 ViT; every field has transformers' `DINOv3ViTConfig` name and default."""

    model_type: ClassVar[str] = "dinov3_vit"

    patch_size: int = 16
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    hidden_act: str = "gelu"
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    image_size: int = 224
    num_channels: int = 3
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layerscale_value: float = 1.0
    drop_path_rate: float = 0.0
    use_gated_mlp: bool = False
    num_register_tokens: int = 0
    pos_embed_shift: float | None = None
    pos_embed_jitter: float | None = None
    pos_embed_rescale: float | None = 2.0
    out_features: list[str] | None = None
    out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    return_class_token: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, (list, tuple)):
            if len(set(self.patch_size)) != 1:
                raise ValueError(f"only square patches are supported, got patch_size={self.patch_size}")
            self.patch_size = int(self.patch_size[0])
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {self.head_dim}")
        self._align_out_features()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, which precede the patch tokens."""
        return 1 + self.num_register_tokens

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DINOv3ViTConfig":
        """Config of a released variant: vits16, vits16plus, vitb16, vitl16, vitl16plus, vith16plus, vit7b16."""
        key = name.removeprefix("dinov3_").replace("-", "").replace("_", "").lower()
        if key not in VIT_VARIANTS:
            raise ValueError(f"unknown DINOv3 ViT preset {name!r}; choose from {sorted(VIT_VARIANTS)}")
        return cls(**{**VIT_VARIANTS[key].config_kwargs(), **overrides})


@dataclass
class DINOv3ConvNextConfig(BaseConfig):
    """Configuration of a DINOv3 ConvNeXt; every field has transformers' `DINOv3ConvNextConfig` name and
    default (ConvNeXt-T). Stages: "stem" is the input image, "stageN" the output of stage N."""

    model_type: ClassVar[str] = "dinov3_convnext"

    num_channels: int = 3
    hidden_sizes: list[int] | None = None
    depths: list[int] | None = None
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    layer_scale_init_value: float = 1e-6
    drop_path_rate: float = 0.0
    image_size: int | list[int] = 224
    out_features: list[str] | None = None
    out_indices: list[int] | None = None

    def __post_init__(self) -> None:
        self.hidden_sizes = [96, 192, 384, 768] if self.hidden_sizes is None else [int(h) for h in self.hidden_sizes]
        self.depths = [3, 3, 9, 3] if self.depths is None else [int(d) for d in self.depths]
        if not self.depths or len(self.depths) != len(self.hidden_sizes):
            raise ValueError(
                f"depths {self.depths} and hidden_sizes {self.hidden_sizes} must name the same, non-zero number of stages"
            )
        self._align_out_features()

    @property
    def num_stages(self) -> int:
        return len(self.hidden_sizes)

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i}" for i in range(1, self.num_stages + 1)]

    # --- the token view shared with the ViT: one "CLS" (the pooled map), no registers -----------
    @property
    def hidden_size(self) -> int:
        """Width of the output tokens (the last stage's)."""
        return self.hidden_sizes[-1]

    @property
    def patch_size(self) -> int:
        """Pixels per output token along each side: the total stride (stem 4, then 2 per later stage)."""
        return 4 * 2 ** (self.num_stages - 1)

    @property
    def num_register_tokens(self) -> int:
        return 0

    @property
    def num_prefix_tokens(self) -> int:
        """The pooled "CLS" token that precedes the patch tokens."""
        return 1

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DINOv3ConvNextConfig":
        """Config of a released variant: tiny, small, base, large (also "convnext_tiny", "dinov3_convnext_tiny")."""
        key = name.lower().removeprefix("dinov3").strip("_-").removeprefix("convnext").strip("_-")
        if key not in CONVNEXT_VARIANTS:
            raise ValueError(f"unknown DINOv3 ConvNeXt preset {name!r}; choose from {sorted(CONVNEXT_VARIANTS)}")
        return cls(**{**CONVNEXT_VARIANTS[key].config_kwargs(), **overrides})
