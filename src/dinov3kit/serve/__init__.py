"""`dinov3kit serve`: a local web app over an index and its model (the optional extra `dinov3kit[web]`).

    from dinov3kit.serve import create_app
    app = create_app("photos.parquet")        # a FastAPI app: uvicorn.run(app), or TestClient(app)

The page (search by upload or by click, duplicate groups, a 2D map, dense PCA and patch similarity)
lives in `static/` and needs no build step and no network; the JSON API is documented at /docs.
"""

from __future__ import annotations

from ..optional import require

#: The modules of the web extra.
WEB_MODULES = ("fastapi", "uvicorn", "python_multipart")


def require_web() -> None:
    """Raise an ImportError naming the package and the extra to install when a web package is missing."""
    for module in WEB_MODULES:
        require(module, "`dinov3kit serve`")


def __getattr__(name: str):
    if name == "create_app":
        require_web()
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app", "require_web"]
