"""`DINOv3ViTImageProcessor`: transformers' DINOv3 image processor (same options, names, defaults and
numbers), on plain torch tensors and faster.

The public face of `dinov3kit.pixels` for preprocessing: the processor lives in `pixels/processor.py`
(its differences from transformers are listed there), sizes in `pixels/sizes.py`, pixel operations in
`pixels/ops.py`.
"""

from .pixels.ops import center_crop, rescale_and_normalize
from .pixels.options import DEFAULTS, OWN_DEFAULTS
from .pixels.processor import (
    TRANSFORMERS_CLASS_NAME,
    BatchFeature,
    DINOv3ViTImageProcessor,
    DINOv3ViTImageProcessorFast,
    processor_for_model,
)
from .pixels.sizes import RESAMPLE_MODES, aspect_preserving_size, transformers_resize_size
from .source import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

__all__ = [
    "DEFAULTS",
    "IMAGE_PROCESSOR_NAME",
    "OWN_DEFAULTS",
    "PROCESSOR_NAME",
    "RESAMPLE_MODES",
    "TRANSFORMERS_CLASS_NAME",
    "BatchFeature",
    "DINOv3ViTImageProcessor",
    "DINOv3ViTImageProcessorFast",
    "aspect_preserving_size",
    "center_crop",
    "processor_for_model",
    "rescale_and_normalize",
    "transformers_resize_size",
]
