"""The export-friendly ViT forward: the same function as the model in eval mode (plain and gated MLPs,
both attention forms, hooked blocks run as they are), and the properties of the graph that make it fast in
onnxruntime (fused Gemm / Gelu / LayerNormalization, no ScatterND, few transposes)."""

import collections

import pytest
import torch

from dinov3kit import DINOv3ViTConfig, DINOv3ViTModel
from dinov3kit.export_graph import BlockAsIs, ExportedBlock, ExportedViT, plain_block
from oracles.random_weights import randomize_
from oracles.small_vits import VITS

CONFIGS = VITS  # the export tests' plain and gated ViTs
SIZES = [(1, 224, 224), (2, 64, 112), (1, 16, 16)]


def model_of(kind: str, layers: int = 2) -> DINOv3ViTModel:
    return randomize_(DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=layers, **CONFIGS[kind]))).eval()


@pytest.mark.parametrize("onnx_ops", [False, True], ids=["matmul-attention", "onnx-ops"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_same_function_as_the_model(kind, onnx_ops):
    model = model_of(kind)
    exported = ExportedViT(model, onnx_ops=onnx_ops).eval()
    assert all(isinstance(block, ExportedBlock) for block in exported.blocks)
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in SIZES:
        pixel_values = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values)
            tokens, pooled = exported(pixel_values)
        torch.testing.assert_close(tokens, expected.last_hidden_state, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(pooled, expected.pooler_output, atol=2e-5, rtol=1e-4)


def test_hooked_blocks_run_as_they_are():
    model = model_of("plain", layers=3)
    seen = []
    model.blocks[1].mlp.fc1.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    exported = ExportedViT(model).eval()
    assert [type(block) for block in exported.blocks] == [ExportedBlock, BlockAsIs, ExportedBlock]
    assert not plain_block(model.blocks[1]) and plain_block(model.blocks[0])
    pixel_values = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
        tokens, _ = exported(pixel_values)
    torch.testing.assert_close(tokens, expected, atol=2e-5, rtol=1e-4)
    assert len(seen) == 2  # the hook saw the model's forward and the exported one


def test_onnxruntime_fuses_the_exported_graph(tmp_path):
    """The fusions the speed depends on: a regression here costs about half of onnxruntime's speed."""
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from dinov3kit.export import export_onnx

    layers = 2
    path = export_onnx(model_of("plain", layers), tmp_path / "model.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable fusions
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["Gemm"] == 6 * layers  # q, k, v, proj, fc1, fc2, each with its bias
    assert ops["Gelu"] + ops["BiasGelu"] == layers and ops["Erf"] == 0
    assert ops["LayerNormalization"] + ops["SkipLayerNormalization"] == 2 * layers + 1
    assert ops["ScatterND"] == 0 and ops["Transpose"] <= 6 * layers + 1, ops  # q, k, v, output, 2 RoPE tables
