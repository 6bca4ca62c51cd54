"""What both embed engines (local and Ray) share: decoding one item, the errors, a run's summary."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..images import ImageLoadError, load_image
from .inputs import Item, read_bytes

#: Seconds after which a chunk is committed even if it is not full, so a slow run loses little when killed.
COMMIT_INTERVAL_S = 60.0


class BadImageError(ValueError):
    """Raised in strict mode for the first image that cannot be embedded."""


@dataclass
class EmbedSummary:
    """What a run did: images found, embedded now, already in the index, failed, and its times: `seconds`
    in all, `embedding_seconds` from the loaded model to the written index (the throughput's base)."""

    out: Path
    found: int
    embedded: int
    skipped: int
    failed: int
    seconds: float
    embedding_seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embedding_seconds if self.embedding_seconds > 0 else 0.0


class BadInput(ValueError):
    """An item that cannot be embedded; the message is the reason recorded in the error table."""


def decode_item(item: Item, processor, max_bytes: int | None = None) -> tuple[torch.Tensor, int, int, str]:
    """Read, hash, decode and preprocess one item: (pixels [3, H, W], width, height, sha256 hex).
    Raises `BadInput` with the reason (shared by both engines, so that they record the same errors)."""
    try:
        data = read_bytes(item, max_bytes)
        image = load_image(data)
        pixels = processor(image, return_tensors="pt")["pixel_values"][0]
    except ImageLoadError as error:
        raise BadInput(error.reason) from error
    except FileNotFoundError as error:
        raise BadInput("no such file") from error
    except OSError as error:
        raise BadInput(f"cannot read the file ({error.strerror or error})") from error
    except ValueError as error:
        raise BadInput(f"cannot preprocess the image ({error})") from error
    return pixels, image.width, image.height, hashlib.sha256(data).hexdigest()
