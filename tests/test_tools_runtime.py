"""Model, device and dtype choices shared by every tool."""

import pytest
import torch

from dinov3kit.tools.runtime import DEFAULT_MODEL, MODEL_ENV, model_source, pick_device, pick_dtype
from dinov3kit.weights import placement


def test_model_source_prefers_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert model_source(None) == DEFAULT_MODEL
    monkeypatch.setenv(MODEL_ENV, "someone/dinov3-custom")
    assert model_source(None) == "someone/dinov3-custom"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt.pth").write_bytes(b"")
    assert model_source("ckpt.pth") == str(tmp_path / "ckpt.pth")  # local paths are recorded absolute


def test_auto_device_and_dtype(monkeypatch):
    device = pick_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(placement, "has_half_matmul_units", lambda: False)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(placement, "has_half_matmul_units", lambda: True)  # AMX or AVX512-BF16
    assert pick_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="auto, bf16, fp16 or fp32"):
        pick_dtype("int8", torch.device("cpu"))
