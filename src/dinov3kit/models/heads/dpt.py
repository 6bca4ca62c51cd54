"""Meta's DPT depth heads on a DINOv3 ViT: `dinov3_vit7b16_dd` (SYNTHMIX depth, ViT-7B) and the CHMv2
canopy-height head (`dinov3_vitl16_chmv2`, ViT-L SAT-493M).

Flow: the image is zero-padded (centred) to a multiple of the patch size; four blocks' normed patch maps
(and CLS tokens) are reassembled at four scales (x4, x2, x1, x1/2), projected to a common width, fused from
coarse to fine (each fusion doubles the size), and an up-convolution head gives per-pixel bin logits at the
input size; depth is the bins weighted by the normalised logits. Settings per released head are data
(`DPT_PRESETS`); Meta's parameter names are mapped to ours in `dinov3kit.tools.heads`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DPTConfig:
    """One DPT head's shape and depth decoding (Meta's DecoderConfig + DPTHead arguments)."""

    out_layers: tuple[int, ...]  # 0-based backbone blocks read
    reassemble_channels: tuple[int, ...] = (128, 256, 512, 1024)  # Meta's post_process_channels
    channels: int = 256  # width of the fusion path
    hidden_channels: int = 32  # width inside the up-convolution head
    bins: int = 256  # output channels (depth bins)
    batchnorm: bool = False  # BatchNorm on the backbone maps before reassembly
    use_cls_token: bool = False  # readout "project": [patch ; CLS] → Linear → GELU
    unit_bias: bool = False  # biases in the residual units' convolutions
    project_after_fusion: bool = True  # a 3x3 conv + ReLU after the last fusion
    min_depth: float = 0.001
    max_depth: float = 100.0
    bins_strategy: str = "linear"  # linear | log | chmv2_mixlog
    norm_strategy: str = "linear"  # linear | softmax | sigmoid | chmv2_mixlog
    backbone: str = ""  # the backbone the released head was trained on (for messages)
    quantity: str = "depth"  # what the map holds: "depth" (metres from the camera) or "height" (metres above ground)
    resolution: int | None = 512  # shorter side the image is resized to; None: its own size
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std); None: the backbone's

    def scaled(self, **changes) -> DPTConfig:
        return replace(self, **changes)


DPT_PRESETS = {
    "dinov3_vit7b16_dd": DPTConfig(
        out_layers=(9, 19, 29, 39), reassemble_channels=(2048, 2048, 2048, 2048), channels=512, batchnorm=True,
        min_depth=0.001, max_depth=100.0, backbone="dinov3_vit7b16 (LVD-1689M)",
    ),
    "dinov3_vitl16_chmv2": DPTConfig(
        out_layers=(5, 11, 17, 23), hidden_channels=128, use_cls_token=True, unit_bias=True, project_after_fusion=False,
        min_depth=0.001, max_depth=96.0, bins_strategy="chmv2_mixlog", norm_strategy="chmv2_mixlog",
        backbone="dinov3_vitl16 (SAT-493M)", quantity="height", resolution=None,
        normalization=((0.420, 0.411, 0.296), (0.213, 0.156, 0.143)),  # Meta's CHMv2 inference notebook
    ),
}


def center_padding(size: int, multiple: int) -> tuple[int, int]:
    """Zeros before and after a side of `size` to reach a multiple of `multiple` (the extra one after)."""
    total = -size % multiple
    return total // 2, total - total // 2


def depth_bins(strategy: str, min_depth: float, max_depth: float, count: int, device=None) -> torch.Tensor:
    """[count] bin centres: evenly spaced (linear), in log space (log), or CHMv2's blend from log (first)
    to linear (last) over a range scaled down 8x (chmv2_mixlog)."""
    if strategy == "linear":
        return torch.linspace(min_depth, max_depth, count, device=device)
    if strategy == "log":
        return torch.exp(torch.linspace(torch.log(torch.tensor(min_depth)), torch.log(torch.tensor(max_depth)), count, device=device))
    if strategy == "chmv2_mixlog":
        top = max_depth / 8.0
        linear = torch.linspace(min_depth, top, count, device=device)
        log = torch.exp(torch.linspace(torch.log(torch.tensor(min_depth)), torch.log(torch.tensor(top)), count, device=device))
        blend = torch.linspace(1.0, 0.0, count, device=device)
        return blend * log + (1.0 - blend) * linear
    raise ValueError(f"unknown bins strategy {strategy!r}")


def logits_to_depth(logits: torch.Tensor, bins: torch.Tensor, strategy: str, min_depth: float) -> torch.Tensor:
    """[B, 1, H, W] depth from [B, bins, H, W] logits: bins weighted by the normalised logits (or, for a
    single channel, relu + min_depth)."""
    if logits.shape[1] == 1:
        return torch.relu(logits) + min_depth
    if strategy == "chmv2_mixlog":
        y = torch.relu(logits)
        y = y + (-y.amin(dim=1, keepdim=True)).clamp(0.0, 1e-4) + 1e-8
        total = torch.nan_to_num(y.sum(dim=1, keepdim=True), nan=1.0, posinf=1.0, neginf=1.0).clamp_min(1e-12)
        depth = ((y / total) * bins.view(1, -1, 1, 1).clamp_min(1e-12)).sum(dim=1, keepdim=True).clamp_min(1e-12)
        return depth * 8.0  # the head was trained on depths scaled down 8x
    if strategy == "linear":
        weights = torch.relu(logits) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
    elif strategy == "softmax":
        weights = torch.softmax(logits, dim=1)
    elif strategy == "sigmoid":
        weights = torch.sigmoid(logits)
        weights = weights / weights.sum(dim=1, keepdim=True)
    else:
        raise ValueError(f"unknown norm strategy {strategy!r}")
    return torch.einsum("bkhw,k->bhw", weights, bins).unsqueeze(1)


class Readout(nn.Module):
    """Meta's "project" readout: each patch concatenated with the CLS token, Linear back to D, GELU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * width, width)
        self.act = nn.GELU()

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        batch, width, height, breadth = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)  # [B, hw, D]
        tokens = self.act(self.proj(torch.cat([tokens, cls.unsqueeze(1).expand_as(tokens)], dim=-1)))
        return tokens.transpose(1, 2).reshape(batch, width, height, breadth)


