"""Model outputs: dataclasses that read like transformers' outputs and unpack like tuples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class ModelOutput:
    """Fields by name (`out.pooler_output`, `out["pooler_output"]`) or by position over the fields that
    are set (`out[0]`, `last, pooled = out`), as transformers' outputs and tuples allow."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: torch.Tensor | None = None  # [B, tokens, D]
    pooler_output: torch.Tensor | None = None  # [B, D]
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, then each block's output
    attentions: tuple[torch.Tensor, ...] | None = None  # [B, heads, tokens, tokens] per block


@dataclass
class BackboneOutput(ModelOutput):
    feature_maps: tuple[torch.Tensor, ...] | None = None  # [B, D, h, w] per selected stage
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cls_tokens: tuple[torch.Tensor, ...] | None = None  # [B, D] per selected stage
