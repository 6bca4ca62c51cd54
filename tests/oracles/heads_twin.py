"""Twins of Meta's task heads, written from the structure of Meta's code (dinov3/hub/classifiers.py):
independent of dinov3kit, used as parity oracles with random weights in Meta's file layout."""

from __future__ import annotations

import torch
from torch import nn


def meta_linear_head_state(width: int, num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of Meta's `*_imagenet1k_linear_head-*.pth` (an nn.Linear on
    [CLS ; mean patch], so `width` is twice the backbone's)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randn(num_classes, width, generator=generator) / width**0.5,
        "bias": 0.1 * torch.randn(num_classes, generator=generator),
    }


class MetaLinearClassifierTwin(nn.Module):
    """Meta's `_LinearClassifierWrapper`: the backbone's normed CLS token and mean normed patch token
    (storage tokens excluded), concatenated, through nn.Linear (loaded strictly from Meta's head layout).
    `backbone` is a timm Eva twin of Meta's ViT (see meta_twin.timm_vit_from_meta)."""

    def __init__(self, backbone: nn.Module, head_state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.backbone = backbone
        self.linear_head = nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
        self.linear_head.load_state_dict(head_state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)  # [B, 1 + storage + patches, D], normed
        cls_token = tokens[:, 0]
        patch_tokens = tokens[:, self.backbone.num_prefix_tokens:]
        return self.linear_head(torch.cat([cls_token, patch_tokens.mean(dim=1)], dim=1))


# --- DPT (dinov3/eval/depth/models/dpt_head.py, __init__.py: Depther, FeaturesToDepth) -----------------
class _Conv(nn.Module):
    """Meta's ConvModule as the DPT head uses it (no norm layer): `.conv`, then ReLU when `act`, in the
    given order ("conv-act" or "act-conv")."""

    def __init__(self, cin, cout, kernel, padding=0, bias=True, act=False, pre_act=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)
        self.act, self.pre_act = act, pre_act

    def forward(self, x):
        if self.act and self.pre_act:
            x = torch.relu(x)
        x = self.conv(x)
        if self.act and not self.pre_act:
            x = torch.relu(x)
        return x


class _ReassembleBlocks(nn.Module):
    def __init__(self, in_channels, out_channels, readout_type, use_batchnorm):
        super().__init__()
        self.readout_type = readout_type
        self.projects = nn.ModuleList(_Conv(in_channels[i], c, 1) for i, c in enumerate(out_channels))
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4, padding=0),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
        ])
        if readout_type == "project":
            self.readout_projects = nn.ModuleList(nn.Sequential(nn.Linear(2 * c, c), nn.GELU()) for c in in_channels)
        self.batchnorm_layers = nn.ModuleList(nn.BatchNorm2d(c) if use_batchnorm else nn.Identity() for c in in_channels)

    def forward(self, inputs):
        out = []
        for i, (x, cls_token) in enumerate(inputs):
            shape = x.shape
            if self.readout_type == "project":
                x = x.flatten(2).permute(0, 2, 1)
                x = self.readout_projects[i](torch.cat((x, cls_token.unsqueeze(1).expand_as(x)), -1))
                x = x.permute(0, 2, 1).reshape(shape)
            x = self.batchnorm_layers[i](x)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class _PreActResidualConvUnit(nn.Module):
    def __init__(self, channels, bias):
        super().__init__()
        self.conv1 = _Conv(channels, channels, 3, padding=1, bias=bias, act=True, pre_act=True)
        self.conv2 = _Conv(channels, channels, 3, padding=1, bias=bias, act=True, pre_act=True)

    def forward(self, x):
        return self.conv2(self.conv1(x)) + x.clone()


