"""Builders of random-weight twins in the external formats (transformers, Meta `.pth`, timm)."""
