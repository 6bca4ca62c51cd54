"""Random, non-trivial values for every tensor of a model, so that parity fails if any one is ignored."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every floating parameter with values of a sensible scale that differ from any default:
    matrices ~ N(0, 1/fan_in), vectors (biases, norm weights, layer scales, tokens) away from 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(module.named_parameters()):
        if not param.is_floating_point() or param.numel() == 0:
            continue
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim >= 2 and not any(t in name for t in ("token", "reg_token")):
            value = noise / math.sqrt(param[0].numel())  # fan-in scaled weight
        elif any(t in name for t in ("token",)):
            value = noise * 0.5
        elif leaf in ("gamma", "lambda1", "gamma_1", "gamma_2") or "layer_scale" in name or ".ls" in name:
            value = 0.5 + 0.25 * noise  # layer scale: far from the 1e-5 / 1.0 defaults
        elif leaf == "weight":  # norm weights
            value = 1.0 + 0.2 * noise
        else:  # biases
            value = 0.1 * noise
        param.copy_(value.to(param.dtype))
    return module


def perturbations(module: nn.Module, seed: int = 0):
    """Yield (name, undo) after perturbing each parameter in turn with random noise (a random direction:
    a constant shift would vanish in the LayerNorms); call undo() before the next."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.numel() == 0:
            continue
        original = param.detach().clone()
        noise = torch.randn(param.shape, generator=generator).to(param.dtype)
        with torch.no_grad():
            param.add_(0.5 * original.abs().mean().clamp_min(0.1) * noise)

        def undo(param=param, original=original):
            with torch.no_grad():
                param.copy_(original)

        yield name, undo
