import gc
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dinov3kit.backend import cpu, packing
from dinov3kit.backend.config import switches
from dinov3kit.backend.packing import packed_weights

pytestmark = pytest.mark.skipif(not packing.available(), reason="this torch has no MKL packed products")


@pytest.fixture(autouse=True)
def no_packs_left():
    packed_weights.release()
    yield
    packed_weights.release()


def weight_and_bias(out_features: int = 48, in_features: int = 32) -> tuple[torch.nn.Parameter, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(out_features, in_features, generator=generator))
    return weight, torch.randn(out_features, generator=generator)


def test_packed_product_matches_addmm_for_each_row_count():
    weight, bias = weight_and_bias()
    with torch.inference_mode():
        for count in (1, 10, 201, 10):
            rows = torch.randn(count, 32)
            out = packed_weights.linear(rows, weight, bias)
            assert out is not None
            torch.testing.assert_close(out, torch.addmm(bias, rows, weight.t()), rtol=0, atol=1e-5)
        assert packed_weights.linear(torch.randn(10, 32), weight, None).shape == (10, 48)


def test_each_weight_keeps_packs_for_its_last_row_counts(monkeypatch):
    weight, bias = weight_and_bias()
    tries = []
    attempt = packed_weights._pack
    monkeypatch.setattr(packed_weights, "_pack", lambda *args: tries.append(args[1]) or attempt(*args))
    with torch.inference_mode():
        for _ in range(3):  # alternating sizes: one pack each
            for count in (7, 9):
                assert packed_weights.linear(torch.randn(count, 32), weight, bias) is not None
        assert tries == [7, 9]
        packed_weights.linear(torch.randn(11, 32), weight, bias)  # a third count replaces the oldest
        packed_weights.linear(torch.randn(9, 32), weight, bias)
        packed_weights.linear(torch.randn(7, 32), weight, bias)
    assert tries == [7, 9, 11, 7]
    assert packed_weights.row_counts(weight) == [11, 7]


def test_changed_weights_are_packed_again():
    weight, bias = weight_and_bias()
    rows = torch.randn(10, 32)
    with torch.inference_mode():
        packed_weights.linear(rows, weight, bias)
    with torch.no_grad():
        weight.mul_(-2)  # in place: the version counter moves
    with torch.inference_mode():
        torch.testing.assert_close(packed_weights.linear(rows, weight, bias), torch.addmm(bias, rows, weight.t()))
    weight.data = torch.randn(48, 32)  # new data, as `.to()` or `load_state_dict(assign=True)` leave it
    with torch.inference_mode():
        torch.testing.assert_close(packed_weights.linear(rows, weight, bias), torch.addmm(bias, rows, weight.t()))


def test_where_packing_does_not_apply(monkeypatch):
    weight, bias = weight_and_bias()
    with torch.inference_mode():
        assert packed_weights.linear(torch.randn(packing.MAX_ROWS + 1, 32), weight, bias) is None
        assert packed_weights.linear(torch.randn(4, 32), weight.detach(), bias) is None  # not a parameter
        monkeypatch.setattr(switches, "packed_weights_bytes", weight.nbytes - 1)
        assert packed_weights.linear(torch.randn(4, 32), weight, bias) is None
        monkeypatch.setattr(switches, "packed_weights_bytes", weight.nbytes)
        assert packed_weights.linear(torch.randn(4, 32), weight, bias) is None  # the refusal is remembered
        packed_weights.release()
        assert packed_weights.linear(torch.randn(4, 32), weight, bias) is not None
        other, _ = weight_and_bias()
        assert packed_weights.linear(torch.randn(4, 32), other, bias) is None  # the budget is spent on `weight`


def test_packs_go_with_their_weights():
    weight, bias = weight_and_bias()
    with torch.inference_mode():
        packed_weights.linear(torch.randn(4, 32), weight, bias)
    assert len(packed_weights) == 1
    del weight
    gc.collect()
    assert len(packed_weights) == 0


def test_small_fp32_inference_products_use_packed_weights(monkeypatch):
    layer = torch.nn.Linear(32, 48)
    calls = []
    packed = packed_weights.linear
    monkeypatch.setattr(packed_weights, "linear", lambda *args: calls.append(1) or packed(*args))
    x = torch.randn(2, 5, 32)
    with torch.inference_mode():
        torch.testing.assert_close(cpu.linear(x, layer.weight, layer.bias), layer(x))
    assert calls and len(packed_weights) == 1
    cpu.linear(x, layer.weight, layer.bias)  # autograd tracks the weight: the plain product
    assert len(calls) == 1


def test_threads_share_one_pack():
    weight, bias = weight_and_bias(256, 128)
    rows = torch.randn(64, 128)
    expected = torch.addmm(bias, rows, weight.t())

    def product(_) -> torch.Tensor:
        with torch.inference_mode():
            return packed_weights.linear(rows, weight, bias)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(product, range(16)))
    for result in results:
        torch.testing.assert_close(result, expected)
    assert len(packed_weights) == 1


