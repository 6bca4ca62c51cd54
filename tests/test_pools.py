"""The reference-counted pool of CPU activation buffers and its owner."""

from __future__ import annotations

import threading

import pytest
import torch

from dinov3kit.backend import cpu, packing, pools
from dinov3kit.backend.config import switches
from dinov3kit.backend.pools import activation_pool as pool

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_buffers(monkeypatch):
    monkeypatch.setattr(pools, "MIN_BYTES", 0)  # the tests use small tensors
    pool.release()
    yield
    pool.release()


def test_a_pooled_buffer_is_reused_once_nothing_uses_it():
    first = pool.empty((8, 16), torch.float32, CPU)
    address = first.data_ptr()
    del first
    again = pool.empty((8, 16), torch.float32, CPU)
    assert again.data_ptr() == address and again.shape == (8, 16)


def test_a_pooled_tensor_that_is_kept_is_never_handed_out_again():
    kept = pool.empty((8, 16), torch.float32, CPU).fill_(1.0)
    view = kept[2:].t()  # any view pins the memory too
    del kept
    other = pool.empty((8, 16), torch.float32, CPU).fill_(2.0)
    assert other.data_ptr() != view.data_ptr() - 2 * 16 * 4
    assert torch.equal(view, torch.ones(16, 6))
    del view
    assert len(pool._local.pool) == 2  # both idle now, both kept for reuse


def test_pool_matches_sizes_and_dtypes():
    big = pool.empty((100,), torch.float32, CPU)
    big_address = big.data_ptr()
    del big
    assert pool.empty((40,), torch.float32, CPU).data_ptr() != big_address  # more than twice the request
    assert pool.empty((100,), torch.float64, CPU).data_ptr() != big_address  # another dtype
    assert pool.empty((60,), torch.float32, CPU).data_ptr() == big_address


def test_pool_stays_under_its_budget(monkeypatch):
    monkeypatch.setattr(switches, "activation_pool_bytes", 1000)
    kept = pool.empty((150,), torch.float32, CPU)  # 600 bytes, pooled
    over = pool.empty((150,), torch.float32, CPU)  # would pass the budget: fresh memory, not pooled
    assert len(pool._local.pool) == 1
    del kept, over
    larger = pool.empty((200,), torch.float32, CPU)  # the idle 600-byte buffer is dropped to make room
    assert len(pool._local.pool) == 1 and pool._local.pool[0][0].data_ptr() == larger.data_ptr()


def test_pool_is_per_thread_and_cpu_only():
    mine = pool.empty((64,), torch.float32, CPU)
    address = mine.data_ptr()
    del mine
    seen = []
    thread = threading.Thread(target=lambda: seen.append(pool.empty((64,), torch.float32, CPU).data_ptr()))
    thread.start()
    thread.join()
    assert seen[0] != address
    assert pool.empty((64,), torch.float32, torch.device("meta")).device.type == "meta"


def test_small_requests_are_left_to_the_allocator(monkeypatch):
    monkeypatch.setattr(pools, "MIN_BYTES", 1024)
    small = pool.empty((16,), torch.float32, CPU)
    assert small.shape == (16,) and not hasattr(pool._local, "pool")


def test_pooled_tensors_are_writable_inside_and_outside_inference_mode():
    with torch.inference_mode():
        inside = pool.empty((4,), torch.float32, CPU)
        torch.add(torch.ones(4), 1, out=inside)
    assert not inside.is_inference()
    inside.mul_(2)
    assert torch.equal(inside, torch.full((4,), 4.0))


def test_release_frees_the_threads_buffers_and_a_zero_budget_keeps_none(monkeypatch):
    kept = pool.empty((64,), torch.float32, CPU)
    assert pool.kept_bytes() == 256
    pool.release()
    assert pool.kept_bytes() == 0 and kept.shape == (64,)  # tensors in use stay valid
    monkeypatch.setattr(switches, "activation_pool_bytes", 0)
    pool.empty((64,), torch.float32, CPU)
    assert pool.kept_bytes() == 0


def test_without_the_private_use_count_no_buffer_is_handed_out_twice(monkeypatch):
    first = pool.empty((16,), torch.float32, CPU)
    address = first.data_ptr()
    del first
    monkeypatch.setattr(pools, "storage_use_count", lambda storage: None)  # a torch without the private API
    assert pool.empty((16,), torch.float32, CPU).data_ptr() != address
    monkeypatch.undo()
    tensor = torch.empty(4)
    alone = pools.storage_use_count(tensor.untyped_storage())
    view = tensor[1:]
    assert pools.storage_use_count(tensor.untyped_storage()) == alone + 1 and view.numel() == 3


def test_empty_requests_give_empty_tensors():
    assert pool.empty((0, 7), torch.float32, CPU).shape == (0, 7)


def test_without_the_private_use_count_products_are_the_same(monkeypatch):
    layer = torch.nn.Linear(32, 48)
    x = torch.randn(packing.MAX_ROWS + 1, 32)  # past the packed products: the output is pooled
    with torch.inference_mode():
        expected = [cpu.linear(x * k, layer.weight, layer.bias).clone() for k in (1, 2)]
        monkeypatch.delattr(torch._C, "_storage_Use_Count")  # a torch without the private API
        assert pools.storage_use_count(torch.empty(1).untyped_storage()) is None
        kept = [cpu.linear(x * k, layer.weight, layer.bias) for k in (1, 2)]
    assert kept[0].data_ptr() != kept[1].data_ptr()
    assert all(torch.equal(got, want) for got, want in zip(kept, expected))
