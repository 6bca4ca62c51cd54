"""The released DINOv3 variants as data: one registry used by configs, checkpoint inference and docs."""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)

#: Normalisation statistics per pretraining dataset.
NORMALIZATION = {
    "lvd1689m": (IMAGENET_MEAN, IMAGENET_STD),
    "sat493m": (SAT493M_MEAN, SAT493M_STD),
}
_DATASET_NAME = re.compile("|".join(NORMALIZATION))


def dataset_in_name(name: object) -> str | None:
    """The pretraining dataset a checkpoint's file name or hub id names ("lvd1689m", "sat493m"), if any."""
    match = _DATASET_NAME.search(str(name).lower())
    return match.group(0) if match else None


@dataclass(frozen=True)
class ViTVariant:
    """Architecture of one released DINOv3 ViT (all use patch 16 and 4 register tokens)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    use_gated_mlp: bool
    qkv_bias: bool
    datasets: tuple[str, ...] = ("lvd1689m",)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def config_kwargs(self) -> dict:
        """Keyword arguments for `DINOv3ViTConfig` reproducing this variant."""
        return dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            use_gated_mlp=self.use_gated_mlp,
            hidden_act="silu" if self.use_gated_mlp else "gelu",
            query_bias=self.qkv_bias,
            key_bias=False,
            value_bias=self.qkv_bias,
            num_register_tokens=4,
            layerscale_value=1e-5,
        )

    def hub_id(self, dataset: str = "lvd1689m") -> str:
        """The transformers-format repository on the Hugging Face hub."""
        return f"facebook/dinov3-{self.name}-pretrain-{dataset}"


VIT_VARIANTS: dict[str, ViTVariant] = {
    v.name: v
    for v in (
        ViTVariant("vits16", 384, 12, 6, 1536, False, True),
        ViTVariant("vits16plus", 384, 12, 6, 1536, True, True),
        ViTVariant("vitb16", 768, 12, 12, 3072, False, True),
        ViTVariant("vitl16", 1024, 24, 16, 4096, False, True, ("lvd1689m", "sat493m")),
        ViTVariant("vitl16plus", 1024, 24, 16, 4096, True, True),
        ViTVariant("vith16plus", 1280, 32, 20, 5120, True, True),
        ViTVariant("vit7b16", 4096, 40, 32, 8192, True, False, ("lvd1689m", "sat493m")),
    )
}


def find_vit_variant(
    *,
    hidden_size: int,
    num_hidden_layers: int,
    intermediate_size: int,
    use_gated_mlp: bool,
) -> ViTVariant | None:
    """The released variant with these dimensions, or None for a custom architecture."""
    for variant in VIT_VARIANTS.values():
        if (
            variant.hidden_size == hidden_size
            and variant.num_hidden_layers == num_hidden_layers
            and variant.intermediate_size == intermediate_size
            and variant.use_gated_mlp == use_gated_mlp
        ):
            return variant
    return None


@dataclass(frozen=True)
class ConvNextVariant:
    """Architecture of one released DINOv3 ConvNeXt (all: 4 stages, kernel 7, MLP ratio 4)."""

    name: str
    depths: tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    datasets: tuple[str, ...] = ("lvd1689m",)

    def config_kwargs(self) -> dict:
        """Keyword arguments for `DINOv3ConvNextConfig` reproducing this variant."""
        return dict(depths=list(self.depths), hidden_sizes=list(self.hidden_sizes))

    def hub_id(self, dataset: str = "lvd1689m") -> str:
        """The transformers-format repository on the Hugging Face hub."""
        return f"facebook/dinov3-convnext-{self.name}-pretrain-{dataset}"


CONVNEXT_VARIANTS: dict[str, ConvNextVariant] = {
    v.name: v
    for v in (
        ConvNextVariant("tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
        ConvNextVariant("small", (3, 3, 27, 3), (96, 192, 384, 768)),
        ConvNextVariant("base", (3, 3, 27, 3), (128, 256, 512, 1024)),
        ConvNextVariant("large", (3, 3, 27, 3), (192, 384, 768, 1536)),
    )
}


def find_convnext_variant(*, depths: list[int], hidden_sizes: list[int]) -> ConvNextVariant | None:
    """The released ConvNeXt with these stage depths and widths, or None for a custom architecture."""
    for variant in CONVNEXT_VARIANTS.values():
        if list(variant.depths) == list(depths) and list(variant.hidden_sizes) == list(hidden_sizes):
            return variant
    return None
