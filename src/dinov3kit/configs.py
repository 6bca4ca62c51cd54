"""Model configurations with transformers' names and defaults, read from and written to `config.json`."""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .fileio import write_bytes_atomic
from .source import CONFIG_NAME, Source, resolve_source
from .variants import CONVNEXT_VARIANTS, VIT_VARIANTS

#: transformers' `hidden_act` names the models implement (models.layers.ACTIVATIONS has one module each).
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
#: Largest model a config may describe, in parameters (ViT-7B has 6.7e9): a config beyond it is a typo or
#: hostile, and refusing it here stops a loader from taking all the machine's memory before failing.
MAX_PARAMETERS = 5 * 10**10


class ConfigError(ValueError):
    """A config field holds a value the model cannot be built with; the message names the field, the
    value and what is allowed."""


@dataclass(frozen=True)
class Field:
    """What a numeric config field accepts: its kind ("int", "float" or "bool"), inclusive bounds, and
    whether None is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    optional: bool = False
    #: Whether the low bound itself is excluded (eps > 0, rates < 1).
    open_low: bool = False
    open_high: bool = False


def check_field(name: str, value: Any, spec: Field) -> None:
    """Raise `ConfigError` unless `value` is of the field's kind and inside its range."""
    if value is None:
        if spec.optional:
            return
        raise ConfigError(f"config field {name}={value!r}: a value is required")
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config field {name}={value!r}: expected true or false")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"config field {name}={value!r}: expected a number ({spec.kind})")
    if spec.kind == "int" and not isinstance(value, numbers.Integral):
        raise ConfigError(f"config field {name}={value!r}: expected an integer")
    if not math.isfinite(value):
        raise ConfigError(f"config field {name}={value!r}: expected a finite number")
    too_low = spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low)
    too_high = spec.high is not None and (value >= spec.high if spec.open_high else value > spec.high)
    if too_low or too_high:
        low = "" if spec.low is None else f"{spec.low:g} {'<' if spec.open_low else '<='} "
        high = "" if spec.high is None else f" {'<' if spec.open_high else '<='} {spec.high:g}"
        raise ConfigError(f"config field {name}={value!r} is out of range; allowed: {low}{name}{high}")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config field {name}={value!r}: expected one of {list(allowed)}")


def check_parameter_count(config: BaseConfig, count: int) -> None:
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"this config describes a model of about {count:.3g} parameters, over the {MAX_PARAMETERS:.0e} cap "
            f"(ViT-7B has 6.7e9); check its sizes ({config.size_summary()})"
        )


