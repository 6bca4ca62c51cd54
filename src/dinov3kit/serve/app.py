"""The FastAPI application: the JSON API (documented at /docs) and the page that uses it.

Images leave the server only by index row id (thumbnails) or as pictures computed from an upload or a
row (dense views); no route takes a file path from the client.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, Path, Query, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from ..tools.runtime import Embedder
from ..tools.store import Index
from . import schemas
from .docs import render_docs
from .explorer import DEDUP_FLOOR, DENSE_MAX, DENSE_MIN, MAX_K, Explorer
from .guards import FORM_OVERHEAD, BodyLimit, HostCheck, ServerTiming, install_error_handlers, read_upload
from .thumbnails import SIZES, ThumbnailCache

DEFAULT_MAX_UPLOAD = 20 * 2**20
#: The page is self-contained: scripts, styles and images only from this server (plus blob: previews).
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; object-src 'none'"
STATIC = resources.files("dinov3kit.serve") / "static"

Row = Annotated[int, Path(ge=0, description="row id of the index (0-based)")]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"number of results (1 to {MAX_K})")]
VIEW_ID = r"^[ru][0-9a-f]+-\d+$"
ViewId = Annotated[str, Path(pattern=VIEW_ID, description="id from POST /api/dense")]


def create_app(
    index: Index | str | os.PathLike | Explorer,
    model: Embedder | str | os.PathLike | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    thumbnail_dir: str | os.PathLike | None = None,
    thumbnail_cache_bytes: int | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
    load_model: bool = True,
) -> FastAPI:
    """The web app for `index` (an `Index`, an index path, or a ready `Explorer`) and `model` (an
    `Embedder`, a checkpoint, or None for the one the index records).

    `allowed_hosts` restricts the Host header (the CLI passes `LOOPBACK_NAMES` when bound to loopback,
    which stops DNS-rebinding pages from reading the API); None accepts any.
    """
    if isinstance(index, Explorer):
        explorer = index
    else:
        cache = ThumbnailCache(thumbnail_dir, **({"max_bytes": thumbnail_cache_bytes} if thumbnail_cache_bytes is not None else {}))
        explorer = Explorer(index, model, thumbnails=cache, load_model=load_model)
    app = FastAPI(
        title="dinov3kit",
        summary="Search an image collection, group its duplicates, map it and look at DINOv3 patch features.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.state.explorer = explorer
    app.state.max_upload_bytes = max_upload_bytes
    install_error_handlers(app)
    app.include_router(_api_routes(explorer, max_upload_bytes))
    _add_pages(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD)
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=allowed_hosts)
    app.add_middleware(ServerTiming)
    return app


def _png(data: bytes, **headers: str) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store", **headers})


def _picture(content_type: str) -> dict:
    """Route options of an answer that is a picture, not JSON (for the documentation)."""
    return {"response_class": Response, "responses": {**schemas.ERRORS, 200: {"content": {content_type: {}}}}}


def _add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))


def _api_routes(explorer: Explorer, max_upload: int) -> APIRouter:
    api = APIRouter(prefix="/api", responses=schemas.ERRORS)

    @api.get("/info", tags=["index"], summary="What is served: index, rows, model, limits")
    def info() -> schemas.Info:
        return schemas.Info(**explorer.info(), max_upload_bytes=max_upload)

    @api.get("/rows/{row}", tags=["index"], summary="The path of an index row")
    def row_info(row: Row) -> schemas.RowInfo:
        return schemas.RowInfo(**explorer.row_info(row))

    @api.get("/thumbnails/{row}", tags=["index"], summary="JPEG thumbnail of an index row (from the disk cache)", **_picture("image/jpeg"))
    def thumbnail(row: Row, size: Annotated[int, Query(description=f"longest side: one of {SIZES}")] = 256) -> Response:
        return Response(explorer.thumbnail(row, size), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    @api.get("/search", tags=["search"], summary="Nearest rows of an index row")
    def search_row(
        row: Annotated[int, Query(ge=0, description="row id whose image is the query")],
        k: K = 50,
        exclude_self: Annotated[bool, Query(description="leave the query row out of the results")] = False,
    ) -> schemas.SearchResult:
        return schemas.SearchResult(**explorer.search_row(row, k, exclude_self))

    @api.post("/search", tags=["search"], summary="Nearest rows of an uploaded image")
    def search_upload(
        file: Annotated[UploadFile, File(description="an image file (at most the upload limit: GET /api/info, 20 MB by default)")],
        k: Annotated[int, Form(ge=1, le=MAX_K, description=f"number of results (1 to {MAX_K})")] = 50,
    ) -> schemas.SearchResult:
        return schemas.SearchResult(**explorer.search_upload(read_upload(file, max_upload), k, file.filename))

    @api.get("/duplicates", tags=["duplicates"], summary="Groups of near-duplicates, largest first")
    def duplicates(
        threshold: Annotated[float, Query(ge=DEDUP_FLOOR, le=1.0, description="cosine similarity joining two images")] = 0.95,
        limit: Annotated[int, Query(ge=0, le=10000, description="groups listed in full")] = 200,
    ) -> schemas.Duplicates:
        return schemas.Duplicates(**explorer.duplicates(threshold, limit))

    @api.get(
        "/map",
        tags=["map"],
        summary="2D coordinates of every row in [0, 1] (PCA of the features, or UMAP)",
        response_class=Response,
        responses={200: {"model": schemas.MapPoints}},
    )
    def map_points(method: Annotated[str, Query(description="pca, or umap when umap-learn is installed")] = "pca") -> Response:
        return Response(explorer.map_json(method), media_type="application/json")

    @api.post("/dense", tags=["dense"], summary="Patch features of an upload or a row, kept for clicks")
    def dense(
        file: Annotated[UploadFile | None, File(description="an image file (or give row)")] = None,
        row: Annotated[int | None, Form(ge=0, description="an index row (or give file)")] = None,
        resolution: Annotated[int, Form(ge=DENSE_MIN, le=DENSE_MAX, description="shortest side in pixels")] = 448,
    ) -> schemas.DenseView:
        data = read_upload(file, max_upload) if file is not None else None
        return schemas.DenseView(**explorer.dense_view(row=row, data=data, resolution=resolution).describe())

    @api.get("/dense/{view}/image.png", tags=["dense"], summary="The image at the model's input size", **_picture("image/png"))
    def dense_image(view: ViewId) -> Response:
        return _png(explorer.dense_image_png(view))

    @api.get("/dense/{view}/pca.png", tags=["dense"], summary="First three principal components of the patches as RGB", **_picture("image/png"))
    def dense_pca(view: ViewId) -> Response:
        return _png(explorer.dense_pca_png(view))

    @api.get("/dense/{view}/similarity.png", tags=["dense"], summary="Cosine similarity of one patch to every patch (heat map)", **_picture("image/png"))
    def dense_similarity(
        view: ViewId,
        x: Annotated[float, Query(ge=0, lt=1, description="the patch's point, as a fraction of the width")],
        y: Annotated[float, Query(ge=0, lt=1, description="the patch's point, as a fraction of the height")],
        target: Annotated[str | None, Query(pattern=VIEW_ID, description="draw over this other view (default: the same image)")] = None,
    ) -> Response:
        data, shown = explorer.similarity_png(view, x, y, target)
        return _png(data, **{"X-Patch": f"{shown['patch'][0]},{shown['patch'][1]}",
                             "X-Similarity-Range": f"{shown['min']:.4f},{shown['max']:.4f}"})

    return api
