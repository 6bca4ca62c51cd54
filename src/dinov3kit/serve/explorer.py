"""What the web app shows, without the web: an index, its model, and the answers the routes send.

`Explorer` holds one index and (at most) one model. Searching, duplicate groups, the 2D map and the
dense views are computed with the tools (`exact_top_k`, `find_duplicates`, `principal_axes`,
`dense_map`, `pca_colors`, `cosine_map`, ...); this module only chooses, caches and serialises. Model
calls go through one lock, so concurrent requests are safe; everything cached is bounded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..images import load_image
from ..tools.dedup import duplicate_components, find_duplicates
from ..tools.dense import DenseMap, dense_map, to_image, upsample
from ..tools.pca import pca_colors, principal_axes
from ..tools.runtime import Embedder, ModelUnavailableError
from ..tools.search import Hit, exact_top_k
from ..tools.similarity import cosine_map, mark, overlay
from ..tools.sources import load_image_file
from ..tools.store import Index, check_same_model, read_index
from .thumbnails import SIZES, ThumbnailCache

MAX_K = 1000
DENSE_MIN, DENSE_MAX = 224, 1024
#: Longest side of a dense view in pixels: a panorama at 1024 px would otherwise be thousands of patches.
DENSE_LONGEST = 2048
#: Dense maps kept in memory (a ViT-L map at 1024 px is about 16 MB).
DENSE_CACHE = 16
#: Lowest duplicate threshold offered: rows in no group at this level are set aside once (they join none above it).
DEDUP_FLOOR = 0.8
MAP_METHODS = ("pca", "umap")


class NotFoundError(LookupError):
    """Something asked for by id (a row, a dense view) does not exist (any more)."""


class UnavailableError(RuntimeError):
    """The server cannot do this now (no model loaded, an optional package missing); the message says why."""


@dataclass
class DenseView:
    """A dense map kept for later clicks, with the resolution it was computed at."""

    id: str
    map: DenseMap
    resolution: int

    def describe(self) -> dict:
        width, height = self.map.size
        rows, cols = self.map.grid
        return {"id": self.id, "width": width, "height": height, "grid": [rows, cols], "resolution": self.resolution,
                "image": f"/api/dense/{self.id}/image.png", "pca": f"/api/dense/{self.id}/pca.png"}


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Explorer:
    """An index and its model, answering the web app's questions.

    `model` is an `Embedder`, a checkpoint (hub id, folder, .pth) or None for the one the index records;
    `load_model=False` defers loading to the first request that needs it. Without weights the index
    can still be searched by row, grouped, mapped and viewed; image uploads answer `UnavailableError`.
    """

    def __init__(
        self,
        index: Index | str | os.PathLike,
        model: Embedder | str | os.PathLike | None = None,
        *,
        feature: str = "cls",
        device: str = "auto",
        dtype: str = "auto",
        thumbnails: ThumbnailCache | None = None,
        load_model: bool = True,
        allow_model_mismatch: bool = False,
    ) -> None:
        self.allow_model_mismatch = allow_model_mismatch
        self.index = index if isinstance(index, Index) else read_index(index, feature)
        if not len(self.index.paths):
            raise ValueError(f"{self.index.path}: the index has no rows")
        self.feature = feature
        self.resolution = int(self.index.meta.get("resolution") or 224)
        self.device, self.dtype = device, dtype
        self.thumbnails = thumbnails if thumbnails is not None else ThumbnailCache()
        self._model_lock = threading.Lock()
        self._dense_lock = threading.Lock()
        self._dedup_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._embedders: dict[int, Embedder] = {}
        self._model_error: str | None = None
        self._model_source = model if not isinstance(model, Embedder) else None
        if isinstance(model, Embedder):
            self._adopt(model)
        elif load_model:
            self.load_model()
        self._dense: OrderedDict[str, DenseView] = OrderedDict()
        self._maps: dict[str, bytes] = {}
        self._candidates: np.ndarray | None = None
        self._groups: OrderedDict[float, list] = OrderedDict()

    # --- the model ---------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.index.paths)

    @property
    def model_name(self) -> str:
        return str(self._model_source or self.index.meta.get("model", "unknown"))

    @property
    def has_model(self) -> bool:
        return bool(self._embedders)

    def load_model(self) -> None:
        """Load the checkpoint now; on failure remember why (uploads then say it) and raise."""
        source = self._model_source or self.index.meta.get("model")
        try:
            embedder = Embedder.load(source, device=self.device, dtype=self.dtype, resolution=self.resolution)
        except (ModelUnavailableError, ValueError, OSError) as error:
            self._model_error = str(error)
            raise
        self._adopt(embedder)

    def _adopt(self, embedder: Embedder) -> None:
        """Use `embedder` once it is known to make vectors comparable with the index's (`check_same_model`)."""
        query = embedder if embedder.resolution == self.resolution else Embedder(embedder.model, embedder.source, self.resolution)
        meta = {"dim": int(self.index.vectors.shape[1]), **self.index.meta}
        check_same_model(self.index.path, meta, query.describe(), allow_mismatch=self.allow_model_mismatch)
        self._model_source = embedder.source
        self._embedders = {embedder.resolution: embedder, self.resolution: query}
        self._model_error = None

    def embedder(self, resolution: int) -> Embedder:
        """The model with the preprocessing of `resolution` (one model shared by all resolutions)."""
        if not self._embedders:
            raise UnavailableError(
                "no model is loaded, so images cannot be embedded (rows of the index can still be searched)"
                + (f": {self._model_error}" if self._model_error else "")
            )
        if resolution not in self._embedders:
            base = next(iter(self._embedders.values()))
            self._embedders[resolution] = Embedder(base.model, base.source, resolution)
        return self._embedders[resolution]

    def _run_model(self, function: Callable, *args):
        with self._model_lock:
            return function(*args)

    # --- rows and thumbnails -----------------------------------------------------------------
    def check_row(self, row: int) -> int:
        if not 0 <= row < self.rows:
            raise NotFoundError(f"row {row} does not exist: the index has rows 0 to {self.rows - 1}")
        return row

    def row_info(self, row: int) -> dict:
        return {"row": self.check_row(row), "path": self.index.paths[row]}

    def thumbnail(self, row: int, size: int) -> bytes:
        path = self.index.paths[self.check_row(row)]
        try:
            return self.thumbnails.get(path, size)
        except FileNotFoundError as error:
            raise NotFoundError(f"row {row}: the image file {path} is gone") from error

    # --- search ------------------------------------------------------------------------------
    def embed_upload(self, data: bytes) -> np.ndarray:
        """The unit feature vector of an uploaded image (checked by `load_image`)."""
        image = load_image(data)
        embedder = self.embedder(self.resolution)
        pixels = embedder.preprocess(image).unsqueeze(0)
        vector = getattr(self._run_model(embedder, pixels), self.feature)[0].cpu().numpy()
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def search(self, vector: np.ndarray, k: int, exclude: int | None = None) -> dict:
        """The `k` best rows for a unit vector, best first (leaving out row `exclude`)."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        start, cpu = time.perf_counter(), time.thread_time()
        wanted = k + (exclude is not None)
        scores, rows = exact_top_k(self.index.vectors, vector[None].astype(np.float32), wanted)
        ranked = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r != exclude][:k]
        hits = [Hit(rank, row, self.index.paths[row], score).__dict__ for rank, (row, score) in enumerate(ranked, 1)]
        return {"k": k, "hits": hits, "search_ms": round((time.perf_counter() - start) * 1000, 3),
                "search_cpu_ms": round((time.thread_time() - cpu) * 1000, 3)}

    def search_row(self, row: int, k: int, exclude_self: bool = False) -> dict:
        result = self.search(self.index.vectors[self.check_row(row)], k, row if exclude_self else None)
        return {"query": {"row": row, "path": self.index.paths[row]}, **result}

    def search_upload(self, data: bytes, k: int, name: str | None = None) -> dict:
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        start = time.perf_counter()
        vector = self.embed_upload(data)
        embed_ms = round((time.perf_counter() - start) * 1000, 3)
        return {"query": {"upload": name or "upload", "embed_ms": embed_ms}, **self.search(vector, k)}

    # --- duplicates --------------------------------------------------------------------------
    def duplicates(self, threshold: float, limit: int = 200) -> dict:
        """Groups at `threshold` (≥ DEDUP_FLOOR), largest first; the first `limit` are listed in full."""
        if not DEDUP_FLOOR <= threshold <= 1.0:
            raise ValueError(f"threshold must be between {DEDUP_FLOOR} and 1, got {threshold}")
        key = round(threshold, 4)
        with self._dedup_lock:
            groups = self._groups.get(key)
            if groups is None:
                groups = self._compute_groups(key)
                self._groups[key] = groups
                while len(self._groups) > 64:
                    self._groups.popitem(last=False)
            else:
                self._groups.move_to_end(key)
        listed = [{"size": len(g["members"]), **g} for g in groups[:limit]]
        return {
            "threshold": key,
            "groups": len(groups),
            "duplicates": sum(len(g["members"]) - 1 for g in groups),
            "listed": listed,
        }

    def _compute_groups(self, threshold: float) -> list[dict]:
        if self._candidates is None:
            components = duplicate_components(self.index.vectors, DEDUP_FLOOR)
            self._candidates = np.array(sorted(row for rows in components for row in rows), dtype=np.int64)
        rows = self._candidates
        if not len(rows):
            return []
        sub = Index(self.index.path, self.index.meta, [self.index.paths[r] for r in rows], self.index.vectors[rows])
        groups = [
            {"members": [{"row": int(rows[m.row]), "path": m.path, "similarity": m.similarity} for m in group.members]}
            for group in find_duplicates(sub, threshold)
        ]
        groups.sort(key=lambda g: (-len(g["members"]), g["members"][0]["row"]))
        return [{"group": number, **g} for number, g in enumerate(groups, 1)]

    # --- the map -----------------------------------------------------------------------------
    def map_methods(self) -> list[str]:
        return ["pca", "umap"] if umap_available() else ["pca"]

    def map_json(self, method: str = "pca") -> bytes:
        """JSON {"method", "rows", "x", "y"} with coordinates scaled to [0, 1], computed once per method."""
        if method not in MAP_METHODS:
            raise ValueError(f"method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
        if method == "umap" and not umap_available():
            raise UnavailableError("the UMAP map needs the optional package umap-learn: pip install umap-learn")
        with self._map_lock:
            if method not in self._maps:
                self._maps[method] = self._compute_map(method)
            return self._maps[method]

    def _compute_map(self, method: str) -> bytes:
        vectors = self.index.vectors
        if method == "umap":
            import umap

            points = umap.UMAP(n_components=2, metric="cosine", random_state=0).fit_transform(vectors)
        elif len(vectors) < 2:
            points = np.zeros((len(vectors), 2))
        else:
            features = torch.from_numpy(vectors)
            mean, axes = principal_axes(features, min(2, vectors.shape[1]))
            points = ((features - mean) @ axes).numpy()
        low, high = points.min(axis=0), points.max(axis=0)
        scaled = (points - low) / np.maximum(high - low, 1e-12)
        x, y = (np.round(scaled[:, i], 5).tolist() for i in range(2))
        return json.dumps({"method": method, "rows": len(x), "x": x, "y": y}, separators=(",", ":")).encode()

    # --- dense views -------------------------------------------------------------------------
    def dense_view(self, *, row: int | None = None, data: bytes | None = None, resolution: int = 448) -> DenseView:
        """Patch features of an index row or an uploaded image at `resolution` (shortest side), kept for clicks."""
        if (row is None) == (data is None):
            raise ValueError("give either an image file or a row id, not both or neither")
        if not DENSE_MIN <= resolution <= DENSE_MAX:
            raise ValueError(f"resolution must be between {DENSE_MIN} and {DENSE_MAX} pixels, got {resolution}")
        if row is not None:
            self.check_row(row)
            key = f"r{row}-{resolution}"
        else:
            key = f"u{hashlib.sha256(data).hexdigest()[:20]}-{resolution}"
        with self._dense_lock:
            if key in self._dense:
                self._dense.move_to_end(key)
                return self._dense[key]
        image = load_image_file(self.index.paths[row]) if row is not None else load_image(data)
        used = dense_resolution(image.size, resolution)
        embedder = self.embedder(used)
        view = DenseView(key, self._run_model(dense_map, embedder, image), used)
        with self._dense_lock:
            self._dense[key] = view
            while len(self._dense) > DENSE_CACHE:
                self._dense.popitem(last=False)
        return view

    def get_dense(self, view_id: str) -> DenseView:
        with self._dense_lock:
            view = self._dense.get(view_id)
        if view is None:
            raise NotFoundError(f"dense view {view_id!r} is not (or no longer) in memory; open the image again")
        return view

    def dense_image_png(self, view_id: str) -> bytes:
        return png_bytes(self.get_dense(view_id).map.resized_image())

    def dense_pca_png(self, view_id: str) -> bytes:
        view = self.get_dense(view_id)
        (colors,) = pca_colors([view.map])
        return png_bytes(to_image(upsample(colors, view.map.size)))

    def similarity_png(self, view_id: str, x: float, y: float, target_id: str | None = None) -> tuple[bytes, dict]:
        """Heat map of the patch at (x, y) (fractions of the width and height) over the view itself or
        over `target_id`, and what it shows (patch, similarity range)."""
        if not (0 <= x < 1 and 0 <= y < 1):
            raise ValueError(f"x and y are fractions of the image's width and height in [0, 1), got {x}, {y}")
        source = self.get_dense(view_id).map
        target = self.get_dense(target_id).map if target_id else source
        row, col = source.cell_of(x * source.image.width, y * source.image.height)
        similarity = cosine_map(source.features[row, col], target)
        picture = overlay(target, similarity)
        if target is source:
            picture = mark(picture, x * source.size[0], y * source.size[1])
        info = {"patch": [row, col], "min": float(similarity.min()), "max": float(similarity.max())}
        return png_bytes(picture), info

    # --- summary -----------------------------------------------------------------------------
    def info(self) -> dict:
        return {
            "index": str(self.index.path),
            "rows": self.rows,
            "dim": int(self.index.vectors.shape[1]),
            "feature": self.feature,
            "model": self.model_name,
            "model_loaded": self.has_model,
            "model_error": self._model_error,
            "resolution": self.resolution,
            "bad_inputs": len(self.index.errors),
            "map_methods": self.map_methods(),
            "max_k": MAX_K,
            "dense_resolution": [DENSE_MIN, DENSE_MAX],
            "dedup_floor": DEDUP_FLOOR,
            "thumbnail_sizes": list(SIZES),
        }


def dense_resolution(size: tuple[int, int], requested: int) -> int:
    """The shortest side to use so that the longest stays within DENSE_LONGEST (whole 16 px steps)."""
    short, long = min(size), max(size)
    fitting = int(DENSE_LONGEST * short / long) // 16 * 16
    return max(16, min(requested, fitting))