_SIZE = 1 << 16  # a width or image side beyond any real DINOv3 model
_COMMON_FIELDS = {
    "num_channels": Field("int", 1, 64),
    "initializer_range": Field("float", 0, None),
    "layer_norm_eps": Field("float", 0, 1, open_low=True),
    "drop_path_rate": Field("float", 0, 1, open_high=True),
}
VIT_FIELDS = {
    **_COMMON_FIELDS,
    "patch_size": Field("int", 1, 1024),
    "hidden_size": Field("int", 4, _SIZE),
    "intermediate_size": Field("int", 1, 4 * _SIZE),
    "num_hidden_layers": Field("int", 1, 1024),
    "num_attention_heads": Field("int", 1, 1024),
    "attention_dropout": Field("float", 0, 1, open_high=True),
    "rope_theta": Field("float", 0, None, open_low=True),
    "image_size": Field("int", 1, _SIZE),
    "layerscale_value": Field("float"),
    "num_register_tokens": Field("int", 0, 1024),
    "pos_embed_shift": Field("float", 0, None, optional=True),
    "pos_embed_jitter": Field("float", 0, None, optional=True),
    "pos_embed_rescale": Field("float", 1, None, optional=True),
    **{name: Field("bool") for name in (
        "query_bias", "key_bias", "value_bias", "proj_bias", "mlp_bias", "use_gated_mlp", "apply_layernorm",
        "reshape_hidden_states", "return_class_token",
    )},
}  # fmt: skip
CONVNEXT_FIELDS = {
    **_COMMON_FIELDS,
    "layer_scale_init_value": Field("float"),
}
#: ConvNeXt: each stage's width and depth.
CONVNEXT_STAGE_FIELDS = {"hidden_sizes": Field("int", 1, _SIZE), "depths": Field("int", 0, 1024)}


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
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> BaseConfig:
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
    def from_json_file(cls, path: str | os.PathLike) -> BaseConfig:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `config.json` into `folder` (created if needed, replaced atomically) and return its path."""
        path = Path(folder) / CONFIG_NAME
        write_bytes_atomic(path, self.to_json_string().encode("utf-8"))
        return path

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | Source, **overrides: Any) -> BaseConfig:
        """Read the config of a local folder, a `config.json` path or a hub id (`AutoConfig` also infers
        the config of a Meta `.pth` checkpoint)."""
        return cls.from_dict(resolve_source(source).config_data(), **overrides)

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

    def _check_stage_selection(self) -> None:
        for name, kind in (("out_features", str), ("out_indices", numbers.Integral)):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(item, kind) and not isinstance(item, bool) for item in value
            ):
                what = "stage names" if kind is str else "integers"
                raise ConfigError(f"config field {name}={value!r}: expected a list of {what}")

    def copy(self, **changes: Any) -> BaseConfig:
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
                raise ConfigError(f"config field patch_size={self.patch_size}: only square patches are supported")
            self.patch_size = self.patch_size[0]
        self.validate()
        self._align_out_features()

    def validate(self) -> None:
        """Check every field (type and range, head count against width, model size) before anything is
        built; raises `ConfigError` naming the first bad field."""
        for name, spec in VIT_FIELDS.items():
            check_field(name, getattr(self, name), spec)
        check_choice("hidden_act", self.hidden_act, HIDDEN_ACTS)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; choose a head count that divides the width"
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"config fields hidden_size={self.hidden_size} / num_attention_heads={self.num_attention_heads} give a "
                f"head dimension of {self.head_dim}; RoPE needs a multiple of 4"
            )
        self._check_stage_selection()
        check_parameter_count(self, self.parameter_estimate())

    def parameter_estimate(self) -> int:
        """About how many parameters the model has (attention and MLP weights, patch embedding, tokens)."""
        width, mlp = self.hidden_size, self.intermediate_size * (3 if self.use_gated_mlp else 2)
        per_block = 4 * width * width + mlp * width
        embedding = self.num_channels * self.patch_size**2 * width + (2 + self.num_register_tokens) * width
        return self.num_hidden_layers * per_block + embedding

    def size_summary(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}, "
            f"num_hidden_layers={self.num_hidden_layers}, patch_size={self.patch_size}"
        )

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
    def from_preset(cls, name: str, **overrides: Any) -> DINOv3ViTConfig:
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
        self.hidden_sizes = [96, 192, 384, 768] if self.hidden_sizes is None else self.hidden_sizes
        self.depths = [3, 3, 9, 3] if self.depths is None else self.depths
        self.validate()
        self.hidden_sizes, self.depths = list(self.hidden_sizes), list(self.depths)
        self._align_out_features()

    def validate(self) -> None:
        """Check every field (type and range, stage lists, model size) before anything is built; raises
        `ConfigError` naming the first bad field."""
        for name, spec in CONVNEXT_FIELDS.items():
            check_field(name, getattr(self, name), spec)
        check_choice("hidden_act", self.hidden_act, HIDDEN_ACTS)
        for name, spec in CONVNEXT_STAGE_FIELDS.items():
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= 8:
                raise ConfigError(f"config field {name}={values!r}: expected a list of 1 to 8 integers (one per stage)")
            for index, value in enumerate(values):
                check_field(f"{name}[{index}]", value, spec)
        if len(self.depths) != len(self.hidden_sizes):
            raise ConfigError(
                f"config fields depths={self.depths} and hidden_sizes={self.hidden_sizes} must name the same, non-zero "
                "number of stages"
            )
        sides = self.image_size if isinstance(self.image_size, (list, tuple)) else [self.image_size]
        for side in sides:
            check_field("image_size", side, Field("int", 1, _SIZE))
        self._check_stage_selection()
        check_parameter_count(self, self.parameter_estimate())

    def parameter_estimate(self) -> int:
        """About how many parameters the model has (block convolutions and MLPs, downsampling layers)."""
        widths = [self.num_channels, *self.hidden_sizes]
        blocks = sum(depth * (49 * width + 8 * width * width) for depth, width in zip(self.depths, self.hidden_sizes))
        downsample = sum(4 * before * after for before, after in zip(widths, widths[1:]))
        return blocks + downsample

    def size_summary(self) -> str:
        return f"hidden_sizes={self.hidden_sizes}, depths={self.depths}"

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
    def from_preset(cls, name: str, **overrides: Any) -> DINOv3ConvNextConfig:
        """Config of a released variant: tiny, small, base, large (also "convnext_tiny", "dinov3_convnext_tiny")."""
        key = name.lower().removeprefix("dinov3").strip("_-").removeprefix("convnext").strip("_-")
        if key not in CONVNEXT_VARIANTS:
            raise ValueError(f"unknown DINOv3 ConvNeXt preset {name!r}; choose from {sorted(CONVNEXT_VARIANTS)}")
        return cls(**{**CONVNEXT_VARIANTS[key].config_kwargs(), **overrides})


#: model_type → config class.
#: SwiGLU hidden widths of the vision head are rounded up to a multiple of this (Meta: `align_to=64`).
HEAD_MLP_ALIGN = 64


def swiglu_hidden(dim: int, ratio: float, align: int = HEAD_MLP_ALIGN) -> int:
    """Meta's SwiGLU width: two thirds of `dim * ratio`, rounded up to `align` (ViT-L: 4096 -> 2752)."""
    hidden = int(int(dim * ratio) * 2 / 3)
    return hidden + (-hidden % align)


