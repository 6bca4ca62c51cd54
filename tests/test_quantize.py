"""torchao quantization: feature quality against fp32 on real photos, the scheme → config choice per
device, torchao / transformers config objects, `from_pretrained(quantization_config=...)`, footprints."""

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torchao", reason="the quantization extra is not installed")

from skimage import data as photos  # noqa: E402
from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig  # noqa: E402

from dinov3kit import CheckpointError, DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel  # noqa: E402
from dinov3kit.processing import DINOv3ViTImageProcessor  # noqa: E402
from dinov3kit.quantize import (  # noqa: E402
    QuantizationError,
    is_quantized,
    quantize,
    scheme_config,
    weights_nbytes,
)
from dinov3kit.weights import save_meta_checkpoint  # noqa: E402
from oracles.hf_twin import save_hf_vit  # noqa: E402
from oracles.random_weights import randomize_  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: Lowest cosine similarity to fp32 (CLS of each photo, and mean over each photo's patch tokens).
CPU_SCHEMES = {"int8": 0.99, "int8-dynamic": 0.99, "int4": 0.97}
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_register_tokens=4)


@pytest.fixture(scope="module")
def pixel_values():
    """The four scikit-image photos, resized to 224 and ImageNet-normalised: [4, 3, 224, 224]."""
    return DINOv3ViTImageProcessor()([getattr(photos, name)() for name in PHOTOS], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def vits16():
    """A ViT-S/16-size model (12 blocks, width 384, 4 registers) with random non-trivial weights."""
    return randomize_(DINOv3ViTModel(DINOv3ViTConfig.from_preset("vits16"))).eval()


@pytest.fixture(scope="module")
def fp32_tokens(vits16, pixel_values):
    with torch.no_grad():
        return vits16(pixel_values).last_hidden_state


def tiny_model(**overrides) -> DINOv3ViTModel:
    return randomize_(DINOv3ViTModel(DINOv3ViTConfig(**{**TINY, **overrides}))).eval()


def quantized_linears(model: nn.Module) -> dict[str, bool]:
    return {name: is_quantized(module) for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def feature_similarity(tokens: torch.Tensor, reference: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: cosine similarity of the CLS token, and the mean one of the patch tokens."""
    cosine = nn.functional.cosine_similarity(tokens, reference, dim=-1)  # [B, N]
    return cosine[:, 0], cosine[:, prefix:].mean(1)


@pytest.mark.parametrize("scheme", sorted(CPU_SCHEMES))
def test_cpu_scheme_keeps_features_of_photos(scheme, vits16, pixel_values, fp32_tokens):
    model = quantize(copy.deepcopy(vits16), scheme)
    assert all(quantized_linears(model).values())
    assert weights_nbytes(model) < 0.3 * weights_nbytes(vits16)
    with torch.no_grad():
        tokens = model(pixel_values).last_hidden_state
    cls, patches = feature_similarity(tokens, fp32_tokens, vits16.config.num_prefix_tokens)
    assert not torch.equal(tokens, fp32_tokens)
    assert cls.min() >= CPU_SCHEMES[scheme], cls
    assert patches.min() >= CPU_SCHEMES[scheme], patches


@pytest.mark.parametrize(
    "depths",
    [pytest.param([1, 1, 1, 1], id="convnext-t-widths-1-block-per-stage"), pytest.param(None, id="convnext-t", marks=pytest.mark.slow)],
)
def test_convnext_keeps_features_of_photos(depths, pixel_values):
    """ConvNeXt-T widths (96 to 768): its pointwise MLPs are the Linear layers that get quantized."""
    reference = randomize_(DINOv3ConvNextModel(DINOv3ConvNextConfig(depths=depths))).eval()
    with torch.no_grad():
        expected = reference(pixel_values).last_hidden_state
    for scheme, threshold in CPU_SCHEMES.items():
        model = quantize(copy.deepcopy(reference), scheme)
        whole_groups = {  # int4 groups of 128 input channels: stages 1-2 (96, 192 wide) keep their pwconv1
            name: scheme != "int4" or module.in_features % 128 == 0
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
        }
        assert quantized_linears(model) == whole_groups
        with torch.no_grad():
            pooled, patches = feature_similarity(model(pixel_values).last_hidden_state, expected, 1)
        assert pooled.min() >= threshold and patches.min() >= threshold, (scheme, pooled, patches)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "int8-dynamic"])
def test_gated_vits16plus_int8_keeps_features_of_photos(scheme, pixel_values):
    """ViT-S+/16 (SwiGLU). Its int4 features fall below 0.97 on random weights (see the benchmark)."""
    reference = randomize_(DINOv3ViTModel(DINOv3ViTConfig.from_preset("vits16plus"))).eval()
    model = quantize(copy.deepcopy(reference), scheme)
    with torch.no_grad():
        tokens, expected = model(pixel_values).last_hidden_state, reference(pixel_values).last_hidden_state
    cls, patches = feature_similarity(tokens, expected, reference.config.num_prefix_tokens)
    assert cls.min() >= 0.99 and patches.min() >= 0.99, (cls, patches)


def test_schemes_map_to_torchao_configs_that_run_on_the_device():
    assert type(scheme_config("int8", "cpu")).__name__ == "Int8WeightOnlyConfig"
    assert type(scheme_config("int8-dynamic", "cpu")).__name__ == "Int8DynamicActivationInt8WeightConfig"
    portable = scheme_config("int4", "cpu", group_size=64)
    assert type(portable).__name__ == "IntxWeightOnlyConfig"
    assert portable.weight_dtype == torch.int4 and portable.granularity.group_size == 64


def test_fp8_on_cpu_says_what_hardware_it_needs():
    with pytest.raises(QuantizationError, match=r"compute capability 8\.9.*'int8'"):
        quantize(tiny_model(), "fp8")


def test_unknown_scheme_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown quantization scheme 'int2'.*int8-dynamic"):
        quantize(tiny_model(), "int2")
    with pytest.raises(TypeError, match="torchao config"):
        quantize(tiny_model(), 8)


def test_quantizing_twice_is_refused():
    model = quantize(tiny_model(), "int8")
    with pytest.raises(QuantizationError, match=r"already quantized \(int8\)"):
        quantize(model, "int4")


def test_torchao_failure_on_this_device_becomes_a_clear_error():
    """torchao 0.18's Int4WeightOnlyConfig only has GPU kernels."""
    with pytest.raises(QuantizationError, match=r"Int4WeightOnlyConfig.*cpu.*'int8'"):
        quantize(tiny_model(), Int4WeightOnlyConfig(group_size=128))


def test_torchao_config_is_applied_as_given():
    reference = tiny_model()
    model = quantize(copy.deepcopy(reference), Int8WeightOnlyConfig())
    assert all(quantized_linears(model).values())
    assert model.quantization_scheme == "Int8WeightOnlyConfig"
    pixels = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(model(pixels).pooler_output, reference(pixels).pooler_output)
    assert cosine.min() >= 0.99


def test_transformers_torchao_config_and_modules_to_not_convert():
    from transformers import TorchAoConfig

    model = quantize(tiny_model(), TorchAoConfig(quant_type=Int8WeightOnlyConfig(), modules_to_not_convert=["blocks.0"]))
    states = quantized_linears(model)
    assert not any(q for name, q in states.items() if name.startswith("blocks.0."))
    assert all(q for name, q in states.items() if name.startswith("blocks.1."))


def test_int4_keeps_layers_whose_width_is_not_a_multiple_of_the_group():
    states = quantized_linears(quantize(tiny_model(), "int4", group_size=128))  # fc2 reads 256, the rest 128
    assert all(states.values())
    states = quantized_linears(quantize(tiny_model(intermediate_size=96), "int4", group_size=128))
    assert {name for name, q in states.items() if not q} == {"blocks.0.mlp.fc2", "blocks.1.mlp.fc2"}


def test_from_pretrained_quantization_config(tmp_path):
    save_hf_vit(tmp_path, **TINY)
    reference = DINOv3ViTModel.from_pretrained(tmp_path)
    model = DINOv3ViTModel.from_pretrained(tmp_path, quantization_config="int8")
    assert all(quantized_linears(model).values()) and not is_quantized(reference)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, expected = model(pixels).last_hidden_state, reference(pixels).last_hidden_state
    assert nn.functional.cosine_similarity(got, expected, dim=-1).min() >= 0.99
    assert DINOv3ViTModel.from_pretrained(tmp_path, quantization_config=Int8WeightOnlyConfig()).quantization_scheme
    with pytest.raises(CheckpointError, match="quantized"):
        model.save_pretrained(tmp_path / "saved")
    with pytest.raises(CheckpointError, match="quantized"):
        save_meta_checkpoint(model, tmp_path / "saved.pth")
    assert not (tmp_path / "saved").exists()


def test_weights_footprint():
    model = tiny_model()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    full = weights_nbytes(model)
    assert full == sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))
    quantized = weights_nbytes(quantize(model, "int8"))
    scales = quantized - (full - 3 * linear)  # int8 data saves 3 bytes a weight; per-row scales cost a little
    assert 0 < scales < linear // 10


def test_missing_torchao_says_how_to_install(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def without_torchao(name, *args):
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_torchao)
    with pytest.raises(ImportError, match=r"dinov3kit\[quantization\]"):
        quantize(tiny_model(), "int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only schemes (tinygemm int4, fp8) need CUDA")
@pytest.mark.parametrize("scheme, threshold", [("int4", 0.97), ("fp8", 0.99)])
def test_gpu_scheme_keeps_features_of_photos(scheme, threshold, vits16, pixel_values, fp32_tokens):
    capability = torch.cuda.get_device_capability()
    if scheme == "fp8" and capability < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9")
    model = quantize(copy.deepcopy(vits16).to("cuda", torch.bfloat16), scheme)
    assert all(quantized_linears(model).values())
    with torch.no_grad():
        tokens = model(pixel_values.cuda()).last_hidden_state.float().cpu()
    cls, patches = feature_similarity(tokens, fp32_tokens, vits16.config.num_prefix_tokens)
    assert cls.min() >= threshold and patches.min() >= threshold, (cls, patches)


def test_suppressed_log_messages_drop_only_the_matching_records_and_leave_levels(caplog):
    import logging

    from dinov3kit.quantize import suppressed_log_messages

    root = logging.getLogger()
    level = root.level
    with caplog.at_level(logging.WARNING), suppressed_log_messages("", "pre-processing"):
        logging.warning("Please consider pre-processing before quantization")
        logging.warning("something else")
    logging.warning("pre-processing advice after the block")
    messages = [record.getMessage() for record in caplog.records]
    assert "something else" in messages and "pre-processing advice after the block" in messages
    assert not any("consider pre-processing" in m for m in messages)
    assert root.level == level and not root.filters
