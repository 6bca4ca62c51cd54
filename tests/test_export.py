"""ONNX export of ViTs (plain and gated MLP) and a ConvNeXt: onnxruntime against torch at several
resolutions and batch sizes from one file, the graph's interface (names, dynamic axes, opset), and the
errors for models that cannot be exported."""

import collections

import pytest
import torch

pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from dinov3kit import AutoModel, DINOv3ViTBackbone, DINOv3ViTConfig, DINOv3ViTModel  # noqa: E402
from dinov3kit.export import (  # noqa: E402
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAMES,
    export_onnx,
    export_pretrained,
    onnx_max_differences,
    onnx_session,
    quantize_onnx,
)
from oracles.convnext_twins import hf_convnext  # noqa: E402
from oracles.hf_twin import save_hf_vit  # noqa: E402
from oracles.random_weights import randomize_  # noqa: E402
from oracles.small_vits import VITS  # noqa: E402

ATOL = 1e-4
#: The acceptance shapes: 224x224, 320x480 and 512x512 at batch 1 and 3; then an input that is not a
#: multiple of the stride (cropped). Each model also gets an image of exactly one stride.
SHAPES = [(b, h, w) for h, w in ((224, 224), (320, 480), (512, 512)) for b in (1, 3)] + [(2, 70, 50)]


@pytest.fixture(scope="module", params=["vit-plain", "vit-gated", "convnext"])
def exported(request, tmp_path_factory):
    """(model, ONNX file). The plain ViT and the ConvNeXt go through `export_pretrained` (the CLI's path:
    transformers checkpoint folder → AutoModel → ONNX → check); the gated ViT is exported from training
    mode (its RoPE jitter must stay out of the graph)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "vit-gated":
        model = randomize_(DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=2, **VITS["gated"]))).train()
        path = export_onnx(model, folder / "model.onnx")
        assert model.training
        return model.eval(), path
    if request.param == "vit-plain":
        save_hf_vit(folder / "hf", num_hidden_layers=2, **VITS["plain"])
    else:
        hf_convnext(hidden_sizes=[16, 32, 48, 64]).save_pretrained(folder / "hf")
    result = export_pretrained(folder / "hf", folder / "out" / "model.onnx")
    assert max(result.max_differences.values()) <= ATOL, result.max_differences
    return AutoModel.from_pretrained(folder / "hf"), result.path


def test_onnxruntime_matches_torch_at_any_size(exported):
    model, path = exported
    stride = model.config.patch_size
    differences = onnx_max_differences(model, path, SHAPES + [(1, stride, stride)])
    assert max(differences.values()) <= ATOL, differences


def test_graph_interface(exported):
    model, path = exported
    graph = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(graph)
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in graph.graph.input] == [(INPUT_NAME, ["batch", 3, "height", "width"])]
    assert [o.name for o in graph.graph.output] == list(OUTPUT_NAMES)
    assert dims(graph.graph.output[1]) == ["batch", model.config.hidden_size]
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == DEFAULT_OPSET
    assert not path.with_name(path.name + ".data").exists()  # small models are one file


def test_int8_graph_keeps_features(exported, tmp_path):
    model, path = exported
    quantized = quantize_onnx(path, tmp_path / "int8.onnx")
    graph = onnx.load(str(quantized)).graph
    floats = {w.name for w in graph.initializer if w.data_type == onnx.TensorProto.FLOAT}
    assert any(node.op_type == "MatMulInteger" for node in graph.node)
    for node in graph.node:  # every linear layer is int8; what is left in float multiplies activations
        assert node.op_type not in ("MatMul", "Gemm") or not floats.intersection(node.input), node.name
    pixel_values = torch.randn(2, 3, 224, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values)
    tokens, pooled = onnx_session(quantized).run(list(OUTPUT_NAMES), {INPUT_NAME: pixel_values.numpy()})
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(torch.from_numpy(pooled), expected.pooler_output).min() >= 0.99
    assert cosine(torch.from_numpy(tokens), expected.last_hidden_state, dim=-1).mean(1).min() >= 0.99


def test_from_opset_23_rope_and_attention_are_onnx_ops(tmp_path):
    model = randomize_(DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=2, **VITS["gated"]))).eval()
    path = export_onnx(model, tmp_path / "model.onnx", opset=23)
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert (ops["RotaryEmbedding"], ops["Attention"], ops["Softmax"]) == (4, 2, 0)
    differences = onnx_max_differences(model, path, SHAPES)
    assert max(differences.values()) <= ATOL, differences


def test_models_that_cannot_be_exported_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"DINOv3ViTBackbone returns feature maps; export the matching \*Model class"):
        export_onnx(DINOv3ViTBackbone(DINOv3ViTConfig(**VITS["plain"], num_hidden_layers=1)), tmp_path / "b.onnx")
    with pytest.raises(TypeError, match="dinov3kit model"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "l.onnx")


def test_quantized_models_are_refused(tmp_path):
    pytest.importorskip("torchao", reason="the quantization extra is not installed")
    from dinov3kit.quantize import quantize

    model = DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=1, **VITS["plain"]))
    with pytest.raises(TypeError, match="quantized"):
        export_onnx(quantize(model, "int8"), tmp_path / "q.onnx")


def test_export_replaces_its_file_atomically_and_never_writes_over_its_source(tmp_path, monkeypatch):
    from dinov3kit.fileio import SameFileError

    model = randomize_(DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=1, **VITS["plain"])))
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("exporter failed")))
        with pytest.raises(RuntimeError, match="exporter failed"):
            export_onnx(model, target)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    model.save_pretrained(tmp_path / "hf")
    for source, destination in ((tmp_path / "hf", tmp_path / "hf" / "model.safetensors"), (tmp_path / "hf" / "config.json", tmp_path / "hf")):
        with pytest.raises(SameFileError, match="refusing to write over the input"):
            export_pretrained(source, destination)


@pytest.mark.slow
def test_external_weights_are_named_after_the_final_graph(tmp_path):
    model = randomize_(DINOv3ViTModel(DINOv3ViTConfig(num_hidden_layers=1, **VITS["plain"])))
    target = tmp_path / "model.onnx"
    export_onnx(model, target, external_data=True)  # written in a staging folder, then renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert max(onnx_max_differences(model, target, [(1, 32, 48)]).values()) <= ATOL