def resize_layer(channels: int, level: int) -> nn.Module:
    """Reassembly scale of level 0..3: x4 and x2 transposed convolutions, identity, a stride-2 convolution."""
    if level == 0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if level == 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if level == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class ReassembleStage(nn.Module):
    """One backbone map [B, D, h, w] → [B, C, s*h, s*w]: readout, BatchNorm, 1x1 projection, resize."""

    def __init__(self, width: int, channels: int, level: int, *, batchnorm: bool, use_cls_token: bool) -> None:
        super().__init__()
        self.readout = Readout(width) if use_cls_token else None
        self.norm = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        self.project = nn.Conv2d(width, channels, kernel_size=1)
        self.resize = resize_layer(channels, level)

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        if self.readout is not None:
            patches = self.readout(patches, cls)
        return self.resize(self.project(self.norm(patches)))


class ResidualUnit(nn.Module):
    """Pre-activation residual unit: x + conv(relu(conv(relu(x)))), 3x3 convolutions."""

    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class FusionBlock(nn.Module):
    """Adds the (refined) finer skip map to the coarser path, refines, doubles the size, projects 1x1."""

    def __init__(self, channels: int, *, with_skip: bool, bias: bool) -> None:
        super().__init__()
        self.skip_unit = ResidualUnit(channels, bias) if with_skip else None
        self.unit = ResidualUnit(channels, bias)
        self.project = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class UpConvHead(nn.Module):
    """3x3 conv to C/2, x2 bilinear upsampling, 3x3 conv to the hidden width, ReLU, 1x1 conv to the bins."""

    def __init__(self, channels: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels // 2, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, outputs, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv3(torch.relu(self.conv2(x)))


class DPTHead(nn.Module):
    """The DPT decoder: four (patch map, CLS) pairs of a ViT → [B, bins, 16h, 16w] logits."""

    def __init__(self, width: int, config: DPTConfig) -> None:
        super().__init__()
        self.config = config
        self.reassemble = nn.ModuleList(
            ReassembleStage(width, channels, level, batchnorm=config.batchnorm, use_cls_token=config.use_cls_token)
            for level, channels in enumerate(config.reassemble_channels)
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, config.channels, kernel_size=3, padding=1, bias=False) for channels in config.reassemble_channels
        )
        self.fusion = nn.ModuleList(
            FusionBlock(config.channels, with_skip=index > 0, bias=config.unit_bias) for index in range(len(config.reassemble_channels))
        )
        self.project = nn.Conv2d(config.channels, config.channels, kernel_size=3, padding=1) if config.project_after_fusion else None
        self.head = UpConvHead(config.channels, config.hidden_channels, config.bins)

    def forward(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        maps = [conv(stage(patches, cls)) for (patches, cls), stage, conv in zip(layers, self.reassemble, self.convs)]
        x = self.fusion[0](maps[-1])
        for block, skip in zip(self.fusion[1:], reversed(maps[:-1])):
            x = block(x, skip)
        if self.project is not None:
            x = torch.relu(self.project(x))
        return self.head(x)


@dataclass
class DepthEstimatorOutput:
    predicted_depth: torch.Tensor  # [B, H, W], at the input's size


class DINOv3DepthEstimator(nn.Module):
    """A DINOv3 ViT (`DINOv3ViTModel`) with a DPT head: pixels → metric depth (or canopy height) per pixel."""

    def __init__(self, backbone: nn.Module, config: DPTConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.decoder = DPTHead(backbone.config.hidden_size, config)

    def forward(self, pixel_values: torch.Tensor) -> DepthEstimatorOutput:
        height, width = pixel_values.shape[-2:]
        patch = self.backbone.config.patch_size
        (top, bottom), (left, right) = center_padding(height, patch), center_padding(width, patch)
        padded = F.pad(pixel_values, (left, right, top, bottom))
        layers = self.backbone.get_intermediate_layers(padded, n=list(self.config.out_layers), reshape=True, return_class_token=True, norm=True)
        logits = self.decoder(list(layers))
        bins = depth_bins(self.config.bins_strategy, self.config.min_depth, self.config.max_depth, logits.shape[1], logits.device)
        depth = logits_to_depth(logits.float(), bins, self.config.norm_strategy, self.config.min_depth)
        return DepthEstimatorOutput(depth[:, 0, top:top + height, left:left + width])
