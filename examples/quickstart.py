"""Quick start: load a DINOv3 model and embed an image.

The model comes from $DINOV3KIT_MODEL (a hub id, a transformers folder or a Meta .pth file), by default
facebook/dinov3-vits16-pretrain-lvd1689m. No random weights are ever substituted.
"""

import os
import sys

import torch

from dinov3kit import CheckpointError, DINOv3ViTModel

DEFAULT_MODEL = "facebook/dinov3-vits16-pretrain-lvd1689m"


def main() -> int:
    source = os.environ.get("DINOV3KIT_MODEL", DEFAULT_MODEL)
    try:
        model = DINOv3ViTModel.from_pretrained(source)
    except CheckpointError as error:
        print(f"Could not load DINOv3 weights from {source!r}:\n  {error}\n", file=sys.stderr)
        print(
            "DINOv3 weights are gated on the Hugging Face hub: accept the license on the model page and run\n"
            "`hf auth login`, or point DINOV3KIT_MODEL at a local transformers folder or a Meta .pth file:\n"
            "  DINOV3KIT_MODEL=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth make demo",
            file=sys.stderr,
        )
        return 1
    pixels = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        output = model(pixels)
    print(f"loaded {source}: {model.num_parameters() / 1e6:.1f}M parameters, dtype {model.dtype}")
    print(f"embedding {tuple(output.pooler_output.shape)}, tokens {tuple(output.last_hidden_state.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
