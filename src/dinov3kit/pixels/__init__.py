"""Pixels: any image input → RGB pixels → the processor's `pixel_values`.

decode.py   inputs (paths, bytes, URLs, file objects) → decoded PIL images, with bounded reads
rgb.py      the one set of rules that turns images and arrays into RGB pixels
pillow.py   fast access to Pillow's memory (private APIs, each with a public fallback)
resize.py   antialiased resizing with PyTorch's numbers
sizes.py    output sizes and resample modes of transformers' processor
options.py  the processor's options, defaults and validation
tensors.py  processor inputs → [C, H, W] tensors (transformers' channel and RGB rules)
ops.py      crop, fused rescale + normalize, padding, batching
processor.py  `DINOv3ViTImageProcessor`
device.py   JPEG batches decoded (nvJPEG) and preprocessed on the GPU, with the processor's arithmetic

This `__init__` holds only the limits every reader shares, so that importing them needs no PIL.
"""

from ..fileio import DEFAULT_MAX_BYTES

#: Seconds to wait for an image URL (transformers waits forever by default).
DEFAULT_TIMEOUT = 10.0

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TIMEOUT"]
