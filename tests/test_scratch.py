"""Per-thread named scratch slots."""

from __future__ import annotations

import pytest
import torch

from dinov3kit import scratch

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_buffers():
    scratch.release()
    yield
    scratch.release()


def test_scratch_buffers_are_reused_per_slot_and_released():
    a = scratch.scratch("test.slot", (4, 5), torch.float32, CPU)
    b = scratch.scratch("test.slot", (2, 3), torch.float32, CPU)
    assert a.data_ptr() == b.data_ptr()  # the same memory, reused
    big = scratch.scratch("test.slot", (10,), torch.float32, CPU, max_bytes=16)
    assert big.data_ptr() != a.data_ptr()  # over the cap: fresh memory
    scratch.release()
    assert scratch.scratch("test.slot", (4, 5), torch.float32, CPU).shape == (4, 5)
