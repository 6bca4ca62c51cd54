"""`dinov3kit serve`: a local web app over an index and its model (the optional extra `dinov3kit[web]`).

    from dinov3kit.serve import create_app
    app = create_app("photos.parquet")        # a FastAPI app: uvicorn.run(app), or TestClient(app)

The page (search by upload or by click, duplicate groups, a 2D map, dense PCA and patch similarity)
lives in `static/` and needs no build step and no network; the JSON API is documented at /docs.
"""

from __future__ import annotations

import importlib

#: Module → the package that provides it.
WEB_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require_web() -> None:
    """Raise an ImportError naming the extra to install when a web package is missing."""
    for module, package in WEB_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ImportError(
                f"`dinov3kit serve` needs the optional package {package!r}; install it with: pip install 'dinov3kit[web]'"
            ) from error


def __getattr__(name: str):
    if name == "create_app":
        require_web()
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app", "require_web"]
