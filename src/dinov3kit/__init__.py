"""dinov3kit: fast, faithful DINOv3 models with transformers-compatible classes."""

import importlib

from .auto import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel
from .configs import DINOv3ConvNextConfig, DINOv3TextConfig, DINOv3ViTConfig
from .errors import CheckpointError
from .export import export_onnx
from .models.convnext import DINOv3ConvNextBackbone, DINOv3ConvNextModel, DINOv3ConvNextPreTrainedModel
from .models.dinotxt import DINOv3TextModel
from .models.outputs import BackboneOutput, BaseModelOutputWithPooling, ModelOutput
from .models.vit import DINOv3ViTBackbone, DINOv3ViTModel, DINOv3ViTPreTrainedModel
from .pipeline import pipeline
from .quantize import QuantizationError, quantize  # the function shadows the module name on purpose
from .variants import CONVNEXT_VARIANTS, VIT_VARIANTS

#: Names whose modules import PIL, loaded on first use so that `import dinov3kit` stays fast.
_LAZY = {
    "BatchFeature": "processing",
    "TextTokenizer": "text",
    "DINOv3ViTImageProcessor": "processing",
    "DINOv3ViTImageProcessorFast": "processing",
    "processor_for_model": "processing",
    "ImageLoadError": "images",
    "load_image": "images",
    "load_images": "images",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AutoBackbone",
    "AutoConfig",
    "AutoImageProcessor",
    "AutoModel",
    "BatchFeature",
    "DINOv3ViTImageProcessor",
    "DINOv3ViTImageProcessorFast",
    "ImageLoadError",
    "TextTokenizer",
    "load_image",
    "load_images",
    "pipeline",
    "export_onnx",
    "quantize",
    "QuantizationError",
    "processor_for_model",
    "BackboneOutput",
    "BaseModelOutputWithPooling",
    "CONVNEXT_VARIANTS",
    "CheckpointError",
    "DINOv3ConvNextBackbone",
    "DINOv3ConvNextConfig",
    "DINOv3ConvNextModel",
    "DINOv3ConvNextPreTrainedModel",
    "DINOv3TextConfig",
    "DINOv3TextModel",
    "DINOv3ViTBackbone",
    "DINOv3ViTConfig",
    "DINOv3ViTModel",
    "DINOv3ViTPreTrainedModel",
    "ModelOutput",
    "VIT_VARIANTS",
]