class _FeatureFusionBlock(nn.Module):
    def __init__(self, channels, bias):
        super().__init__()
        self.project = _Conv(channels, channels, 1, bias=True)
        self.res_conv_unit1 = _PreActResidualConvUnit(channels, bias)
        self.res_conv_unit2 = _PreActResidualConvUnit(channels, bias)

    def forward(self, *inputs):
        x = inputs[0]
        if len(inputs) == 2:
            res = inputs[1]
            if x.shape != res.shape:
                res = torch.nn.functional.interpolate(res, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(res)
        x = self.res_conv_unit2(x)
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class _Interpolate(nn.Module):
    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class MetaDPTHeadTwin(nn.Module):
    """Meta's DPTHead module tree (names as in Meta's head files, so they load with strict=True)."""

    def __init__(self, in_channels, channels, post_process_channels, readout_type, n_output_channels, n_hidden_channels,
                 use_batchnorm, use_bias, projection_after_fusion):
        super().__init__()
        self.reassemble_blocks = _ReassembleBlocks(in_channels, post_process_channels, readout_type, use_batchnorm)
        self.convs = nn.ModuleList(_Conv(c, channels, 3, padding=1, bias=False) for c in post_process_channels)
        self.fusion_blocks = nn.ModuleList(_FeatureFusionBlock(channels, use_bias) for _ in post_process_channels)
        self.fusion_blocks[0].res_conv_unit1 = None
        self.project = _Conv(channels, channels, 3, padding=1, act=True) if projection_after_fusion else nn.Identity()
        self.conv_depth = nn.Module()
        self.conv_depth.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1), _Interpolate(),
            nn.Conv2d(channels // 2, n_hidden_channels, 3, padding=1), nn.ReLU(), nn.Conv2d(n_hidden_channels, n_output_channels, 1),
        )

    def forward(self, inputs):
        x = [self.convs[i](f) for i, f in enumerate(self.reassemble_blocks(list(inputs)))]
        out = self.fusion_blocks[0](x[-1])
        for i in range(1, len(self.fusion_blocks)):
            out = self.fusion_blocks[i](out, x[-(i + 1)])
        return self.conv_depth.head(self.project(out))


def meta_features_to_depth(x, min_depth, max_depth, bins_strategy, norm_strategy):
    """Meta's FeaturesToDepth (linear / chmv2_mixlog bins and norms)."""
    n_bins = x.shape[1]
    if bins_strategy == "linear":
        bins = torch.linspace(min_depth, max_depth, n_bins)
    else:
        top = max_depth / 8.0
        lin = torch.linspace(min_depth, top, n_bins)
        log = torch.exp(torch.linspace(torch.log(torch.tensor(min_depth)), torch.log(torch.tensor(top)), n_bins))
        t = torch.linspace(1.0, 0.0, n_bins)
        bins = t * log + (1.0 - t) * lin
    if norm_strategy == "linear":
        logit = torch.relu(x) + 0.1
        logit = logit / logit.sum(dim=1, keepdim=True)
        return torch.einsum("ikmn,k->imn", [logit, bins]).unsqueeze(dim=1)
    y = torch.relu(x)
    shift = (-y.amin(dim=1, keepdim=True)).clamp_min(0.0).clamp_max(1e-4) + 1e-8
    y = y + shift
    denom = torch.nan_to_num(y.sum(dim=1, keepdim=True), nan=1.0, posinf=1.0, neginf=1.0).clamp_min(1e-12)
    return ((y / denom) * bins.view(1, -1, 1, 1).clamp_min(1e-12)).sum(dim=1, keepdim=True).clamp_min(1e-12) * 8.0


class MetaDeptherTwin(nn.Module):
    """Meta's Depther with a timm Eva twin of the backbone: intermediate layers (normed, NCHW, with the
    CLS token) → DPT head → FeaturesToDepth. Inputs must be multiples of the patch size (no padding)."""

    def __init__(self, backbone, head, out_layers, min_depth, max_depth, bins_strategy, norm_strategy):
        super().__init__()
        self.backbone, self.decoder = backbone, head
        self.out_layers = list(out_layers)
        self.depth_args = (min_depth, max_depth, bins_strategy, norm_strategy)

    def forward(self, x):
        maps = self.backbone.forward_intermediates(x, indices=self.out_layers, return_prefix_tokens=True, norm=True,
                                                   output_fmt="NCHW", intermediates_only=True)
        logits = self.decoder([(spatial, prefix[:, 0]) for spatial, prefix in maps])
        return meta_features_to_depth(logits, *self.depth_args)


def randomize_dpt_state_(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Non-trivial random values for every tensor of a DPT head state dict (BatchNorm statistics too)."""
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            state[key] = 0.5 + noise.abs()
        elif value.ndim >= 2:
            fan_in = value[0].numel() if "resize_layers.0" not in key and "resize_layers.1" not in key else value.shape[0]
            state[key] = noise / fan_in**0.5
        elif "batchnorm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.2 * noise
        else:
            state[key] = 0.1 * noise
    return state
