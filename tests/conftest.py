"""Session setup and shared fixtures. Without a GPU, Triton kernels run in Triton's CPU interpreter, so
tests/test_kernels.py checks them against their torch twins here too. The flag must be set before triton is first imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): one thread runs
    them fastest, and is not stalled by a busy second core or other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
