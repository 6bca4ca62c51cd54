"""dinov3kit: fast, faithful DINOv3 models with transformers-compatible classes."""

from .configs import DINOv3ViTConfig
from .models.outputs import BackboneOutput, BaseModelOutputWithPooling, ModelOutput
from .models.vit import DINOv3ViTBackbone, DINOv3ViTModel, DINOv3ViTPreTrainedModel
from .variants import VIT_VARIANTS
from .weights.errors import CheckpointError

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "BaseModelOutputWithPooling",
    "CheckpointError",
    "DINOv3ViTBackbone",
    "DINOv3ViTConfig",
    "DINOv3ViTModel",
    "DINOv3ViTPreTrainedModel",
    "ModelOutput",
    "VIT_VARIANTS",
]
