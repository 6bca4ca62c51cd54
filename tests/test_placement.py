"""weights/placement.py: `device_map` planning and loading, and the one meaning of every dtype and device name."""

import pytest
import torch

from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.weights import placement
from oracles.hf_twin import save_hf_vit

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, num_register_tokens=4)


GPU0, GPU1, CPU = torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cpu")


def units(model, dtype=torch.float32):
    return placement.placement_units(model, dtype)


def test_placement_units_cover_the_model_in_execution_order():
    with torch.device("meta"):
        model = DINOv3ViTModel(DINOv3ViTConfig(**TINY))
    found = units(model)
    assert [names for names, _ in found] == [
        ["", "patch_embed", "blocks.0"], ["blocks.1"], ["blocks.2", "norm"]
    ]  # fmt: skip
    total = sum(p.numel() * 4 for p in model.parameters()) + model.rope_periods.numel() * 4
    assert sum(size for _, size in found) == total
    assert sum(size for _, size in units(model, torch.bfloat16)) < total


def test_plan_prefers_one_device_then_splits_then_offloads():
    parts = [(["", "blocks.0"], 40), (["blocks.1"], 30), (["blocks.2", "norm"], 30)]
    one = placement.plan(parts, [(GPU0, 50), (GPU1, 100), (CPU, 1000)])
    assert set(one.values()) == {GPU1}  # the first device that holds everything
    split = placement.plan(parts, [(GPU0, 75), (GPU1, 60), (CPU, 1000)])
    assert split == {"": GPU0, "blocks.0": GPU0, "blocks.1": GPU0, "blocks.2": GPU1, "norm": GPU1}
    offload = placement.plan(parts, [(GPU0, 45), (GPU1, 35), (CPU, 1000)])
    assert offload == {"": GPU0, "blocks.0": GPU0, "blocks.1": GPU1, "blocks.2": CPU, "norm": CPU}
    with pytest.raises(ValueError, match=r"do not fit.*max_memory"):
        placement.plan(parts, [(GPU0, 45), (CPU, 35)])


def test_budgets_from_mocked_gpus(monkeypatch):
    free = {0: 10 * 2**30, 1: 20 * 2**30}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[device.index], 80 * 2**30))
    monkeypatch.setattr(placement, "free_memory", lambda device: free[device.index] if device.type == "cuda" else 2**34)
    budgets = placement.memory_budgets()
    assert [device for device, _ in budgets] == [GPU0, GPU1, CPU]
    assert budgets[1][1] == int(placement.WEIGHT_SHARE * 20 * 2**30)
    assert placement.memory_budgets({"cpu": "1GB", 1: "2GiB", 0: 5}) == [(GPU0, 5), (GPU1, 2**31), (CPU, 10**9)]


def test_auto_map_splits_a_model_too_big_for_one_gpu(monkeypatch):
    with torch.device("meta"):
        model = DINOv3ViTModel(DINOv3ViTConfig(**TINY))
    sizes = [size for _, size in units(model)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    budget = {0: sizes[0] + sizes[1], 1: sizes[2], "cpu": 0}
    device_map = placement.resolve_device_map("auto", model, torch.float32, budget)
    assert device_map["blocks.1"] == GPU0 and device_map["blocks.2"] == device_map["norm"] == GPU1
    big = {0: sum(sizes), 1: sum(sizes)}
    assert set(placement.resolve_device_map("auto", model, torch.float32, big).values()) == {GPU0}


def test_device_map_loading_on_cpu(tmp_path):
    reference, _ = save_hf_vit(tmp_path, **TINY)
    pixels = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = reference(pixels).last_hidden_state
        auto = DINOv3ViTModel.from_pretrained(tmp_path, device_map="auto")
        assert auto.hf_device_map == {"": "cpu"}
        # Two distinct devices (cpu and cpu:0) exercise the hooks that move hidden states between parts.
        split = DINOv3ViTModel.from_pretrained(tmp_path, device_map={"": "cpu", "blocks.2": "cpu:0", "norm": "cpu:0"})
        assert sum(len(block._forward_pre_hooks) for block in split.blocks) == 3
        for model in (auto, split):
            assert (model(pixels).last_hidden_state - expected).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="do not fit"):
        DINOv3ViTModel.from_pretrained(tmp_path, device_map="auto", max_memory={"cpu": "10KB"})
    with pytest.raises(ValueError, match=r"places no device for \['', 'patch_embed'"):
        DINOv3ViTModel.from_pretrained(tmp_path, device_map={"blocks": "cpu", "norm": "cpu"})


def test_dtype_names_have_one_meaning(monkeypatch):
    assert placement.resolve_dtype("auto", torch.bfloat16) == torch.bfloat16  # the stored dtype
    assert placement.resolve_dtype(None, torch.float16) == torch.float16
    assert placement.resolve_dtype("fast", torch.float32, "cuda") == torch.bfloat16
    monkeypatch.setattr(placement, "has_half_matmul_units", lambda: False)
    assert placement.resolve_dtype("fast", torch.bfloat16, "cpu") == torch.float32
    assert placement.resolve_dtype("fast", torch.bfloat16) == torch.float32  # no device: the CPU
    monkeypatch.setattr(placement, "has_half_matmul_units", lambda: True)  # AMX or AVX512-BF16
    assert placement.resolve_dtype("fast", torch.float32, "cpu") == torch.bfloat16
    for name in ("bf16", "bfloat16", "torch.bfloat16", torch.bfloat16):
        assert placement.resolve_dtype(name, torch.float32) == torch.bfloat16
    assert placement.resolve_dtype("fp16") == placement.resolve_dtype("half") == torch.float16
    with pytest.raises(ValueError, match="'fast'"):
        placement.resolve_dtype("int8")


def test_device_names_have_one_meaning(monkeypatch):
    assert placement.resolve_device(None) == CPU and placement.resolve_device(-1) == CPU
    assert placement.resolve_device(1) == GPU1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert placement.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement.resolve_device("auto") == torch.device("cuda")


def test_unreadable_max_memory_says_what_a_size_is():
    with pytest.raises(ValueError, match="a size must"):
        placement.memory_budgets({"cpu": "lots"})
