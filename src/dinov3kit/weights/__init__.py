"""Checkpoint formats and loading: files → state dict in our names → model."""

from ..errors import CheckpointError
from .loading import load_model, save_meta_checkpoint, save_model

__all__ = ["CheckpointError", "load_model", "save_meta_checkpoint", "save_model"]
