"""Task heads on DINOv3 backbones: Meta's released linear ImageNet-1k classifier (`linear`).

Heads are plain modules over the backbone's public outputs; reading Meta's head files (and refusing a head
whose backbone does not match) is done in `dinov3kit.tools.heads`.
"""

from .linear import DINOv3LinearClassifier, ImageClassifierOutput, imagenet1k_labels

__all__ = ["DINOv3LinearClassifier", "ImageClassifierOutput", "imagenet1k_labels"]
