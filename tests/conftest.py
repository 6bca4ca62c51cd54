"""Session setup: without a GPU, Triton kernels run in Triton's CPU interpreter, so tests/test_kernels.py
checks them against their torch twins here too. The flag must be set before triton is first imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