@dataclass
class DINOv3TextConfig(BaseConfig):
    """Configuration of a dino.txt model; defaults are the released `dinov3_vitl16_dinotxt_tet1280d20h24l`."""

    model_type: ClassVar[str] = "dinov3_dinotxt"

    vision_config: dict[str, Any] = field(default_factory=lambda: DINOv3ViTConfig.from_preset("vitl16").to_dict())
    projection_dim: int = 2048
    vision_head_layers: int = 2
    vision_head_mlp_ratio: float = 4.0
    vision_head_layerscale_value: float = 1e-5
    vision_use_class_token: bool = True
    vision_use_patch_tokens: bool = True
    text_vocab_size: int = 49408
    text_context_length: int = 77
    text_hidden_size: int = 1280
    text_num_attention_heads: int = 20
    text_num_hidden_layers: int = 24
    text_mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    logit_scale_init_value: float = math.log(1 / 0.07)

    def __post_init__(self) -> None:
        if isinstance(self.vision_config, DINOv3ViTConfig):
            self.vision_config = self.vision_config.to_dict()
        if not (self.vision_use_class_token or self.vision_use_patch_tokens):
            raise ValueError("the image embedding needs the class token, the patch tokens or both")
        if self.text_hidden_size % self.text_num_attention_heads:
            raise ValueError(
                f"text_hidden_size {self.text_hidden_size} is not divisible by "
                f"text_num_attention_heads {self.text_num_attention_heads}"
            )
        parts = int(self.vision_use_class_token) + int(self.vision_use_patch_tokens)
        if self.projection_dim % parts:
            raise ValueError(f"projection_dim {self.projection_dim} must split into {parts} equal parts")

    @property
    def vision(self) -> DINOv3ViTConfig:
        return DINOv3ViTConfig.from_dict(self.vision_config)

    @property
    def patch_dim(self) -> int:
        """Width of one part of the image embedding (a head patch token after the optional projection)."""
        return self.projection_dim // (int(self.vision_use_class_token) + int(self.vision_use_patch_tokens))

    @property
    def stage_names(self) -> list[str]:
        return []


CONFIG_CLASSES: dict[str, type[BaseConfig]] = {cls.model_type: cls for cls in (DINOv3ViTConfig, DINOv3ConvNextConfig)}
