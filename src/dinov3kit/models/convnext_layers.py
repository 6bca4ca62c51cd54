"""The building blocks of a DINOv3 ConvNeXt. Feature maps are NCHW tensors, ideally in channels-last
memory: then every permute below is a free view and no kernel copies its input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backend.cpu import inference_only
from ..backend.modules import FastLinear, linear_then_activation, unobserved
from .layers import DropPath, activation

#: Stem: non-overlapping 4x4 patches. Later stages halve the resolution with a 2x2 stride-2 conv.
STEM_STRIDE = 4
DOWNSAMPLE_STRIDE = 2
KERNEL_SIZE = 7
MLP_RATIO = 4


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW map (ConvNeXt's "channels_first" norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)


class ConvNextBlock(nn.Module):
    """x + gamma * pwconv2(act(pwconv1(norm(dwconv(x))))): a 7x7 depthwise conv, then a per-pixel MLP
    on channels-last pixels, scaled per channel and added to the input."""

    def __init__(self, dim: int, *, act: str, norm_eps: float, layer_scale_init_value: float, drop_path: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, KERNEL_SIZE, padding=KERNEL_SIZE // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pwconv1 = FastLinear(dim, MLP_RATIO * dim)
        self.act = activation(act)
        self.pwconv2 = FastLinear(MLP_RATIO * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(self.dwconv(x).permute(0, 2, 3, 1))  # [B, H, W, C]
        y = self.pwconv2(linear_then_activation(self.pwconv1, self.act, normed))  # [B, H, W, C]
        if not self.drop_path.active and unobserved(self.pwconv2, FastLinear) and inference_only(y, self.gamma, x):
            # The scale and residual sum overwrite pwconv2's fresh output: on CPUs a fresh large allocation
            # (page faults) costs more than the arithmetic of these steps.
            return torch.addcmul(x.permute(0, 2, 3, 1), y, self.gamma, out=y).permute(0, 3, 1, 2)
        return x + self.drop_path((y * self.gamma).permute(0, 3, 1, 2))


class ConvNextStage(nn.Module):
    """A downsampling layer, then `depth` blocks at width `dim`.

    `downsample` is [conv 4x4 stride 4, norm] for the stem stage and [norm, conv 2x2 stride 2] for the
    others, in the order (and with the indices 0, 1) of Meta's and transformers' checkpoints.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        *,
        is_stem: bool,
        drop_paths: list[float],
        act: str,
        norm_eps: float,
        layer_scale_init_value: float,
    ) -> None:
        super().__init__()
        if is_stem:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_dim, dim, STEM_STRIDE, stride=STEM_STRIDE), LayerNorm2d(dim, eps=norm_eps)
            )
        else:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=norm_eps), nn.Conv2d(in_dim, dim, DOWNSAMPLE_STRIDE, stride=DOWNSAMPLE_STRIDE)
            )
        self.blocks = nn.ModuleList(
            ConvNextBlock(
                dim, act=act, norm_eps=norm_eps, layer_scale_init_value=layer_scale_init_value, drop_path=rate
            )
            for rate in drop_paths
        )
