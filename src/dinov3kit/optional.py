"""Optional packages, imported when first needed, with an error that names the package and the extra of
dinov3kit that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Top-level module → (its package on PyPI, the extra of dinov3kit that installs it).
PACKAGES: dict[str, tuple[str, str]] = {
    "pyarrow": ("pyarrow", "tools"),
    "tqdm": ("tqdm", "tools"),
    "faiss": ("faiss-cpu", "faiss"),
    "ray": ("ray", "ray"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "torchao": ("torchao", "quantization"),
    "fastapi": ("fastapi", "web"),
    "uvicorn": ("uvicorn", "web"),
    "python_multipart": ("python-multipart", "web"),
    "ftfy": ("ftfy", "text"),
    "regex": ("regex", "text"),
}


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message says which extra installs it."""


def require(module: str, purpose: str = "this", *, note: str = "") -> ModuleType:
    """Import `module` (one of `PACKAGES`, or a submodule), or raise `MissingDependencyError` saying that
    `purpose` needs its package and how to install it (`note` is appended to the advice)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package, extra = PACKAGES[module.split(".")[0]]
        raise MissingDependencyError(
            f"{purpose} needs the optional package {package!r}; install it with: pip install 'dinov3kit[{extra}]'{note}"
        ) from error
