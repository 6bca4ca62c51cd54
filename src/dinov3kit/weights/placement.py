"""Where each part of a model goes: `device_map="auto"` planning and dispatch across devices.

"auto" keeps the whole model on one device when it fits (the first GPU with room, else the CPU); a model
too big for any single GPU is split between consecutive blocks across the visible GPUs, and what the GPUs
cannot hold stays on the CPU (offload, as a last resort). Each part runs where its weights are: hooks move
the hidden states to the next part's device, so the forward pass needs no other change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from ..backend.cpu import has_half_matmul_units
from ..fileio import parse_size

#: Share of a device's free memory that weights may take; the rest is left for activations and workspaces.
WEIGHT_SHARE = 0.9

DeviceMap = dict[str, torch.device]


def placement_units(model: nn.Module, dtype: torch.dtype) -> list[tuple[list[str], int]]:
    """The model in execution order as (module names, bytes in `dtype`) units that may go to different devices.

    Items of the model's `split_module_lists` (the ViT's `blocks`) are units; the parameters and modules
    before them (tokens, patch embedding, RoPE periods) join the first item, those after (final norm)
    join the last. A model without such lists is one unit.
    """
    lists = set(getattr(model, "split_module_lists", ()))
    root = sum(_nbytes(t, dtype) for t in [*model.parameters(recurse=False), *model.buffers(recurse=False)])
    before: tuple[list[str], int] = ([""], root)  # "" = the model's own parameters and buffers
    items: list[tuple[list[str], int]] = []
    after: tuple[list[str], int] = ([], 0)
    for name, child in model.named_children():
        size = sum(_nbytes(t, dtype) for t in [*child.parameters(), *child.buffers()])
        if name in lists:
            items += [([f"{name}.{index}"], _module_bytes(item, dtype)) for index, item in enumerate(child)]
        elif items:
            after = (after[0] + [name], after[1] + size)
        else:
            before = (before[0] + [name], before[1] + size)
    if not items:
        return [(before[0] + after[0], before[1] + after[1])]
    items[0] = (before[0] + items[0][0], before[1] + items[0][1])
    items[-1] = (items[-1][0] + after[0], items[-1][1] + after[1])
    return items


def plan(units: list[tuple[list[str], int]], budgets: list[tuple[torch.device, int]]) -> DeviceMap:
    """Assign units to devices: all on the first accelerator whose budget holds the whole model, otherwise
    consecutive units fill the devices in order (GPUs first, the CPU last)."""
    total = sum(size for _, size in units)
    for device, budget in budgets:
        if device.type != "cpu" and total <= budget:
            return {name: device for names, _ in units for name in names}
    device_map: DeviceMap = {}
    remaining = list(units)
    for device, budget in budgets:
        used = 0
        while remaining and used + remaining[0][1] <= budget:
            names, size = remaining.pop(0)
            device_map.update(dict.fromkeys(names, device))
            used += size
    if remaining:
        available = ", ".join(f"{device}: {budget / 2**30:.1f} GiB" for device, budget in budgets)
        raise ValueError(
            f"the model's weights ({total / 2**30:.1f} GiB) do not fit the memory available for them ({available}); "
            "free memory, pass max_memory={device: size} with larger budgets, or load in a smaller dtype"
        )
    return device_map


def memory_budgets(max_memory: Mapping | None = None) -> list[tuple[torch.device, int]]:
    """(device, bytes for weights) for the visible GPUs in order, then the CPU.

    Without `max_memory`: WEIGHT_SHARE of each device's free memory. `max_memory` ({0: "20GiB", "cpu": "64GB"},
    as in transformers) sets the budgets of the devices it names and leaves out the others.
    """
    if max_memory is not None:
        budgets = {_as_device(key): parse_size(value, minimum=0) for key, value in max_memory.items()}
    else:
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] + [torch.device("cpu")]
        budgets = {device: int(WEIGHT_SHARE * free_memory(device)) for device in devices}
    return sorted(budgets.items(), key=lambda item: (item[0].type == "cpu", item[0].type, item[0].index or 0))


#: dtype names accepted everywhere (from_pretrained, pipeline, the tools' --dtype).
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def resolve_dtype(
    dtype: torch.dtype | str | None, stored: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.dtype:
    """The one meaning of every dtype name.

    A torch dtype or its name ("bfloat16", "bf16", "torch.float16", ...) is itself; None and "auto" are
    the dtype the checkpoint stores (`stored`), as in transformers; "fast" is `fast_dtype(device)`.
    """
    if dtype is None or dtype == "auto":
        return stored
    if dtype == "fast":
        return fast_dtype(resolve_device(device))
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    resolved = getattr(torch, DTYPE_ALIASES.get(name, name), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, its name (bf16, fp16, fp32), 'auto' or 'fast'; got {dtype!r}")
    return resolved


def fast_dtype(device: torch.device) -> torch.dtype:
    """The dtype a model runs fastest in on `device` at an error users accept for features: bfloat16 on
    CUDA and on CPUs with bf16 matrix units (AMX or AVX512-BF16), float32 elsewhere (CPUs without them
    emulate bf16 and run float32 faster; MPS). Errors of each: README, "Faithfulness"."""
    if device.type == "cuda" or (device.type == "cpu" and has_half_matmul_units()):
        return torch.bfloat16
    return torch.float32


def resolve_device(device: torch.device | str | int | None) -> torch.device:
    """The one meaning of every device name: None is the CPU; "auto" is CUDA, then Apple's MPS, then the
    CPU; an int is that CUDA device (transformers' pipelines: -1 is the CPU)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device) if device >= 0 else torch.device("cpu")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def free_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, or the available RAM for the CPU (unbounded when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62


def resolve_device_map(
    device_map: str | Mapping | torch.device | int | None,
    model: nn.Module,
    dtype: torch.dtype,
    max_memory: Mapping | None = None,
) -> DeviceMap:
    """Module name prefix → device for every part of `model` ("" = the whole model on one device)."""
    if isinstance(device_map, Mapping):
        resolved = {name: _as_device(device) for name, device in device_map.items()}
        names = [name for names, _ in placement_units(model, dtype) for name in names]
        uncovered = [name for name in names if device_of(resolved, name or "cls_token") is None]
        if uncovered:
            raise ValueError(f"device_map places no device for {uncovered}; name every module or use device_map='auto'")
        return resolved
    if device_map == "auto":
        if torch.cuda.is_available() or max_memory is not None:
            return plan(placement_units(model, dtype), memory_budgets(max_memory))
        return {"": resolve_device("auto")}
    if isinstance(device_map, str) and device_map in ("balanced", "sequential", "balanced_low_0"):
        raise ValueError(f"device_map={device_map!r} is not supported; use 'auto', a device or a dict")
    return {"": _as_device(device_map if device_map is not None else "cpu")}


def device_of(device_map: Mapping[str, torch.device], key: str) -> torch.device | None:
    """The device of a parameter or module name: the entry with the longest matching prefix."""
    best = None
    for name in device_map:
        if (name == "" or key == name or key.startswith(name + ".")) and (best is None or len(name) > len(best)):
            best = name
    return None if best is None else device_map[best]


def dispatch(model: nn.Module, device_map: DeviceMap) -> None:
    """Record the map as `model.hf_device_map` and, when it spans several devices, make every top-level
    module and split item move its tensor inputs to its own device before running."""
    model.hf_device_map = {name: str(device) for name, device in device_map.items()}
    if len(set(device_map.values())) < 2:
        return
    lists = set(getattr(model, "split_module_lists", ()))
    for name, child in model.named_children():
        for module in child if name in lists else [child]:
            weight = next(module.parameters(), None)
            if weight is not None:
                module.register_forward_pre_hook(_mover(weight.device), with_kwargs=True)


def _mover(device: torch.device):
    def move(module: nn.Module, args: tuple, kwargs: dict):
        return _to(args, device), _to(kwargs, device)

    return move


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _as_device(device: str | int | torch.device) -> torch.device:
    if isinstance(device, int):
        return torch.device("cuda", device)
    device = torch.device(device)
    return torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device


def _nbytes(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    size = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
    return tensor.numel() * size


def _module_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    return sum(_nbytes(t, dtype) for t in [*module.parameters(), *module.buffers()])
