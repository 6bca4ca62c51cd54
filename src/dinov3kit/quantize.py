"""Weight quantization of dinov3kit models with torchao (an optional extra: `pip install 'dinov3kit[quantization]'`).

`quantize(model, "int8")` picks a torchao config that runs on the model's device; `quantize(model, config)`
applies any torchao config (or a transformers `TorchAoConfig`, whose `quant_type` is used), which is what
`from_pretrained(..., quantization_config=...)` does after loading. Only `nn.Linear` layers are quantized
(attention and MLP projections); patch embeddings, norms, tokens and convolutions keep their dtype.

Schemes:
    "int8"          int8 weights, per-channel scales; activations stay in the model's dtype (any device).
    "int8-dynamic"  int8 weights and per-token int8 activations quantized on the fly (any device).
    "int4"          int4 weights with a scale and zero point per `group_size` input channels. CUDA (compute
                    capability >= 8.0) with bf16 weights: tinygemm packed int4 kernels; elsewhere: int4
                    values stored one per byte and dequantized at each matmul (int4 accuracy, int8 storage).
    "fp8"           float8 e4m3 weights and dynamic activations: NVIDIA GPUs of compute capability >= 8.9 only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .optional import require

SCHEMES = ("int8", "int8-dynamic", "int4", "fp8")
DEFAULT_INT4_GROUP_SIZE = 128


class QuantizationError(RuntimeError):
    """A quantization scheme or config that cannot be applied to this model on its device."""


def require_torchao():
    """The `torchao.quantization` module, or an error saying how to install it."""
    # torchao 0.18 registers enums that torch 2.14 warns about (a deprecation that is not the user's)
    with suppressed_log_messages("torch.utils._pytree", "is an Enum subclass and is now natively supported"):
        return require("torchao.quantization", "quantization", note=" (torchao 0.18 for torch 2.14)")


@contextlib.contextmanager
def suppressed_log_messages(logger_name: str, *fragments: str):
    """Inside the block, drop the records of logger `logger_name` ("" for the root logger) whose message
    contains one of `fragments`. Only those: levels, handlers and every other message are left as they are."""

    class DropMatching(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            return not any(fragment in message for fragment in fragments)

    logger = logging.getLogger(logger_name or None)
    drop = DropMatching()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for any other device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def scheme_config(
    scheme: str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    *,
    group_size: int = DEFAULT_INT4_GROUP_SIZE,
):
    """The torchao config that implements `scheme` for weights of `dtype` on `device`."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose from {list(SCHEMES)} or pass a torchao config")
    ao = require_torchao()
    device = torch.device(device)
    capability = cuda_capability(device)
    if scheme == "int8":
        return ao.Int8WeightOnlyConfig(set_inductor_config=False)
    if scheme == "int8-dynamic":
        return ao.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if scheme == "int4":
        if capability is not None and capability >= (8, 0) and dtype == torch.bfloat16:
            return ao.Int4WeightOnlyConfig(
                group_size=group_size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
            )
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_primitives import MappingType

        return ao.IntxWeightOnlyConfig(  # asymmetric like tinygemm: all 16 levels serve each group's range
            weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=MappingType.ASYMMETRIC
        )
    if capability is None or capability < (8, 9):
        where = f"CUDA compute capability {capability[0]}.{capability[1]}" if capability else f"device {device}"
        raise QuantizationError(
            f"'fp8' needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell), but the model "
            f"is on {where}. Use 'int8' or 'int4' here, or pass torchao's Float8WeightOnlyConfig() to store fp8 "
            "weights without fp8 matmuls."
        )
    return ao.Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False)


def quantize(
    model: nn.Module,
    scheme: Any,
    *,
    group_size: int = DEFAULT_INT4_GROUP_SIZE,
    modules_to_not_convert: Iterable[str] = (),
) -> nn.Module:
    """Quantize the `nn.Linear` weights of `model` in place and return it.

    `scheme`: one of `SCHEMES`, a torchao config (e.g. `Int4WeightOnlyConfig(group_size=128)`), or a
    transformers `TorchAoConfig`. `group_size` applies to "int4"; `modules_to_not_convert` names modules
    (or their parents, e.g. "blocks.0") to keep in full precision. Layers whose input width is not a
    multiple of the int4 group size are kept too. Quantize after moving the model to its device and dtype.
    """
    if is_quantized(model):
        raise QuantizationError(
            f"the model is already quantized ({getattr(model, 'quantization_scheme', 'torchao')}); quantize a "
            "full-precision model"
        )
    config, skipped = _torchao_config(model, scheme, group_size)
    skipped = tuple(skipped) + tuple(modules_to_not_convert)
    group = group_size if scheme == "int4" else None
    ao = require_torchao()
    device = _weights_device(model)
    try:
        ao.quantize_(model, config, filter_fn=_linear_filter(skipped, group))
    except (AssertionError, NotImplementedError, ImportError, RuntimeError) as error:
        raise QuantizationError(
            f"torchao could not apply {type(config).__name__} to a model on {device} "
            f"({str(error).strip() or type(error).__name__}). Pick a scheme this device supports, e.g. 'int8'."
        ) from error
    model.quantization_scheme = scheme if isinstance(scheme, str) else type(config).__name__
    return model


def _torchao_config(model: nn.Module, scheme: Any, group_size: int) -> tuple[Any, tuple[str, ...]]:
    """(torchao config, module names to skip) from a scheme name, a torchao config or a TorchAoConfig."""
    if isinstance(scheme, str):
        return scheme_config(scheme, _weights_device(model), _weights_dtype(model), group_size=group_size), ()
    require_torchao()
    from torchao.core.config import AOBaseConfig

    if isinstance(scheme, AOBaseConfig):
        return scheme, ()
    quant_type = getattr(scheme, "quant_type", None)  # transformers' TorchAoConfig
    if isinstance(quant_type, AOBaseConfig):
        return quant_type, tuple(getattr(scheme, "modules_to_not_convert", None) or ())
    raise TypeError(
        f"quantization config must be one of {list(SCHEMES)}, a torchao config (e.g. Int8WeightOnlyConfig()) or a "
        f"transformers TorchAoConfig, got {type(scheme).__name__}"
    )


def _linear_filter(skipped: tuple[str, ...], group_size: int | None) -> Callable[[nn.Module, str], bool]:
    def keep_in_precision(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skipped)

    def select(module: nn.Module, name: str) -> bool:
        if not isinstance(module, nn.Linear) or keep_in_precision(name):
            return False
        return group_size is None or module.in_features % group_size == 0

    return select


def _weights_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _weights_dtype(model: nn.Module) -> torch.dtype:
    linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return linear.weight.dtype if linear is not None else next(model.parameters()).dtype


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes held by a tensor, counting the inner tensors of quantized tensor subclasses (data, scales, ...)."""
    if type(tensor) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_nbytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weights_nbytes(model: nn.Module) -> int:
    """Memory footprint of a model's parameters and buffers, quantized or not."""
    return sum(tensor_nbytes(t) for t in (*model.parameters(), *model.buffers()))


def is_quantized(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a quantized tensor subclass."""
    return any(type(p) not in (torch.Tensor, nn.Parameter) for p in model.parameters())
