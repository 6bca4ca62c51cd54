"""`embed`: images → Parquet index, with decoding in parallel workers overlapped with inference.

Workers read, hash, decode and preprocess images (a torch DataLoader keeps `prefetch` batches ready),
while the main process runs the model and commits rows in chunks (see `store`). A bad image becomes
an error record, not a crash, unless `strict`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..fileio import OutputLock, refuse_overwriting_sources
from ..optional import require
from .embed_common import COMMIT_INTERVAL_S, BadImageError, BadInput, EmbedSummary, decode_item
from .inputs import Item, collect_items, extra_columns, with_extra_columns
from .runtime import DEFAULT_RESOLUTION, Embedder, feature_dim, model_source
from .store import IndexWriter, index_schema, read_meta, rows_table


@dataclass
class _Item:
    """One decoded image, or the reason it could not be decoded."""

    path: str
    pixels: torch.Tensor | None = None
    width: int = 0
    height: int = 0
    sha256: str = ""
    error: str | None = None
    extra: tuple = ()


class _ImageFiles(Dataset):
    """Reads, hashes, decodes and preprocesses one image per item (runs in DataLoader workers)."""

    def __init__(self, items: Sequence[Item], embedder: Embedder, max_bytes: int | None = None) -> None:
        self.items, self.processor, self.max_bytes = list(items), embedder.processor, max_bytes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Item:
        item = self.items[index]
        try:
            pixels, width, height, sha256 = decode_item(item, self.processor, self.max_bytes)
        except BadInput as error:
            return _Item(item.key, error=str(error), extra=item.extra)
        return _Item(item.key, pixels, width, height, sha256, extra=item.extra)


def _collate(items: list[_Item]) -> tuple[list[_Item], torch.Tensor | None]:
    good = [item for item in items if item.error is None]
    return items, torch.stack([item.pixels for item in good]) if good else None


def _decoding_worker(_: int) -> None:
    """Decoding workers use one thread each and yield the CPU to the model's threads, whose parallel
    sections would otherwise wait for a thread the worker displaced."""
    torch.set_num_threads(1)
    os.nice(10)


def default_workers(device: torch.device) -> int:
    """Decoding workers: on a GPU as many as there are cores (up to 8); on the CPU, which also runs the
    model, one per two cores, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else max(1, cores // 2)


def embed_images(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    embedder: Embedder | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    resolution: int = DEFAULT_RESOLUTION,
    batch_size: int = 32,
    workers: int | None = None,
    patches: bool = False,
    chunk_size: int = 1024,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
    max_bytes: int | None = None,
    allow_model_mismatch: bool = False,
    path_column: str | None = None,
    engine: str = "local",
    **ray_options,
) -> EmbedSummary:
    """Embed the images named by `sources` into the Parquet index `out` and return a summary.

    Sources are folders, globs, image files, lists, tables of paths (`path_column`), WebDataset shards
    and fsspec URLs (see `inputs`). `engine="ray"` runs on Ray Data (`out` is then a folder of Parquet
    shards, `workers` the model actors, N or (MIN, MAX)); `ray_options` are its own (see
    `ray_engine.embed_with_ray`).

    An existing `out` (or an interrupted run's chunks) is resumed: images already in it are skipped,
    unless `overwrite`; rows of another model are refused unless `allow_model_mismatch` (another width
    always is). Bad images (including files over `max_bytes`, default 256 MB, and special files) are
    recorded in the index's error table; `strict` raises `BadImageError` at the first one instead (after
    committing the rows done so far). The run holds a lock on `out`: a second run on it is refused with
    `dinov3kit.fileio.OutputLockedError`.
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be positive, got {batch_size} and {chunk_size}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from .ray_engine import embed_with_ray

        return embed_with_ray(
            sources, out, model=model, embedder=embedder, device=device, dtype=dtype, resolution=resolution,
            batch_size=batch_size, workers=workers, patches=patches, chunk_size=chunk_size, overwrite=overwrite,
            strict=strict, progress=progress, path_column=path_column, max_bytes=max_bytes,
            allow_model_mismatch=allow_model_mismatch, **ray_options,
        )
    if ray_options:
        raise ValueError(f"{', '.join(sorted(ray_options))}: options of the ray engine (pass engine='ray')")
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"the local engine takes a number of decoding workers (0 or more), got {workers!r}")
    start = time.perf_counter()
    items = collect_items(sources, path_column=path_column)
    if not items:
        raise ValueError("the sources name no images")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: a folder; -o names the index file to write (e.g. {out / 'index.parquet'})")
    refuse_overwriting_sources(out, [item.location for item in items if item.offset < 0])
    if overwrite and out.exists() and out.suffix.lower() != ".parquet":
        read_meta(out)  # --overwrite replaces an index, never another kind of file
    with OutputLock(out, "dinov3kit embed"):
        return _embed_locked(
            items, out, start, model=model, embedder=embedder, device=device, dtype=dtype, resolution=resolution,
            batch_size=batch_size, workers=workers, patches=patches, chunk_size=chunk_size, overwrite=overwrite,
            strict=strict, progress=progress, max_bytes=max_bytes, allow_model_mismatch=allow_model_mismatch,
        )


def _embed_locked(
    items: list[Item], out: Path, start: float, *, model, embedder: Embedder | None, device, dtype, resolution: int,
    batch_size: int, workers: int | None, patches: bool, chunk_size: int, overwrite: bool, strict: bool,
    progress: bool, max_bytes: int | None, allow_model_mismatch: bool,
) -> EmbedSummary:
    """`embed_images` once the output's lock is held."""
    source = embedder.source if embedder is not None else model_source(model)
    resolution = embedder.resolution if embedder is not None else resolution
    run = {"model": source, "resolution": resolution, "patches": patches}
    writer = IndexWriter(out, run, overwrite=overwrite, allow_model_mismatch=allow_model_mismatch)
    paths = [item.key for item in items]
    todo = [item for item in items if item.key not in writer.done]
    skipped = len(paths) - len(todo)
    if not todo:
        meta = writer.finish(None)
        return EmbedSummary(Path(out), len(paths), 0, skipped, 0, time.perf_counter() - start, errors=_errors_of(meta, paths))

    embedder = embedder or Embedder.load(source, device=device, dtype=dtype, resolution=resolution)
    writer.check_model(embedder.describe())
    workers = default_workers(embedder.device) if workers is None else workers
    loader = DataLoader(
        _ImageFiles(todo, embedder, max_bytes),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_decoding_worker if workers else None,
        pin_memory=embedder.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    chunk = _Chunk(patches, extra_columns(items))
    model_ready = time.perf_counter()
    try:
        failed = _embed_batches(loader, embedder, writer, chunk, chunk_size=chunk_size, strict=strict, progress=progress)
    finally:
        chunk.commit(writer)  # also on errors and Ctrl-C: what was computed is kept for the next run
    run = embedder.describe() | {"patches": patches}
    if chunk.grid is not None:
        run["patch_grid"] = list(chunk.grid)
    meta = writer.finish(run, chunk.schema or with_extra_columns(index_schema(feature_dim(embedder.model.config), None), chunk.extra))
    end = time.perf_counter()
    return EmbedSummary(
        Path(out), len(paths), len(todo) - failed, skipped, failed, end - start, end - model_ready, _errors_of(meta, paths)
    )


def _embed_batches(loader, embedder: Embedder, writer: IndexWriter, chunk: _Chunk, *, chunk_size: int, strict: bool, progress: bool) -> int:
    """Run the model on every batch, committing a chunk when it is full or old; returns the failures."""
    tqdm = require("tqdm").tqdm
    failed = 0
    last_commit = time.monotonic()
    with tqdm(total=len(loader.dataset), unit="img", desc="embed", disable=not progress, smoothing=0.1) as bar:
        for items, pixels in loader:
            chunk.add(items, embedder(pixels) if pixels is not None else None)
            bad = [item for item in items if item.error is not None]
            failed += len(bad)
            bar.update(len(items))
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            if strict and bad:
                raise BadImageError(f"{bad[0].path}: {bad[0].error} (strict mode; rows done so far are kept for the next run)")
            if chunk.rows >= chunk_size or time.monotonic() - last_commit > COMMIT_INTERVAL_S:
                chunk.commit(writer)
                last_commit = time.monotonic()
    return failed


def _errors_of(meta: dict, paths: list[str]) -> list[dict[str, str]]:
    wanted = set(paths)
    return [e for e in meta.get("errors", []) if e["path"] in wanted]


class _Chunk:
    """Rows and errors gathered since the last commit; the table schema is fixed by the first features."""

    def __init__(self, patches: bool, extra: list[str]) -> None:
        self.patches, self.extra = patches, extra
        self.schema = None
        self.grid: tuple[int, int] | None = None
        self._clear()

    def _clear(self) -> None:
        self.columns: dict[str, list] = {}
        self.errors: list[dict[str, str]] = []
        self.rows = 0

    def add(self, items: list[_Item], features) -> None:
        good = [item for item in items if item.error is None]
        self.errors += [{"path": item.path, "error": item.error} for item in items if item.error is not None]
        if not good:
            return
        if self.schema is None:
            self.grid = tuple(features.patches.shape[1:3]) if self.patches else None
            self.schema = with_extra_columns(index_schema(features.cls.shape[1], self.grid), self.extra)
        values = {
            "path": [item.path for item in good],
            "sha256": [item.sha256 for item in good],
            "width": [item.width for item in good],
            "height": [item.height for item in good],
            "cls": [features.cls.cpu().numpy()],
            "mean_patch": [features.mean_patch.cpu().numpy()],
        }
        if self.patches:
            values["patches"] = [features.patches.to(torch.float16).cpu().numpy().reshape(len(good), -1)]
        for name in self.extra:
            values[name] = [dict(item.extra).get(name) for item in good]
        for name, value in values.items():
            self.columns.setdefault(name, []).extend(value)
        self.rows += len(good)

    def commit(self, writer: IndexWriter) -> None:
        if not self.rows and not self.errors:
            return
        table = None
        if self.rows:
            columns = {
                name: np.concatenate(value) if isinstance(value[0], np.ndarray) else value
                for name, value in self.columns.items()
            }
            table = rows_table(self.schema, columns)
        writer.commit(table, self.errors)
        self._clear()
