"""The switches of the fast paths, in one place (as timm's `layers/config.py`).

Environment variables are read once, when dinov3kit is imported; at run time change the attributes of
`switches` (or use `overridden`, which restores them). Nothing here changes a process-wide torch setting.

    DINOV3KIT_FUSED_KERNELS=0           turn the fused kernels off: Triton on GPUs, oneDNN linear+GELU on CPUs
    DINOV3KIT_PACKED_WEIGHTS_MB=512     most memory the prepacked CPU weights take, in all (0: no packing)
    DINOV3KIT_ACTIVATION_POOL_MB=512    most memory each thread's pool of CPU activation buffers keeps (0: none)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be a whole number (megabytes)") from None
    if number < 0:
        raise ValueError(f"environment variable {name}={value!r} must be 0 or more (megabytes)")
    return number


@dataclass
class Switches:
    """What the fast paths may do. Each field is read by the backend on every call, so a change takes
    effect at the next forward; after lowering a budget, `dinov3kit.backend.release()` frees what is over it."""

    #: Fused kernels (Triton on GPUs, oneDNN linear + exact GELU on CPUs). Off: the plain torch ops.
    fused_kernels: bool = True
    #: Most bytes the prepacked copies of CPU weights take, in all (`backend.packing`); 0 turns packing off.
    packed_weights_bytes: int = 512 << 20
    #: Most bytes each thread's pool of CPU activation buffers keeps (`backend.pools`); 0 turns pooling off.
    activation_pool_bytes: int = 512 << 20

    @classmethod
    def from_environment(cls) -> Switches:
        return cls(
            fused_kernels=os.environ.get("DINOV3KIT_FUSED_KERNELS", "1").strip() != "0",
            packed_weights_bytes=_env_int("DINOV3KIT_PACKED_WEIGHTS_MB", 512) << 20,
            activation_pool_bytes=_env_int("DINOV3KIT_ACTIVATION_POOL_MB", 512) << 20,
        )


#: The switches every fast path reads.
switches = Switches.from_environment()


@contextlib.contextmanager
def overridden(**changes: Any) -> Iterator[Switches]:
    """Change some switches inside a `with` block, e.g. `with overridden(fused_kernels=False): model(x)`."""
    unknown = set(changes) - set(Switches.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown switches {sorted(unknown)}; choose from {sorted(Switches.__dataclass_fields__)}")
    before = {name: getattr(switches, name) for name in changes}
    for name, value in changes.items():
        setattr(switches, name, value)
    try:
        yield switches
    finally:
        for name, value in before.items():
            setattr(switches, name, value)
