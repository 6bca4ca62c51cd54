"""Optional dependencies of the tools, imported with an error that says which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Module → the pip extra of dinov3kit that provides it.
EXTRAS = {"pyarrow": "tools", "tqdm": "tools", "faiss": "faiss", "ray": "ray"}


class MissingDependencyError(ImportError):
    """An optional package that a tool needs is not installed."""


def require(module: str) -> ModuleType:
    """Import `module`, or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "tools")
        raise MissingDependencyError(
            f"this needs the optional package {top!r}; install it with: pip install 'dinov3kit[{extra}]'"
        ) from error
