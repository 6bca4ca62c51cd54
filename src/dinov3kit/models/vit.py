"""DINOv3 Vision Transformer: the model (tokens and pooled CLS) and the backbone (feature maps).

Token layout: [CLS, registers..., patches (row-major)]. RoPE acts on patch tokens only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backend import cpu
from ..backend.kernels import add_layer_norm, fused_kernels_usable
from ..backend.modules import unobserved
from ..configs import DINOv3ViTConfig
from .base import BackboneMixin, PreTrainedModel, layer_indices
from .layers import Block, DropPath, LayerNorm, LayerScale, PatchEmbed, residual_dtype
from .outputs import BackboneOutput, BaseModelOutputWithPooling
from .rope import rope_cos_sin, rope_periods

#: Grid sizes whose eval-mode RoPE tables are kept (oldest dropped first).
ROPE_CACHE_SIZE = 16


class DINOv3ViTPreTrainedModel(PreTrainedModel):
    """Parameters and token encoder shared by `DINOv3ViTModel` and `DINOv3ViTBackbone` (same weights)."""

    config_class = DINOv3ViTConfig
    #: Module lists whose items `device_map="auto"` may place on different devices.
    split_module_lists = ("blocks",)

    def __init__(self, config: DINOv3ViTConfig) -> None:
        super().__init__(config)
        dim = config.hidden_size
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.register_tokens = nn.Parameter(torch.empty(1, config.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim))
        self.patch_embed = PatchEmbed(config.num_channels, dim, config.patch_size)
        self.register_buffer("rope_periods", rope_periods(config.head_dim, config.rope_theta))
        self._rope_cache: dict[tuple, tuple] = {}  # (grid, dtype) -> (periods, version, (cos, sin))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_attention_heads,
                config.intermediate_size,
                act=config.hidden_act,
                gated_mlp=config.use_gated_mlp,
                query_bias=config.query_bias,
                key_bias=config.key_bias,
                value_bias=config.value_bias,
                proj_bias=config.proj_bias,
                mlp_bias=config.mlp_bias,
                layerscale_value=config.layerscale_value,
                norm_eps=config.layer_norm_eps,
                drop_path=config.drop_path_rate,
                attention_dropout=config.attention_dropout,
            )
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        if not self.cls_token.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random initialisation for training from scratch (truncated normal, zero biases, as transformers)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.endswith(("q_bias", "k_bias", "v_bias")):
                nn.init.zeros_(param)
            elif name.endswith("gamma"):
                nn.init.constant_(param, self.config.layerscale_value)
        nn.init.trunc_normal_(self.cls_token, std=std)
        nn.init.trunc_normal_(self.register_tokens, std=std)
        nn.init.zeros_(self.mask_token)
        self.rope_periods.copy_(rope_periods(self.config.head_dim, self.config.rope_theta))

    def patch_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """Patches per column and per row for an input (a remainder smaller than a patch is cropped)."""
        height, width = pixel_values.shape[-2:]
        return height // self.config.patch_size, width // self.config.patch_size

    def rope_tables(
        self, grid: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for a patch grid, computed in fp32 and stored in `dtype`; coordinates are augmented
        only in training mode (tables then stay fp32).

        In eval mode the tables are cached per grid size and dtype (a compiled graph computes them inline).
        """
        config = self.config
        if self.training:
            augment = dict(shift=config.pos_embed_shift, jitter=config.pos_embed_jitter, rescale=config.pos_embed_rescale)
            return rope_cos_sin(*grid, self.rope_periods, augment=augment)
        if torch.compiler.is_compiling():
            return rope_cos_sin(*grid, self.rope_periods)
        return self._cached_rope_tables(grid, dtype)

    def _cached_rope_tables(self, grid: tuple[int, int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode tables, recomputed only when the periods buffer is replaced (`.to()`, loading) or edited."""
        periods = self.rope_periods
        version = None if periods.is_inference() else periods._version
        entry = self._rope_cache.get((grid, dtype))
        if entry is None or entry[0] is not periods or entry[1] != version:
            with torch.inference_mode(False), torch.no_grad():  # usable later with autograd on
                tables = tuple(table.to(dtype) for table in rope_cos_sin(*grid, periods))
            if len(self._rope_cache) >= ROPE_CACHE_SIZE:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            entry = self._rope_cache[grid, dtype] = (periods, version, tables)
        return entry[2]

    def embed(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens before the first block: [B, 1 + registers + patches, D]."""
        patches = self.patch_embed(pixel_values.to(self.cls_token.dtype))  # [B, h*w, D]
        if bool_masked_pos is not None:
            mask = bool_masked_pos.reshape(*patches.shape[:2], 1).bool()
            patches = torch.where(mask, self.mask_token.to(patches.dtype), patches)
        batch = patches.shape[0]
        return torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1), patches], dim=1
        )

    def encode(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        *,
        output_attentions: bool = False,
        num_blocks: int | None = None,
        keep: Collection[int] | None = None,
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        """Run the embeddings and the first `num_blocks` blocks (all by default).

        Returns the hidden states (embeddings, then each block's output, before the final norm) and,
        when asked, each block's attention weights. With `keep` (indices into the hidden states, negative
        ones from the end), the others are None: they are not held for the rest of the forward. Between
        blocks the stream is kept in `residual_dtype`; the hidden states are returned in the model's dtype.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be [batch, {self.config.num_channels}, height, width], got {tuple(pixel_values.shape)}"
            )
        grid = self.patch_grid(pixel_values)
        if min(grid) < 1:
            raise ValueError(
                f"input {tuple(pixel_values.shape[-2:])} is smaller than one {self.config.patch_size}px patch"
            )
        x = self.embed(pixel_values, bool_masked_pos)
        dtype = x.dtype
        rope = self.rope_tables(grid, cpu.rope_dtype(x))
        eager = output_attentions or self.attn_implementation == "eager"
        prefix = self.config.num_prefix_tokens
        blocks = self.blocks[:num_blocks]
        count = len(blocks) + 1
        kept = None if keep is None else {index % count for index in keep} | {count - 1}
        hidden_states, attentions = [x if kept is None or 0 in kept else None], []
        x = x.to(residual_dtype(x))
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        fused = not checkpointing and fused_kernels_usable(x)
        normed = None  # the next block's norm1(x), when the fused step of the previous block computed it
        for index, block in enumerate(blocks):
            if checkpointing:
                x, weights = checkpoint(block, x, rope, prefix, eager, use_reentrant=False)
            elif fused and fusable(block):
                following = blocks[index + 1] if index + 1 < len(blocks) else None
                next_norm = following.norm1 if following is not None and fusable(following) else None
                x, weights, normed = fused_block(block, x, rope, prefix, eager, normed, next_norm)
            else:
                x, weights = block(x, rope, prefix, eager)
                normed = None
            hidden_states.append(x.to(dtype) if kept is None or index + 1 in kept else None)
            if output_attentions:
                attentions.append(weights)
        return hidden_states, attentions

    def get_intermediate_layers(
        self,
        pixel_values: torch.Tensor,
        n: int | Sequence[int] = 1,
        *,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Patch features of chosen blocks, as in Meta's API: `n` is the number of last blocks or a list of
        0-based block indices. `reshape=True` gives NCHW maps [B, D, h, w]. With `return_class_token` /
        `return_extra_tokens` each entry is a tuple (patches, cls [B, D], registers [B, R, D])."""
        depth = self.config.num_hidden_layers
        indices = layer_indices(n, depth)
        hidden_states, _ = self.encode(pixel_values, num_blocks=max(indices) + 1, keep=[i + 1 for i in indices])
        grid = self.patch_grid(pixel_values)
        prefix = self.config.num_prefix_tokens
        results = []
        for index in indices:
            tokens = hidden_states[index + 1]
            if norm:
                tokens = self.norm(tokens)
            patches = tokens[:, prefix:]
            if reshape:
                patches = patches.unflatten(1, grid).permute(0, 3, 1, 2).contiguous()
            extras = ([tokens[:, 0]] if return_class_token else []) + ([tokens[:, 1:prefix]] if return_extra_tokens else [])
            results.append((patches, *extras) if extras else patches)
        return tuple(results)

    def forward_features(self, pixel_values: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Meta's `forward_features` dictionary: normed CLS, registers and patches, and the pre-norm tokens."""
        hidden_states, _ = self.encode(pixel_values, masks, keep=[-1])
        tokens = self.norm(hidden_states[-1])
        prefix = self.config.num_prefix_tokens
        return {
            "x_norm_clstoken": tokens[:, 0],
            "x_storage_tokens": tokens[:, 1:prefix],
            "x_norm_patchtokens": tokens[:, prefix:],
            "x_prenorm": hidden_states[-1],
            "masks": masks,
        }


def fusable(block: nn.Module) -> bool:
    """Whether the encoder loop may run `block` as `fused_block`: a plain `Block` whose norms, layer scales
    and drop path are the model's own unhooked modules, with no path dropped."""
    if not unobserved(block, Block):
        return False
    parts = ((block.norm1, LayerNorm), (block.norm2, LayerNorm), (block.ls1, LayerScale), (block.ls2, LayerScale),
             (block.drop_path, DropPath))  # fmt: skip
    return all(unobserved(part, cls) for part, cls in parts) and not block.drop_path.active


def fused_block(
    block: Block,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    prefix: int,
    eager: bool,
    normed: torch.Tensor | None,
    next_norm: nn.LayerNorm | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`block(x)` on GPUs with each layer-scaled residual and the LayerNorm after it in one fused pass: the
    block's norm2 after its first residual, and `next_norm` (the next block's norm1) after its second one,
    when given. `normed` is block.norm1(x) when the previous step computed it. Returns (output, attention
    weights or None, next_norm(output) or None)."""
    attn, weights = block.attn(block.norm1(x) if normed is None else normed, rope, prefix, eager=eager)
    x, normed = add_layer_norm(x, attn, block.ls1.gamma, block.norm2)
    branch = block.mlp(normed)
    if next_norm is not None and next_norm.weight.device == x.device:
        x, following = add_layer_norm(x, branch, block.ls2.gamma, next_norm)
        return x, weights, following
    return block.residual(x, branch, block.ls2), weights, None


class DINOv3ViTModel(DINOv3ViTPreTrainedModel):
    """DINOv3 ViT returning normed tokens (`last_hidden_state`) and the normed CLS (`pooler_output`)."""

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = True,
    ) -> BaseModelOutputWithPooling | tuple:
        hidden_states, attentions = self.encode(
            pixel_values,
            bool_masked_pos,
            output_attentions=bool(output_attentions),
            keep=None if output_hidden_states else [-1],
        )
        tokens = self.norm(hidden_states[-1])
        output = BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=tokens[:, 0],
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        return output if return_dict or return_dict is None else output.to_tuple()


class DINOv3ViTBackbone(BackboneMixin, DINOv3ViTPreTrainedModel):
    """Feature maps of the stages chosen by `config.out_features` / `out_indices` (stem = embeddings,
    stageN = output of block N), normed when `apply_layernorm`, NCHW when `reshape_hidden_states`."""

    @property
    def num_features(self) -> list[int]:
        return [self.config.hidden_size] * len(self.stage_names)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = True,
    ) -> BackboneOutput | tuple:
        config = self.config
        hidden_states, attentions = self.encode(
            pixel_values,
            output_attentions=bool(output_attentions),
            keep=None if output_hidden_states else config.out_indices,
        )
        last_hidden_state = self.norm(hidden_states[-1])
        grid, prefix = self.patch_grid(pixel_values), config.num_prefix_tokens
        feature_maps, cls_tokens = [], []
        for index in config.out_indices:
            index %= len(hidden_states)
            if index == len(hidden_states) - 1:
                tokens = last_hidden_state
            else:
                tokens = self.norm(hidden_states[index]) if config.apply_layernorm else hidden_states[index]
            patches = tokens[:, prefix:]
            if config.reshape_hidden_states:
                patches = patches.unflatten(1, grid).permute(0, 3, 1, 2).contiguous()
            feature_maps.append(patches)
            cls_tokens.append(tokens[:, 0])
        output = BackboneOutput(
            feature_maps=tuple(feature_maps),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            cls_tokens=tuple(cls_tokens) if config.return_class_token else None,
        )
        output.last_hidden_state = last_hidden_state
        return output if return_dict or return_dict is None else output.to_tuple()
