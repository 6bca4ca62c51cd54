"""DINOv3 ConvNeXt: the model (pooled "CLS" and patch tokens, as transformers and Meta's
`forward_features`) and the backbone (the stages' feature maps).

Token layout of `last_hidden_state`: [pooled, patches (row-major)], all normed by the final LayerNorm;
the pooled token is the global average of the last feature map. Inputs of any size: remainders that
do not fill a stride are cropped, as by transformers and Meta.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..configs import DINOv3ConvNextConfig
from .base import BackboneMixin, PreTrainedModel, layer_indices
from .convnext_layers import ConvNextBlock, ConvNextStage
from .outputs import BackboneOutput, BaseModelOutputWithPooling


def drop_path_rates(depths: Sequence[int], max_rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 at the first block to `max_rate` at the last, per stage."""
    total = sum(depths)
    rates = [max_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths)]


def _channels_last_weights(model: nn.Module, incompatible_keys=None) -> None:
    """Store the conv kernels in channels-last memory, the layout the CPU kernels run fastest with
    (a load-state-dict hook too, since loading may assign new, contiguous tensors)."""
    model.to(memory_format=torch.channels_last)


def pooled_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, 1 + H*W, C]: the global average, then every pixel (row-major)."""
    patches = feature_map.flatten(2).transpose(1, 2)
    return torch.cat([patches.mean(1, keepdim=True), patches], dim=1)


class DINOv3ConvNextPreTrainedModel(PreTrainedModel):
    """The stages shared by `DINOv3ConvNextModel` and `DINOv3ConvNextBackbone` (same parameter names)."""

    config_class = DINOv3ConvNextConfig

    def __init__(self, config: DINOv3ConvNextConfig) -> None:
        super().__init__(config)
        in_dims = [config.num_channels] + config.hidden_sizes[:-1]
        self.stages = nn.ModuleList(
            ConvNextStage(
                in_dim,
                dim,
                is_stem=index == 0,
                drop_paths=rates,
                act=config.hidden_act,
                norm_eps=config.layer_norm_eps,
                layer_scale_init_value=config.layer_scale_init_value,
            )
            for index, (in_dim, dim, rates) in enumerate(
                zip(in_dims, config.hidden_sizes, drop_path_rates(config.depths, config.drop_path_rate))
            )
        )
        self.register_load_state_dict_post_hook(_channels_last_weights)

    def post_init(self) -> None:
        """Initialise the weights, unless the model is built on the meta device to receive a checkpoint."""
        if not next(self.parameters()).is_meta:
            self.init_weights()
            _channels_last_weights(self)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random initialisation for training from scratch (truncated normal, zero biases, unit norms)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=self.config.initializer_range)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, ConvNextBlock):
                nn.init.constant_(module.gamma, self.config.layer_scale_init_value)

    def encode(self, pixel_values: torch.Tensor, num_stages: int | None = None) -> list[torch.Tensor]:
        """The input, then the output of each of the first `num_stages` stages (all by default), NCHW.

        The maps are in channels-last memory, which makes the depthwise convs and the per-pixel MLPs
        run without copies on the CPU.
        """
        config = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
            raise ValueError(
                f"pixel_values must be [batch, {config.num_channels}, height, width], got {tuple(pixel_values.shape)}"
            )
        if min(pixel_values.shape[-2:]) < config.patch_size:
            raise ValueError(
                f"input {tuple(pixel_values.shape[-2:])} is smaller than the model's stride of {config.patch_size} px"
            )
        x = pixel_values.to(dtype=self.dtype, memory_format=torch.channels_last)
        states = [x]
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages[:num_stages]:
            x = stage.downsample(x)
            for block in stage.blocks:
                x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
            states.append(x)
        return states


class DINOv3ConvNextModel(DINOv3ConvNextPreTrainedModel):
    """DINOv3 ConvNeXt returning normed tokens [B, 1 + h*w, C] (`last_hidden_state`: the pooled "CLS",
    then the last feature map's pixels) and the normed pooled token (`pooler_output`), as transformers."""

    def __init__(self, config: DINOv3ConvNextConfig) -> None:
        super().__init__(config)
        self.norm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
    ) -> BaseModelOutputWithPooling | tuple:
        states = self.encode(pixel_values)
        tokens = self.norm(pooled_tokens(states[-1]))
        output = BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=tokens[:, 0],
            hidden_states=tuple(states) if output_hidden_states else None,
        )
        return output if return_dict or return_dict is None else output.to_tuple()

    def forward_features(self, pixel_values: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """Meta's `forward_features` dictionary: the normed pooled token and patches, no storage tokens,
        and the patches before the norm (`x_prenorm`, [B, h*w, C], as Meta). `masks` is passed through."""
        feature_map = self.encode(pixel_values)[-1]
        tokens = self.norm(pooled_tokens(feature_map))
        return {
            "x_norm_clstoken": tokens[:, 0],
            "x_storage_tokens": tokens[:, 1:1],
            "x_norm_patchtokens": tokens[:, 1:],
            "x_prenorm": feature_map.flatten(2).transpose(1, 2),
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        pixel_values: torch.Tensor,
        n: int | Sequence[int] = 1,
        *,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Stage outputs as in Meta's API: `n` is the number of last stages or a list of 0-based stage
        indices. Patches are [B, h*w, C], or NCHW maps with `reshape`; with `return_class_token` each
        entry is (patches, pooled [B, C]). As Meta, `norm` applies the final norm to the last stage only."""
        count = self.config.num_stages
        indices = layer_indices(n, count)
        states = self.encode(pixel_values, num_stages=max(indices) + 1)
        results = []
        for index in indices:
            feature_map = states[index + 1]
            tokens = pooled_tokens(feature_map)
            if norm and index == count - 1:
                tokens = self.norm(tokens)
            pooled, patches = tokens[:, 0], tokens[:, 1:]
            if reshape:
                patches = patches.transpose(1, 2).reshape(feature_map.shape).contiguous()
            results.append((patches, pooled) if return_class_token else patches)
        return tuple(results)


class DINOv3ConvNextBackbone(BackboneMixin, DINOv3ConvNextPreTrainedModel):
    """Feature maps of the stages chosen by `config.out_features` / `out_indices` ("stem" = the input,
    "stageN" = output of stage N), un-normed NCHW maps, as transformers. It has no final norm."""

    def __init__(self, config: DINOv3ConvNextConfig) -> None:
        super().__init__(config)
        self.post_init()

    @property
    def num_features(self) -> list[int]:
        return [self.config.num_channels] + list(self.config.hidden_sizes)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
    ) -> BackboneOutput | tuple:
        selected = [self.stage_names.index(name) for name in self.out_features]
        states = self.encode(pixel_values, num_stages=None if output_hidden_states else max(selected))
        output = BackboneOutput(
            feature_maps=tuple(states[index] for index in selected),
            hidden_states=tuple(states) if output_hidden_states else None,
        )
        return output if return_dict or return_dict is None else output.to_tuple()
