"""ConvNeXt twins: random transformers models, Meta-layout state dicts with the exact key names of Meta's
released checkpoints (from `tests/data/meta_checkpoint_layouts.json`), scaled down to tiny widths, and
timm models that load those state dicts through timm's own checkpoint filter."""

from __future__ import annotations

import math
import re

import torch
from transformers import DINOv3ConvNextBackbone as HFBackbone
from transformers import DINOv3ConvNextConfig as HFConfig
from transformers import DINOv3ConvNextModel as HFModel

from .meta_twin import LAYOUTS
from .random_weights import randomize_

#: Four stages, small enough for a fast test, wide enough for non-trivial norms.
TINY = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1])


def hf_convnext(seed: int = 0, backbone: bool = False, **config) -> HFModel | HFBackbone:
    """A transformers DINOv3ConvNextModel (or Backbone) with random non-trivial weights (tiny unless told)."""
    hf_config = HFConfig(**{**TINY, **config})
    torch.manual_seed(seed)
    model = (HFBackbone if backbone else HFModel)(hf_config).eval()
    return randomize_(model, seed)


def _random_value(key: str, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Values of the scale the real weights have, far from any default (as `randomize_`)."""
    noise = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return noise / math.sqrt(math.prod(shape[1:]))
    if key.endswith("gamma"):
        return 0.5 + 0.25 * noise
    if key.endswith(".weight"):  # every 1-D weight is a norm's
        return 1.0 + 0.2 * noise
    return 0.1 * noise


def meta_convnext_state_dict(
    variant: str = "tiny",
    *,
    hidden_sizes: list[int] | None = TINY["hidden_sizes"],
    depths: list[int] | None = TINY["depths"],
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A Meta-layout ConvNeXt state dict with the keys of `dinov3_convnext_{variant}`, at the given stage
    widths and depths (tiny by default; None keeps the released ones). `norms.3` is the final norm again."""
    released = LAYOUTS[f"dinov3_convnext_{variant}"]
    layout = released["keys"]
    full = [layout["downsample_layers.0.0.weight"][0]] + [layout[f"downsample_layers.{i}.1.weight"][0] for i in (1, 2, 3)]
    sizes = full if hidden_sizes is None else hidden_sizes
    depths = [released["repeats"][f"stages.{i}"] for i in range(4)] if depths is None else depths
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for pattern, shape in layout.items():
        if pattern.startswith("norms."):
            continue
        match = re.match(r"(stages|downsample_layers)\.(\d+)\.", pattern)
        stage = int(match.group(2)) if match else 3
        # Map each full width of this key's stage (and the one before, for a downsampling layer) to its tiny one.
        widths = {full[stage]: sizes[stage], 4 * full[stage]: 4 * sizes[stage]}
        if pattern.startswith("downsample_layers.") and stage > 0:
            widths = {full[stage]: sizes[stage], full[stage - 1]: sizes[stage - 1]}
        tiny_shape = [widths.get(d, d) if i < 2 else d for i, d in enumerate(shape)]
        for index in range(depths[stage]) if ".N." in pattern else [None]:
            key = pattern.replace(".N.", f".{index}.")
            state[key] = _random_value(key, tiny_shape, generator)
    state["norms.3.weight"], state["norms.3.bias"] = state["norm.weight"], state["norm.bias"]
    return state


def timm_convnext_from_meta(state: dict[str, torch.Tensor], model_name: str | None = None):
    """A timm ConvNeXt loaded (strictly) from a Meta-layout state dict with timm's checkpoint filter.

    `model_name` (e.g. "convnext_tiny.dinov3_lvd1689m") builds timm's registered DINOv3 model; without
    it a ConvNeXt with the state dict's widths and depths and timm's defaults otherwise."""
    import timm
    from timm.models.convnext import ConvNeXt

    if model_name:
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    else:
        dims = [state["downsample_layers.0.0.weight"].shape[0]] + [
            state[f"downsample_layers.{i}.1.weight"].shape[0] for i in (1, 2, 3)
        ]
        depths = [1 + max(int(m.group(1)) for k in state if (m := re.match(rf"stages\.{i}\.(\d+)\.", k))) for i in range(4)]
        model = ConvNeXt(depths=depths, dims=dims, num_classes=0)
    return load_meta_into_timm_(model, state).eval()


def load_meta_into_timm_(model, state: dict[str, torch.Tensor]):
    """Load a Meta-layout state dict into a timm ConvNeXt (strictly) through timm's checkpoint filter."""
    from timm.models.convnext import checkpoint_filter_fn

    model.load_state_dict(checkpoint_filter_fn(dict(state), model), strict=True)
    return model
