"""Per-thread buffers: named scratch slots and the reference-counted pool."""

from __future__ import annotations

import threading

import pytest
import torch

from dinov3kit import scratch

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_buffers(monkeypatch):
    monkeypatch.setattr(scratch, "POOL_MIN_BYTES", 0)  # the tests use small tensors
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


def test_a_pooled_buffer_is_reused_once_nothing_uses_it():
    first = scratch.pooled((8, 16), torch.float32, CPU)
    address = first.data_ptr()
    del first
    again = scratch.pooled((8, 16), torch.float32, CPU)
    assert again.data_ptr() == address and again.shape == (8, 16)


def test_a_pooled_tensor_that_is_kept_is_never_handed_out_again():
    kept = scratch.pooled((8, 16), torch.float32, CPU).fill_(1.0)
    view = kept[2:].t()  # any view pins the memory too
    del kept
    other = scratch.pooled((8, 16), torch.float32, CPU).fill_(2.0)
    assert other.data_ptr() != view.data_ptr() - 2 * 16 * 4
    assert torch.equal(view, torch.ones(16, 6))
    del view
    assert len(scratch._local.pool) == 2  # both idle now, both kept for reuse


def test_pool_matches_sizes_and_dtypes():
    big = scratch.pooled((100,), torch.float32, CPU)
    big_address = big.data_ptr()
    del big
    assert scratch.pooled((40,), torch.float32, CPU).data_ptr() != big_address  # more than twice the request
    assert scratch.pooled((100,), torch.float64, CPU).data_ptr() != big_address  # another dtype
    assert scratch.pooled((60,), torch.float32, CPU).data_ptr() == big_address


def test_pool_stays_under_its_budget(monkeypatch):
    monkeypatch.setattr(scratch, "POOL_BYTES", 1000)
    kept = scratch.pooled((150,), torch.float32, CPU)  # 600 bytes, pooled
    over = scratch.pooled((150,), torch.float32, CPU)  # would pass the budget: fresh memory, not pooled
    assert len(scratch._local.pool) == 1
    del kept, over
    larger = scratch.pooled((200,), torch.float32, CPU)  # the idle 600-byte buffer is dropped to make room
    assert len(scratch._local.pool) == 1 and scratch._local.pool[0][0].data_ptr() == larger.data_ptr()


def test_pool_is_per_thread_and_cpu_only():
    mine = scratch.pooled((64,), torch.float32, CPU)
    address = mine.data_ptr()
    del mine
    seen = []
    thread = threading.Thread(target=lambda: seen.append(scratch.pooled((64,), torch.float32, CPU).data_ptr()))
    thread.start()
    thread.join()
    assert seen[0] != address
    assert scratch.pooled((64,), torch.float32, torch.device("meta")).device.type == "meta"


def test_small_requests_are_left_to_the_allocator(monkeypatch):
    monkeypatch.setattr(scratch, "POOL_MIN_BYTES", 1024)
    small = scratch.pooled((16,), torch.float32, CPU)
    assert small.shape == (16,) and not hasattr(scratch._local, "pool")


def test_pooled_tensors_are_writable_inside_and_outside_inference_mode():
    with torch.inference_mode():
        inside = scratch.pooled((4,), torch.float32, CPU)
        torch.add(torch.ones(4), 1, out=inside)
    assert not inside.is_inference()
    inside.mul_(2)
    assert torch.equal(inside, torch.full((4,), 4.0))
