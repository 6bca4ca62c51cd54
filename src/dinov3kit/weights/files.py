"""Lazy readers of tensor files: safetensors (single or sharded) and PyTorch pickles, with one error type."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CheckpointError
from ..source import SAFE_WEIGHTS_INDEX_NAME, Source


class TensorFile:
    """Name → tensor, read on demand so that a checkpoint is never held twice in memory."""

    def __init__(self, name: str, tensors: dict[str, Any], open_tensor) -> None:
        self.name = name
        self._tensors = tensors
        self._open = open_tensor

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def load(self, key: str) -> torch.Tensor:
        try:
            return self._open(key)
        except Exception as error:  # a file truncated after its header surfaces only here
            raise CheckpointError(f"{self.name}: cannot read tensor {key!r}: {error}") from error


def open_safetensors(paths: list[Path], weight_map: dict[str, str] | None = None) -> TensorFile:
    """Open one or several safetensors files (a shard set when `weight_map` is given)."""

    handles = {}
    for path in paths:
        try:
            handles[path.name] = safe_open(str(path), framework="pt", device="cpu")
        except Exception as error:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({error}); the file may be truncated or of another "
                "type: download it again"
            ) from error
    owners = {}
    for file_name, handle in handles.items():
        for key in handle.keys():
            owners[key] = file_name
    if weight_map is not None:
        wrong = sorted(k for k, f in weight_map.items() if owners.get(k) != f)
        if wrong:
            raise CheckpointError(
                f"{paths[0].parent / SAFE_WEIGHTS_INDEX_NAME}: tensors {wrong[:5]} are not in the shard the index "
                "names; a shard is missing or incomplete"
            )
    name = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} shards)"
    return TensorFile(name, owners, lambda key: handles[owners[key]].get_tensor(key))


def open_torch_pickle(path: Path) -> TensorFile:
    """Open a `.pth` state dict with `weights_only=True`, memory-mapped; training wrappers are unwrapped."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):  # legacy (non-zip) files cannot be memory-mapped
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error}); the file may be "
            "truncated or of another type"
        ) from error
    state = _unwrap_state_dict(obj, path)
    return TensorFile(str(path), state, state.__getitem__)


def open_source(source: Source) -> TensorFile:
    """The tensors of a resolved source, opened lazily once (later calls return the same file)."""

    def open_tensors() -> TensorFile:
        if source.layout == "meta":
            return open_torch_pickle(source.path)
        paths, weight_map = source.weight_files()
        return open_safetensors(paths, weight_map)

    return source.remember("tensors", open_tensors)


def _unwrap_state_dict(obj: Any, path: os.PathLike) -> dict[str, torch.Tensor]:
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    if all(key.startswith("backbone.") for key in obj if not key.split(".")[0].endswith("_head")):
        obj = {key.removeprefix("backbone."): value for key, value in obj.items() if key.startswith("backbone.")}
    return obj
