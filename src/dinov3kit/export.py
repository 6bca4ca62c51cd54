"""ONNX export of DINOv3 models (ViT and ConvNeXt) for any batch size and resolution.

The graph has one input, `pixel_values` [batch, channels, height, width] (float32, all three sizes
dynamic), and two outputs, `last_hidden_state` [batch, tokens, dim] and `pooler_output` [batch, dim].
Everything that depends on the input size (the ViT's RoPE tables, token counts, pooling) is computed
inside the graph, so one file serves every resolution. A float32 ViT is traced through
`export_graph.ExportedViT`, the same function in the ops onnxruntime fuses (about torch's speed on CPUs).
Needs the `onnx` extra: `pip install 'dinov3kit[onnx]'` (onnx, onnxscript for torch's exporter,
onnxruntime to check the result).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .auto import AutoModel
from .export_graph import ONNX_ATTENTION_OPSET, ExportedViT
from .fileio import atomic_write, input_files, refuse_overwriting_sources
from .models.vit import DINOv3ViTModel
from .optional import require
from .quantize import is_quantized, suppressed_log_messages

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("last_hidden_state", "pooler_output")
DEFAULT_OPSET = 18
#: Weights beyond this size go to a `<file>.data` file beside the graph (protobuf files stop at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
#: The ONNX ops `quantize_onnx` gives int8 weights.
QUANTIZED_OPS = ("Gemm", "MatMul")
#: (batch, height, width) at which `export_pretrained` compares onnxruntime with torch by default.
CHECK_SHAPES = ((1, 224, 224), (2, 320, 480))


class FeatureGraph(nn.Module):
    """A model as a function of `pixel_values` alone, returning (last_hidden_state, pooler_output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(pixel_values)
        return output.last_hidden_state, output.pooler_output


def traced_module(model: nn.Module, opset: int = DEFAULT_OPSET) -> nn.Module:
    """What `export_onnx` traces: for a float32 `DINOv3ViTModel`, `ExportedViT` (the same function in the ops
    onnxruntime runs fast; from opset 23 on with ONNX's RotaryEmbedding and Attention ops), otherwise
    `FeatureGraph`. Call it with the model in eval mode."""
    if type(model) is DINOv3ViTModel and model.dtype == torch.float32:
        return ExportedViT(model, onnx_ops=opset >= ONNX_ATTENTION_OPSET).eval()
    return FeatureGraph(model)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    verbose: bool = False,
) -> Path:
    """Write `model` (a `DINOv3ViTModel` or `DINOv3ConvNextModel`) to an ONNX file and return its path.

    The model is exported in its own dtype (float32 is what onnxruntime runs on every CPU) and in eval
    mode (its mode is restored afterwards). The input is float32, cast inside the graph if need be. `external_data`: store the weights in `<path>.data`; by
    default only for models past 1 GiB. `verbose`: print the exporter's progress. The files are written
    in a folder beside `path` and renamed into place, so a failed export leaves what was there.
    """
    _check_exportable(model)
    for module in ("onnx", "onnxscript"):
        require(module, "ONNX export")
    path = Path(path)
    with atomic_write(path) as temporary, tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        _export_graph(model, staged, opset=opset, external_data=external_data, verbose=verbose)
        for companion in Path(staging).iterdir():  # external weights, named after the graph
            if companion != staged:
                os.replace(companion, path.parent / companion.name)
        os.replace(staged, temporary)
    return path


def _export_graph(model: nn.Module, path: Path, *, opset: int, external_data: bool | None, verbose: bool) -> None:
    """`torch.onnx.export` of `FeatureGraph(model)` to `path` with every input size dynamic."""
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    stride = model.config.patch_size
    sizes = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=stride),
        3: torch.export.Dim("width", min=stride),
    }
    example = torch.randn(2, model.config.num_channels, 2 * stride, 3 * stride, generator=torch.Generator().manual_seed(0))
    with eval_mode(model), torch.no_grad():
        torch.onnx.export(
            traced_module(model, opset),
            (example.to(model.device),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: sizes},
            opset_version=opset,
            dynamo=True,
            external_data=external_data,
            verbose=verbose,
        )


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run a block with `model` in eval mode (no RoPE augmentation, no dropout), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_exportable(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "patch_size") or not hasattr(model, "encode"):
        raise TypeError(f"export_onnx takes a dinov3kit model (DINOv3ViTModel, DINOv3ConvNextModel), got {type(model).__name__}")
    if "Backbone" in type(model).__name__:
        raise TypeError(
            f"{type(model).__name__} returns feature maps; export the matching *Model class, whose outputs are "
            f"{' and '.join(OUTPUT_NAMES)}"
        )
    if is_quantized(model):
        raise TypeError("a torchao-quantized model cannot be exported to ONNX; export the full-precision model")


def quantize_onnx(path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write an int8 copy of an exported graph: int8 weights (one scale per output channel) for every
    linear layer (Gemm / MatMul with a weight), activations quantized on the fly by onnxruntime (its VNNI /
    AMX-INT8 kernels make this the fast int8 path on x86 CPUs). Convolutions (the patch embedding, ConvNeXt)
    and the matmuls between activations (attention) stay in float32."""
    quantization = require("onnxruntime.quantization", "ONNX quantization")
    output = Path(output)

    with suppressed_log_messages("", "pre-processing before quantization"):  # advice our graphs do not need
        with atomic_write(output, sources=[path]) as temporary:
            quantization.quantize_dynamic(
                str(path),
                str(temporary),
                weight_type=quantization.QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(QUANTIZED_OPS),
            )
    return output


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported file."""
    ort = require("onnxruntime", "checking an ONNX export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_max_differences(
    model: nn.Module,
    path: str | os.PathLike,
    shapes: Iterable[tuple[int, int, int]] = CHECK_SHAPES,
    *,
    seed: int = 0,
) -> dict[tuple[int, int, int], float]:
    """Max |onnxruntime - torch| over both outputs, for random inputs of each (batch, height, width)."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(seed)
    differences = {}
    for batch, height, width in shapes:
        pixel_values = torch.randn(batch, model.config.num_channels, height, width, generator=generator)
        with eval_mode(model), torch.no_grad():
            expected = FeatureGraph(model)(pixel_values.to(model.device))
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixel_values.numpy()})
        differences[batch, height, width] = max(
            (torch.from_numpy(g) - e.float().cpu()).abs().max().item() for g, e in zip(got, expected)
        )
    return differences


@dataclass(frozen=True)
class ExportResult:
    path: Path
    #: Max |onnxruntime - torch| per checked (batch, height, width); empty when not checked.
    max_differences: dict[tuple[int, int, int], float]


def export_pretrained(
    source: str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    verbose: bool = False,
) -> ExportResult:
    """`dinov3kit export`: load a checkpoint (hub id, transformers folder or Meta `.pth`; ViT or ConvNeXt)
    in float32, write it to ONNX, and with `check` compare onnxruntime against torch at `CHECK_SHAPES`."""
    refuse_overwriting_sources(path, input_files(source))
    model = AutoModel.from_pretrained(source, dtype=torch.float32)
    written = export_onnx(model, path, opset=opset, verbose=verbose)
    differences = onnx_max_differences(model, written, CHECK_SHAPES) if check else {}
    return ExportResult(written, differences)
