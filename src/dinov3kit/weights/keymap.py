"""Translation between our parameter names and an external checkpoint layout, driven by tables of rules.

A rule says that the concatenation (along dim 0) of our tensors equals the concatenation of theirs,
for every index the patterns' placeholders (``{n}``, ``{i}``, ...) take. A plain rename is a rule with
one key on each side; a fused QKV weight is one key on our side and three on theirs. A slot of ours
that the model does not have (a disabled key bias) must hold zeros in the checkpoint and is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from .copies import concatenate

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class KeyRule:
    ours: tuple[str, ...]
    theirs: tuple[str, ...]


def rule(ours: str | tuple[str, ...], theirs: str | tuple[str, ...]) -> KeyRule:
    """Shorthand: `rule("blocks.{n}.norm1.weight", "layer.{n}.norm1.weight")`."""
    as_tuple = lambda keys: (keys,) if isinstance(keys, str) else tuple(keys)  # noqa: E731
    return KeyRule(as_tuple(ours), as_tuple(theirs))


def weight_and_bias(ours: str, theirs: str) -> list[KeyRule]:
    """The two rules renaming a layer's `weight` and `bias`."""
    return [rule(f"{ours}.{p}", f"{theirs}.{p}") for p in ("weight", "bias")]


def _pattern_regex(pattern: str) -> re.Pattern:
    parts = _PLACEHOLDER.split(pattern)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts))
    return re.compile(regex + r"\Z")


def _squeezed(shape: Iterable[int]) -> list[int]:
    return [d for d in shape if d != 1]


def _expand(
    rules: Iterable[KeyRule], keys: Iterable[str], side: str
) -> Iterable[tuple[KeyRule, dict[str, str]]]:
    """Each (rule, placeholder values) whose first key on `side` is among `keys`."""
    keys = list(keys)
    for r in rules:
        first = _pattern_regex(getattr(r, side)[0])
        for key in keys:
            match = first.match(key)
            if match:
                yield r, match.groupdict()


def translate(
    rules: Iterable[KeyRule],
    load: Callable[[str], torch.Tensor],
    available: Iterable[str],
    wanted: Mapping[str, torch.Size | None] | None,
    *,
    direction: str,
    origin: str,
    finalize: Callable[[str, torch.Tensor], torch.Tensor] = lambda key, tensor: tensor,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Build the tensors named in `wanted` from the `available` keys of the other side.

    `direction` is "to_ours" (available = their keys) or "to_theirs". `wanted` maps each target key to
    its shape (None: any shape; `wanted=None`: every target). `finalize(key, tensor)` converts each result
    (dtype, device) as soon as it is made. Returns the tensors and the source keys used. Raises CheckpointError
    for a target slot that is absent from `wanted` yet holds non-zero values, or a rule whose other
    source keys are missing. Source tensors are loaded one rule at a time, so at most one fused group
    is in memory beyond the result.
    """
    source_side, target_side = ("theirs", "ours") if direction == "to_ours" else ("ours", "theirs")
    available = set(available)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for r, index in _expand(rules, sorted(available), source_side):
        sources = [p.format(**index) for p in getattr(r, source_side)]
        targets = [p.format(**index) for p in getattr(r, target_side)]
        absent = [k for k in sources if k not in available]
        if absent and direction == "to_ours":
            raise CheckpointError(f"{origin}: tensors {absent} are missing (they go with {sources[0]!r})")
        used.update(k for k in sources if k in available)
        loaded = {k: load(k) for k in sources if k in available}
        template = next(iter(loaded.values()))
        # Writing a fused layout: a slot our model does not have (a disabled bias) is written as zeros.
        tensors = [loaded[k] if k in loaded else template.new_zeros(template.shape) for k in sources]
        joined = tensors[0] if len(tensors) == 1 else concatenate(tensors)
        parts = [joined] if len(targets) == 1 else [concatenate([part]) for part in joined.chunk(len(targets))]
        for target, part in zip(targets, parts):
            if wanted is None or target in wanted:
                shape = None if wanted is None else wanted[target]
                if shape is not None and _squeezed(part.shape) == _squeezed(shape):
                    part = part.reshape(shape)
                out[target] = finalize(target, part)
            elif torch.count_nonzero(part):
                raise CheckpointError(
                    f"{origin}: {sources} hold non-zero values for {target!r}, which this model configuration "
                    "does not have (for example a key bias with key_bias=False); fix the configuration"
                )
    return out, used
