"""The checkpoint error under its `weights` name (defined in `dinov3kit.errors`, below every layer)."""

from ..errors import CheckpointError

__all__ = ["CheckpointError"]
