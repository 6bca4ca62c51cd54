"""`search`: nearest neighbours in an index by cosine similarity, exact (torch) or through FAISS."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..optional import require
from .runtime import Embedder
from .sources import load_image_file
from .store import Index, check_same_model

#: Index rows scored at once by the exact search (bounds memory for large indexes).
BLOCK_ROWS = 65536


@dataclass
class Hit:
    rank: int
    row: int
    path: str
    score: float


@dataclass
class QueryResult:
    """A query (an image file, or a row of the index with `row` set), its image and its neighbours, best first."""

    query: str
    image: str
    row: int | None
    hits: list[Hit]

    def to_dict(self) -> dict:
        return {"query": self.query, "image": self.image, "row": self.row, "hits": [hit.__dict__ for hit in self.hits]}


def parse_queries(queries: Sequence[str], index: Index) -> list[str | int]:
    """Each query as an image path (an existing file) or a row id of the index (an integer)."""
    parsed: list[str | int] = []
    for query in queries:
        if os.path.isfile(query):
            parsed.append(os.path.abspath(query))
        elif query.strip().lstrip("+-").isdigit():
            row = int(query)
            if not 0 <= row < len(index.paths):
                rows = f"row ids are 0..{len(index.paths) - 1}" if index.paths else "the index has no rows"
                raise ValueError(f"row {row} is out of range: {rows}")
            parsed.append(row)
        else:
            raise ValueError(f"{query}: neither an image file nor a row id of the index")
    return parsed


def query_vectors(
    queries: Sequence[str | int],
    index: Index,
    embedder: Embedder | None,
    feature: str,
    batch_size: int = 32,
    *,
    allow_model_mismatch: bool = False,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Unit-length vectors of the queries: rows are read from the index, images embedded with its model
    (another model is refused unless `allow_model_mismatch`, another width always is)."""
    vectors = np.zeros((len(queries), index.vectors.shape[1]), dtype=np.float32)
    images = [(i, q) for i, q in enumerate(queries) if isinstance(q, str)]
    for i, q in enumerate(queries):
        if isinstance(q, int):
            vectors[i] = index.vectors[q]
    if images and embedder is None:
        raise ValueError("image queries need a model to embed them")
    if images:
        meta = {"dim": index.vectors.shape[1], **index.meta}
        check_same_model(index.path, meta, embedder.describe(), allow_mismatch=allow_model_mismatch)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pixels = torch.stack([embedder.preprocess(load_image_file(path, max_bytes)) for _, path in batch])
        features = getattr(embedder(pixels), feature).cpu().numpy()
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        for (i, _), vector in zip(batch, features):
            vectors[i] = vector
    return vectors


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and rows of the `k` best cosine similarities per query, best first (unit vectors in)."""
    k = min(k, len(vectors))
    index = torch.from_numpy(vectors)
    query = torch.from_numpy(queries)
    best_scores = torch.full((len(queries), 0), -2.0)
    best_rows = torch.zeros((len(queries), 0), dtype=torch.long)
    for start in range(0, len(vectors), BLOCK_ROWS):
        scores = query @ index[start : start + BLOCK_ROWS].T
        scores, rows = scores.topk(min(k, scores.shape[1]), dim=1)  # k candidates per block, then merge
        merged_scores, merged_rows = torch.cat([best_scores, scores], 1), torch.cat([best_rows, rows + start], 1)
        best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
        best_rows = merged_rows.gather(1, order)
    return best_scores.numpy(), best_rows.numpy()


def faiss_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same result through FAISS (inner product on unit vectors = cosine), for very large indexes."""
    faiss = require("faiss")
    search_index = faiss.IndexFlatIP(vectors.shape[1])
    search_index.add(np.ascontiguousarray(vectors))
    scores, rows = search_index.search(np.ascontiguousarray(queries), min(k, len(vectors)))
    return scores, rows


def search_index(
    index: Index,
    queries: Sequence[str],
    *,
    k: int = 10,
    embedder: Embedder | None = None,
    feature: str = "cls",
    backend: str = "torch",
    exclude_self: bool = False,
    batch_size: int = 32,
    allow_model_mismatch: bool = False,
    max_bytes: int | None = None,
) -> list[QueryResult]:
    """The `k` nearest rows of `index` for each query (an image path or a row id 0..N-1), best first.

    `exclude_self` leaves a row-id query out of its own results. Image queries are embedded by
    `embedder`, which must be the index's model unless `allow_model_mismatch` (see `check_same_model`).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if backend not in ("torch", "faiss"):
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    parsed = parse_queries(queries, index)
    wanted = k + (1 if exclude_self else 0)
    top_k = faiss_top_k if backend == "faiss" else exact_top_k
    if not index.paths:
        raise ValueError(f"{index.path}: the index has no rows to search")
    vectors = query_vectors(parsed, index, embedder, feature, batch_size, allow_model_mismatch=allow_model_mismatch, max_bytes=max_bytes)
    scores, rows = top_k(index.vectors, vectors, wanted)
    results = []
    for given, query, query_scores, query_rows in zip(queries, parsed, scores, rows):
        hits = [(int(r), float(s)) for r, s in zip(query_rows, query_scores) if not (exclude_self and r == query)]
        row = query if isinstance(query, int) else None
        image = index.paths[query] if row is not None else query
        ranked = [Hit(rank + 1, r, index.paths[r], s) for rank, (r, s) in enumerate(hits[:k])]
        results.append(QueryResult(given, image, row, ranked))
    return results
