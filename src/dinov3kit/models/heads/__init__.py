"""Task heads on DINOv3 backbones: Meta's released linear ImageNet-1k classifier (`linear`) and DPT depth
heads (`dpt`: dinov3_vit7b16_dd, CHMv2 canopy height).

Heads are plain modules over the backbone's public outputs; reading Meta's head files (and refusing a head
whose backbone does not match) is done in `dinov3kit.tools.heads`.
"""

from .dpt import DPT_PRESETS, DINOv3DepthEstimator, DPTConfig, DPTHead
from .linear import DINOv3LinearClassifier, ImageClassifierOutput, imagenet1k_labels

__all__ = ["DPT_PRESETS", "DINOv3DepthEstimator", "DPTConfig", "DPTHead", "DINOv3LinearClassifier", "ImageClassifierOutput", "imagenet1k_labels"]