def test_copies_of_changed_weights_are_dropped_at_the_next_pack():
    moved, bias = weight_and_bias()
    kept, _ = weight_and_bias()
    with torch.inference_mode():
        packed_weights.linear(torch.randn(4, 32), moved, bias)
        moved.data = moved.data.double()  # as `model.double()` leaves a parameter
        packed_weights.linear(torch.randn(4, 32), kept, bias)
    assert [weight is kept for weight in packed_weights._packs.keys()] == [True]


def test_a_weight_over_the_budget_is_not_tried_on_every_product(monkeypatch):
    weight, bias = weight_and_bias()
    monkeypatch.setattr(switches, "packed_weights_bytes", 0)
    tries = []
    attempt = packed_weights._pack
    monkeypatch.setattr(packed_weights, "_pack", lambda *args: tries.append(1) or attempt(*args))
    with torch.inference_mode():
        for _ in range(3):
            assert packed_weights.linear(torch.randn(4, 32), weight, bias) is None
        assert len(tries) == 1
        with torch.no_grad():
            weight.add_(1)
        packed_weights.linear(torch.randn(4, 32), weight, bias)
    assert len(tries) == 2


def test_every_pack_counts_against_the_budget(monkeypatch):
    weight, bias = weight_and_bias()
    other, _ = weight_and_bias()
    monkeypatch.setattr(switches, "packed_weights_bytes", 2 * weight.nbytes)
    with torch.inference_mode():
        assert packed_weights.linear(torch.randn(4, 32), weight, bias) is not None
        assert packed_weights.linear(torch.randn(9, 32), weight, bias) is not None
        assert packed_weights.linear(torch.randn(4, 32), other, bias) is None  # two packs of `weight` fill the budget
        monkeypatch.setattr(packing, "ROW_COUNTS_PER_WEIGHT", 1)
        assert packed_weights.linear(torch.randn(5, 32), weight, bias) is not None  # replaces both older packs
        assert packed_weights.linear(torch.randn(5, 32), other, bias) is not None
    assert packed_weights.row_counts(weight) == [5]


def test_a_weight_viewed_in_another_layout_is_not_used_packed():
    weight = torch.nn.Parameter(torch.randn(32, 32))
    rows = torch.randn(4, 32)
    with torch.inference_mode():
        packed_weights.linear(rows, weight, None)
    weight.data = weight.data.t()  # the same memory, transposed
    with torch.inference_mode():
        assert packed_weights.linear(rows, weight, None) is None
        torch.testing.assert_close(cpu.linear(rows, weight, None), rows @ weight.t())


def test_no_rows_are_never_packed_and_give_an_empty_product():
    weight, bias = weight_and_bias()
    with torch.inference_mode():
        assert packed_weights.linear(torch.randn(0, 32), weight, bias) is None  # MKL divides by the row count
        assert cpu.linear(torch.randn(0, 5, 32), weight, bias).shape == (0, 5, 48)
    assert len(packed_weights) == 0


def test_the_owner_reports_and_releases_what_it_keeps():
    weight, bias = weight_and_bias()
    with torch.inference_mode():
        packed_weights.linear(torch.randn(4, 32), weight, bias)
    assert packed_weights.kept_bytes() == weight.nbytes
    from dinov3kit import backend

    backend.release()
    assert len(packed_weights) == 0 and packed_weights.kept_bytes() == 0


@pytest.mark.skipif(
    not (packing.available(torch.bfloat16) and cpu.has_half_matmul_units()), reason="needs oneDNN bf16 on bf16 units"
)
def test_small_bf16_products_use_a_onednn_pack_with_the_same_sums():
    layer = torch.nn.Linear(32, 48).bfloat16()
    x = torch.randn(2, 5, 32).bfloat16()
    with torch.inference_mode():
        unpacked = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
        packed = cpu.linear(x, layer.weight, layer.bias)
        assert packed_weights.row_counts(layer.weight) == [10]
        assert torch.equal(packed, unpacked)
        many = torch.randn(packing.MAX_ROWS + 1, 32).bfloat16()
        cpu.linear(many, layer.weight, layer.bias)  # too many rows to pack for
    assert packed_weights.row_counts(layer.weight) == [10]


def test_without_mkls_private_ops_products_are_the_same(monkeypatch):
    layer = torch.nn.Linear(32, 48)
    x = torch.randn(3, 7, 32)
    with torch.inference_mode():
        packed = cpu.linear(x, layer.weight, layer.bias)
        assert len(packed_weights) == 1
        packed_weights.release()
        monkeypatch.setattr(torch.ops, "mkl", types.SimpleNamespace())  # a torch without MKL's packed products
        packing.available.cache_clear()
        try:
            assert not packing.available()
            plain = cpu.linear(x, layer.weight, layer.bias)
            assert len(packed_weights) == 0
        finally:
            monkeypatch.undo()
            packing.available.cache_clear()
    torch.testing.assert_close(plain, packed, rtol=0, atol=1e-5)
