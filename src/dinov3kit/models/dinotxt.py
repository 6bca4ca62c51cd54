"""dino.txt: a DINOv3 ViT, a vision head and a CLIP-style text transformer in one embedding space.

Image side: the backbone's normed tokens [CLS, registers, patches] go through `vision_head` (pre-norm
blocks without RoPE, SwiGLU MLPs, layer scale, a final LayerNorm); the image embedding is
[head CLS, mean of head patches] (2 x 1024 = 2048 for the released ViT-L/16). Text side: token and
position embeddings, causal pre-norm blocks with GELU MLPs, a final LayerNorm, the features at the end
token (the largest id of a row) and a bias-free projection to 2048. The second half of a text embedding
is aligned with the head's patch tokens: that is what open-vocabulary segmentation compares.
Shapes: B images, T texts, L context, N tokens, D width, h x w patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import DINOv3TextConfig as DINOv3TextConfig  # re-exported: the config lives with the others
from ..configs import swiglu_hidden
from ..weights.dinotxt import load_dinotxt, save_dinotxt
from .base import PreTrainedModel
from .layers import LayerNorm, LayerScale, Mlp
from .outputs import ModelOutput
from .vit import DINOv3ViTModel


@dataclass
class DINOv3TextOutput(ModelOutput):
    """CLIP-style outputs: scaled cosine logits and the normalised embeddings."""

    logits_per_image: torch.Tensor | None = None  # [B, T]
    logits_per_text: torch.Tensor | None = None  # [T, B]
    text_embeds: torch.Tensor | None = None  # [T, E], unit norm
    image_embeds: torch.Tensor | None = None  # [B, E], unit norm


class SelfAttention(nn.Module):
    """Multi-head self-attention without position rotation; `causal` masks later tokens."""

    def __init__(self, dim: int, num_heads: int, *, causal: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d] each
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class HeadBlock(nn.Module):
    """A vision-head block: x + ls1(attn(norm1(x))), then x + ls2(swiglu(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, hidden: int, *, layerscale_value: float, eps: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, causal=False)
        self.ls1 = LayerScale(dim, layerscale_value)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, act="silu", bias=True, gated=True)
        self.ls2 = LayerScale(dim, layerscale_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TextBlock(nn.Module):
    """A text block: x + attn(norm1(x)) with a causal mask, then x + gelu_mlp(norm2(x)); no layer scale."""

    def __init__(self, dim: int, num_heads: int, hidden: int, *, eps: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, causal=True)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, act="gelu", bias=True, gated=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionHead(nn.Module):
    """Blocks over the backbone's normed tokens, then a LayerNorm (identity without blocks)."""

    def __init__(self, config: DINOv3TextConfig, dim: int, num_heads: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(dim, config.vision_head_mlp_ratio)
        self.blocks = nn.ModuleList(
            HeadBlock(dim, num_heads, hidden, layerscale_value=config.vision_head_layerscale_value, eps=config.layer_norm_eps)
            for _ in range(config.vision_head_layers)
        )
        self.norm = LayerNorm(dim, eps=config.layer_norm_eps) if config.vision_head_layers else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class TextTransformer(nn.Module):
    """Token ids [T, L] to final-normed token features [T, L, D]."""

    def __init__(self, config: DINOv3TextConfig) -> None:
        super().__init__()
        dim = config.text_hidden_size
        self.token_embedding = nn.Embedding(config.text_vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.text_context_length, dim))
        hidden = int(dim * config.text_mlp_ratio)
        self.blocks = nn.ModuleList(
            TextBlock(dim, config.text_num_attention_heads, hidden, eps=config.layer_norm_eps)
            for _ in range(config.text_num_hidden_layers)
        )
        self.norm = LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:length]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class DINOv3TextModel(PreTrainedModel):
    """dino.txt: `get_image_features`, `get_text_features`, `get_patch_features` and CLIP-style logits.

    Load Meta's release with
    `DINOv3TextModel.from_pretrained("dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth",
    backbone="dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth")`, or a folder written by `save_pretrained`.
    """

    config_class = DINOv3TextConfig
    backbone_class = DINOv3ViTModel
    main_input_name = "pixel_values"

    def __init__(self, config: DINOv3TextConfig, backbone: DINOv3ViTModel | None = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else DINOv3ViTModel(config.vision)
        vision = self.backbone.config
        self.vision_head = VisionHead(config, vision.hidden_size, vision.num_attention_heads)
        self.vision_projection = (
            nn.Linear(vision.hidden_size, config.patch_dim, bias=False) if vision.hidden_size != config.patch_dim else None
        )
        self.text_model = TextTransformer(config)
        self.text_projection = nn.Linear(config.text_hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor([config.logit_scale_init_value]))

    # --- image side ---------------------------------------------------------------------------
    def _head_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(head CLS [B, P], head patches [B, h*w, P], backbone patches [B, h*w, D])."""
        tokens = self.backbone(pixel_values).last_hidden_state  # [B, N, D], normed
        prefix = self.backbone.config.num_prefix_tokens
        head = self.vision_head(tokens)
        if self.vision_projection is not None:
            head = self.vision_projection(head)
        return head[:, 0], head[:, prefix:], tokens[:, prefix:]

    def _pool(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        parts = ([cls] if self.config.vision_use_class_token else []) + (
            [patches.mean(dim=1)] if self.config.vision_use_patch_tokens else []
        )
        return torch.cat(parts, dim=-1)

    def get_image_features(self, pixel_values: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Image embeddings [B, E] (E = projection_dim): [head CLS, mean head patch] (Meta's `encode_image`)."""
        cls, patches, _ = self._head_tokens(pixel_values)
        features = self._pool(cls, patches)
        return F.normalize(features, dim=-1) if normalize else features

    def get_image_and_patch_features(
        self, pixel_values: torch.Tensor, *, normalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings [B, E], head patch features [B, h, w, P]) from one forward pass."""
        cls, patches, _ = self._head_tokens(pixel_values)
        features = self._pool(cls, patches)
        grid = self.backbone.patch_grid(pixel_values)
        patches = patches.unflatten(1, grid)
        if normalize:
            features, patches = F.normalize(features, dim=-1), F.normalize(patches, dim=-1)
        return features, patches

    def get_patch_features(
        self, pixel_values: torch.Tensor, *, normalize: bool = False, source: str = "head"
    ) -> torch.Tensor:
        """Patch features [B, h, w, P]: the vision head's (`source="head"`, aligned with the second half of
        the text embeddings, as Meta's inference notebook uses) or the backbone's normed ones
        (`source="backbone"`, what Meta's segmentation notebook reads)."""
        if source not in ("head", "backbone"):
            raise ValueError(f"source must be 'head' or 'backbone', got {source!r}")
        _, head, backbone = self._head_tokens(pixel_values)
        patches = (head if source == "head" else backbone).unflatten(1, self.backbone.patch_grid(pixel_values))
        return F.normalize(patches, dim=-1) if normalize else patches

    # --- text side ----------------------------------------------------------------------------
    def get_text_features(self, input_ids: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Text embeddings [T, E] at each row's end token (its largest id), projected (Meta's `encode_text`)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [texts, length], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.text_context_length:
            raise ValueError(
                f"input_ids have {input_ids.shape[1]} tokens; the text encoder takes at most "
                f"{self.config.text_context_length}"
            )
        ends = input_ids.argmax(dim=-1)
        # Causal attention: the end token never sees the padding after it, so the columns past the last end
        # token cannot change the result; dropping them makes short prompts ~5x cheaper than 77 tokens.
        tokens = self.text_model(input_ids[:, : int(ends.max()) + 1])  # [T, L', D]
        features = self.text_projection(tokens[torch.arange(tokens.shape[0], device=tokens.device), ends])
        return F.normalize(features, dim=-1) if normalize else features

    def patch_aligned_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """The part of text embeddings [T, E] that is aligned with head patch features: the last P values."""
        return text_features[..., -self.config.patch_dim :]

    def get_patch_text_similarity(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [B, T, h, w] between each head patch feature and each text's patch-aligned part."""
        patches = self.get_patch_features(pixel_values, normalize=True)  # [B, h, w, P]
        text = F.normalize(self.patch_aligned_text(self.get_text_features(input_ids)), dim=-1)  # [T, P]
        return torch.einsum("bhwp,tp->bthw", patches, text)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, return_dict: bool = True):
        """CLIP-style: logits_per_image [B, T] = exp(logit_scale) * cosine(image, text)."""
        text = self.get_text_features(input_ids, normalize=True)
        image = self.get_image_features(pixel_values, normalize=True)
        logits_per_image = self.logit_scale.exp() * image @ text.T
        output = DINOv3TextOutput(logits_per_image, logits_per_image.T, text, image)
        return output if return_dict else output.to_tuple()

    # --- files --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        backbone: str | os.PathLike | DINOv3ViTModel | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ) -> DINOv3TextModel:
        """A folder written by `save_pretrained`, or Meta's `..._dinotxt_vision_head_and_text_encoder-*.pth`
        with `backbone` (Meta's ViT-L/16 `.pth`, any source `DINOv3ViTModel.from_pretrained` reads, or a
        loaded model). Config fields given as keywords override the stored or inferred ones."""
        return load_dinotxt(cls, source, backbone=backbone, dtype=dtype, device=device, overrides=config_overrides)

    def save_pretrained(self, folder: str | os.PathLike, **_: Any) -> Path:
        """Write `config.json` (with the backbone's config) and `model.safetensors` (all weights)."""
        return save_dinotxt(self, folder)
