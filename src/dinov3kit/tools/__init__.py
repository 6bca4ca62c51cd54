"""The Python API behind the `dinov3kit` command: embed image collections, search them, find
near-duplicates, draw dense features, convert and describe checkpoints.

    from dinov3kit.tools import Embedder, embed_images, read_index, search_index
    embed_images(["photos/"], "photos.parquet", model="facebook/dinov3-vits16-pretrain-lvd1689m")
    index = read_index("photos.parquet")
    results = search_index(index, ["query.jpg"], k=5, embedder=Embedder.load(index.meta["model"]))

Names are imported on first use, so that tools without optional dependencies (pca, similarity) work
without pyarrow installed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BadImageError": "embed_common",
    "DuplicateGroup": "dedup",
    "EmbedSummary": "embed_common",
    "Embedder": "runtime",
    "Index": "store",
    "IndexFileError": "store",
    "ModelUnavailableError": "runtime",
    "QueryResult": "search",
    "SourceError": "sources",
    "collect_images": "sources",
    "contact_sheet": "sheet",
    "convert_checkpoint": "checkpoints",
    "dense_map": "dense",
    "describe_model": "checkpoints",
    "embed_images": "embed",
    "find_duplicates": "dedup",
    "load_text_model": "text_models",
    "pca_images": "pca",
    "read_index": "store",
    "search_index": "search",
    "search_text": "text",
    "segment_image": "text",
    "similarity_image": "similarity",
    "zero_shot_classify": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
