"""`embed --engine ray`: the embed job on Ray Data, from one machine to a cluster.

The pipeline is Ray Data's, end to end, with no scheduler or queue of our own:

    items (listing) → decode + preprocess: CPU tasks (`map_batches`, `num_cpus=1`, `decode_cpus` at once)
                    → model: an actor pool (`map_batches` with a callable class, one model per actor,
                      N or (MIN, MAX) actors, `num_gpus` per actor)
                    → the driver, which commits Parquet shards atomically into OUT (a folder).

Ray Data streams the blocks with backpressure, so memory stays flat however long the collection is.
Decoding and preprocessing are the local engine's (`embed.decode_item`), and so is the model
(`runtime.Embedder`: inference mode, bf16 and fused kernels on a GPU), so both engines write the same rows.

Exactly once: the driver drops any key it has committed already (a task that Ray retries after its
worker died yields its rows again), each shard is written under a temporary name and renamed, and a new
run skips the keys of the committed shards, so a killed driver is resumed by rerunning the command.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..auto import AutoConfig
from ..fileio import OutputLock, atomic_write
from ..optional import require
from ..processing import processor_for_model
from .embed_common import COMMIT_INTERVAL_S, BadImageError, BadInput, EmbedSummary, decode_item
from .inputs import Item, collect_items, extra_columns, with_extra_columns
from .runtime import DEFAULT_RESOLUTION, Embedder, feature_dim, model_source
from .store import (
    ERRORS_FILE,
    FORMAT_VERSION,
    META_KEY,
    RESUME_KEYS,
    IndexFileError,
    check_same_model,
    index_schema,
    read_meta,
    rows_table,
    shard_files,
)

pa = require("pyarrow")
pq = require("pyarrow.parquet")

#: Items per block of the listing, and images per decoding task.
DECODE_BATCH = 16
#: Memory a decoding task reserves (a batch of large photos, decoded and preprocessed). Also keeps Ray
#: Data from fusing decoding into the model actors (operators whose resources differ stay apart), so
#: decoding runs in tasks of its own and scales with the CPUs given to it.
DECODE_MEMORY = 512 * 2**20
#: Columns of the pipeline's own (extra columns such as WebDataset's `key` pass through beside them).
_RUN_COLUMN, _KEY, _LOCATION, _OFFSET, _SIZE = "_run", "_item_key", "_item_location", "_item_offset", "_item_size"


def parse_workers(value: int | str | tuple[int, int] | None) -> int | tuple[int, int] | None:
    """Model actors: N, or "MIN,MAX" / (MIN, MAX) for a pool that grows and shrinks with the work."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        bounds: tuple = (value,) if value is not None else ()
    elif isinstance(value, str):
        try:
            bounds = tuple(int(part) for part in value.split(","))
        except ValueError:
            bounds = ()
        if len(bounds) not in (1, 2):
            raise ValueError(f"--workers takes N or MIN,MAX (model actors), got {value!r}")
    else:
        bounds = tuple(value)
    if any(bound < 1 for bound in bounds) or len(bounds) == 2 and bounds[0] > bounds[1]:
        raise ValueError(f"workers must be N >= 1 or MIN,MAX with 1 <= MIN <= MAX, got {value!r}")
    if not bounds:
        return None
    return bounds[0] if len(bounds) == 1 else (bounds[0], bounds[1])


def embed_with_ray(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    embedder: Embedder | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    resolution: int = DEFAULT_RESOLUTION,
    batch_size: int = 32,
    workers: int | str | tuple[int, int] | None = None,
    patches: bool = False,
    chunk_size: int = 1024,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
    path_column: str | None = None,
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    model_threads: int | None = None,
    decode_cpus: int | None = None,
    verbose: bool = False,
    max_bytes: int | None = None,
    allow_model_mismatch: bool = False,
) -> EmbedSummary:
    """Embed `sources` into the folder of Parquet shards `out` on Ray Data (see the module docstring).

    `address`: a running cluster ("auto", "HOST:PORT", "ray://HOST:PORT"; default: the one this process
    is connected to, else a new local one). `workers`: model actors, N or (MIN, MAX) (default 1, or one per
    GPU with `gpus_per_worker`). `cpus_per_worker` CPUs reserved per actor (`model_threads` torch threads,
    default the same). `decode_cpus`: decoding tasks at once (default: as many as the cluster's CPUs allow).
    """
    ray = require("ray")
    workers = parse_workers(workers)
    if gpus_per_worker < 0 or cpus_per_worker < 0 or (decode_cpus is not None and decode_cpus < 1):
        raise ValueError("gpus_per_worker and cpus_per_worker must be >= 0 and decode_cpus >= 1")
    start = time.perf_counter()
    out = Path(out)
    if out.is_file():
        raise IndexFileError(f"{out}: is a single-file index; the ray engine writes a folder of shards (pass another -o)")
    items = collect_items(sources, path_column=path_column)
    if not items:
        raise ValueError("the sources name no images")
    source = embedder.source if embedder is not None else model_source(model)
    resolution = embedder.resolution if embedder is not None else resolution
    if embedder is not None:
        device, dtype = "auto" if embedder.device.type == "cuda" else "cpu", embedder.dtype
    processor = embedder.processor if embedder is not None else processor_for_source(source, resolution)
    keys = [item.key for item in items]
    with OutputLock(out, "dinov3kit embed"):
        shards = ShardWriter(out, {"model": source, "resolution": resolution, "patches": patches}, overwrite=overwrite,
                             allow_model_mismatch=allow_model_mismatch)
        todo = [item for item in items if item.key not in shards.done]
        skipped = len(items) - len(todo)
        failed = 0
        model_ready = time.perf_counter()
        if todo:
            with _connected(ray, address, verbose):
                dataset = _pipeline(
                    ray, todo, processor, source=source, device=device, dtype=dtype, resolution=resolution,
                    patches=patches, batch_size=batch_size, workers=workers, gpus_per_worker=gpus_per_worker,
                    cpus_per_worker=cpus_per_worker, model_threads=model_threads, decode_cpus=decode_cpus,
                    max_bytes=max_bytes,
                )
                model_ready = time.perf_counter()
                failed = _consume(dataset, shards, len(todo), extra_columns(items), batch_size=batch_size,
                                  chunk_size=chunk_size, strict=strict, progress=progress)
        meta = shards.finish()
    end = time.perf_counter()
    wanted = set(keys)
    errors = [error for error in meta.get("errors", []) if error["path"] in wanted]
    return EmbedSummary(out, len(items), len(todo) - failed, skipped, failed, end - start, end - model_ready, errors)


def processor_for_source(source: str, resolution: int):
    """The preprocessing `Embedder` would use, from the checkpoint's config alone (no weights on the driver)."""

    processor = processor_for_model(AutoConfig.from_pretrained(source), size={"height": resolution, "width": resolution})
    if resolution < processor.patch_size:
        raise ValueError(f"resolution {resolution} is smaller than one {processor.patch_size}px patch")
    return processor


@contextmanager
def _connected(ray, address: str | None, verbose: bool) -> Iterator[None]:
    """Connect to (or start) a cluster unless this process already is, with Ray's bars and logs quiet
    unless `verbose`; what was changed (Ray Data's context, its logger) is put back afterwards."""
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in ("enable_progress_bars", "print_on_execution_start", "enable_auto_log_stats")}
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in loggers]
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"include_dashboard": False}
        with _environment({} if verbose else {"RAY_BACKEND_LOG_LEVEL": "fatal"}):
            ray.init(**options, logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    context.enable_auto_log_stats = verbose
    if not verbose:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if started:
            ray.shutdown()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables the user has not set, for the block only."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _pipeline(ray, todo: list[Item], processor, *, source, device, dtype, resolution, patches, batch_size, workers,
              gpus_per_worker, cpus_per_worker, model_threads, decode_cpus, max_bytes=None, actor_class: type | None = None):
    """The Ray dataset: listing → decoding tasks → model actors (lazy; the driver pulls it). Benchmarks
    pass an instrumented `actor_class`."""
    decoded = decoding_dataset(ray, todo, processor, decode_cpus, max_bytes)
    if workers is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        workers = (1, max(1, int(gpus // gpus_per_worker))) if gpus_per_worker and gpus else 1
    threads = model_threads or max(1, int(cpus_per_worker))
    pool = ray.data.ActorPoolStrategy(min_size=workers[0], max_size=workers[1]) if isinstance(workers, tuple) else ray.data.ActorPoolStrategy(size=workers)
    return decoded.map_batches(
        actor_class or ModelActor, batch_size=batch_size, batch_format="numpy", compute=pool,
        num_gpus=gpus_per_worker or None, num_cpus=cpus_per_worker,
        fn_constructor_kwargs={"source": source, "device": str(device), "dtype": dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
                               "resolution": resolution, "patches": patches, "threads": threads},
    )


def decoding_dataset(ray, todo: list[Item], processor, decode_cpus: int | None = None, max_bytes: int | None = None):
    """The listing and decoding stages alone (the first half of the pipeline)."""
    names = extra_columns(todo)
    rows = [
        {_KEY: item.key, _LOCATION: item.location, _OFFSET: item.offset, _SIZE: item.size,
         **{name: dict(item.extra).get(name) for name in names}}
        for item in todo
    ]
    listing = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // DECODE_BATCH, 10_000)))
    return listing.map_batches(
        _decode_batch, batch_size=DECODE_BATCH, batch_format="numpy", fn_kwargs={"processor": processor, "max_bytes": max_bytes},
        num_cpus=1, memory=DECODE_MEMORY, compute=ray.data.TaskPoolStrategy(size=decode_cpus),
    )


def _decode_batch(batch: dict[str, np.ndarray], processor, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """A decoding task: pixels of each item, or its error (rows of bad items keep zero pixels)."""
    count = len(batch[_KEY])
    size = processor.size
    pixels = np.zeros((count, 3, size["height"], size["width"]), dtype=np.float32)
    widths, heights = np.zeros(count, np.int32), np.zeros(count, np.int32)
    hashes, errors = np.full(count, "", dtype=object), np.full(count, "", dtype=object)
    for row in range(count):
        item = Item(str(batch[_KEY][row]), str(batch[_LOCATION][row]), int(batch[_OFFSET][row]), int(batch[_SIZE][row]))
        try:
            values, widths[row], heights[row], hashes[row] = decode_item(item, processor, max_bytes)
            pixels[row] = values.numpy()
        except BadInput as error:
            errors[row] = str(error)
    passed = {name: value for name, value in batch.items() if name not in (_LOCATION, _OFFSET, _SIZE)}
    return {**passed, "pixels": pixels, "width": widths, "height": heights, "sha256": hashes, "error": errors}


class ModelActor:
    """One model replica (a Ray actor): features of the decoded rows; bad rows pass through with zeros.

    The first row of each output batch carries, in `_run`, what the index records about the model
    (`Embedder.describe`, patches, patch grid), so that the driver never loads the weights itself.
    """

    def __init__(self, source: str, device: str, dtype: str, resolution: int, patches: bool, threads: int) -> None:
        if device == "cpu" or not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.embedder = Embedder.load(source, device=device, dtype=dtype, resolution=resolution)
        self.patches = patches
        self.dim = feature_dim(self.embedder.model.config)
        probe = torch.zeros(1, 3, resolution, resolution)
        grid = tuple(self.embedder(probe).patches.shape[1:3])
        self.grid = grid if patches else None
        run = self.embedder.describe() | {"patches": patches}
        if patches:
            run["patch_grid"] = list(grid)
        self.run = json.dumps(run)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = batch["error"] == ""
        count = len(good)
        output = {name: value for name, value in batch.items() if name != "pixels"}
        cls = np.zeros((count, self.dim), np.float32)
        mean_patch = np.zeros((count, self.dim), np.float32)
        grid = np.zeros((count, *(self.grid or ()), self.dim), np.float16) if self.patches else None
        if good.any():
            features = self.embedder(torch.from_numpy(np.ascontiguousarray(batch["pixels"][good])))
            cls[good] = features.cls.cpu().numpy()
            mean_patch[good] = features.mean_patch.cpu().numpy()
            if self.patches:
                grid[good] = features.patches.to(torch.float16).cpu().numpy()
        output.update(cls=cls, mean_patch=mean_patch)
        if self.patches:
            output["patches"] = grid.reshape(count, -1)
        run = np.full(count, "", dtype=object)
        run[0] = self.run
        output[_RUN_COLUMN] = run
        return output


def _consume(dataset, shards: ShardWriter, total: int, extra: list[str], *, batch_size: int, chunk_size: int, strict: bool,
             progress: bool) -> int:
    """Pull the dataset's batches, committing a shard when it is full or old; returns the failures."""
    tqdm = require("tqdm").tqdm
    chunk = _ShardChunk(extra)
    failed = 0
    last_commit = time.monotonic()
    with tqdm(total=total, unit="img", desc="embed (ray)", disable=not progress, smoothing=0.1) as bar:
        try:
            for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
                if chunk.run is None:
                    shards.check_model(json.loads(batch[_RUN_COLUMN][0]))
                bad = chunk.add(batch, shards.done)
                failed += len(bad)
                bar.update(len(batch[_KEY]))
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
                if strict and bad:
                    raise BadImageError(f"{bad[0]['path']}: {bad[0]['error']} (strict mode; rows done so far are kept for the next run)")
                if chunk.rows >= chunk_size or time.monotonic() - last_commit > COMMIT_INTERVAL_S:
                    shards.commit(chunk)
                    last_commit = time.monotonic()
        finally:
            shards.commit(chunk)  # also on errors and Ctrl-C: what was computed is kept for the next run
    return failed


class _ShardChunk:
    """Rows and errors received since the last commit, each key once."""

    def __init__(self, extra: list[str]) -> None:
        self.extra = extra
        self.run: dict | None = None
        self.schema = None
        self.clear()

    def clear(self) -> None:
        self.columns: dict[str, list] = {}
        self.errors: list[dict[str, str]] = []
        self.keys: set[str] = set()
        self.rows = 0

    def add(self, batch: dict[str, np.ndarray], done: set[str]) -> list[dict[str, str]]:
        """Take a model batch (dropping keys already committed or taken); returns its new errors."""
        if self.run is None:
            self.run = json.loads(batch[_RUN_COLUMN][0])
            grid = self.run.get("patch_grid")
            self.schema = with_extra_columns(index_schema(batch["cls"].shape[1], tuple(grid) if grid else None), self.extra)
        keys = [str(key) for key in batch[_KEY]]
        fresh = np.array([key not in done and key not in self.keys for key in keys], dtype=bool)
        self.keys.update(keys)
        good = fresh & (batch["error"] == "")
        errors = [{"path": key, "error": str(error)} for key, error, new in zip(keys, batch["error"], fresh) if new and error]
        self.errors += errors
        values = {"path": [k for k, g in zip(keys, good) if g], "sha256": list(batch["sha256"][good]),
                  "width": batch["width"][good], "height": batch["height"][good],
                  "cls": batch["cls"][good], "mean_patch": batch["mean_patch"][good]}
        if "patches" in batch:
            values["patches"] = batch["patches"][good]
        for name in self.extra:
            values[name] = [None if v is None else str(v) for v in batch[name][good]] if name in batch else [None] * int(good.sum())
        for name, value in values.items():
            self.columns.setdefault(name, []).append(value)
        self.rows += int(good.sum())
        return errors

    def table(self):
        columns = {}
        for name, parts in self.columns.items():
            columns[name] = np.concatenate(parts) if isinstance(parts[0], np.ndarray) else [v for part in parts for v in part]
        for field in self.schema:
            columns.setdefault(field.name, [])
        columns["width"], columns["height"] = list(map(int, columns["width"])), list(map(int, columns["height"]))
        columns["sha256"] = [str(v) for v in columns["sha256"]]
        if not self.rows:
            return self.schema.empty_table()
        return rows_table(self.schema, columns)


class ShardWriter:
    """The folder index `out`: `part-NNNNNN.parquet` shards, each with the index's columns and its
    `dinov3kit` metadata (the run's model and the shard's bad inputs), written atomically."""

    def __init__(self, out: Path, run: dict, *, overwrite: bool = False, allow_model_mismatch: bool = False) -> None:
        self.out, self.run, self.allow_model_mismatch = out, run, allow_model_mismatch
        self.previous: dict | None = None
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):
            stale.unlink()
        if overwrite:
            for shard in shard_files(out):
                shard.unlink()
            (out / ERRORS_FILE).unlink(missing_ok=True)
        files = shard_files(out)
        if files:
            previous = self.previous = read_meta(files[0]) | {"dim": pq.read_schema(files[0]).field("cls").type.list_size}
            keys = [key for key in RESUME_KEYS if not (key == "model" and allow_model_mismatch)]
            different = [f"{key} {previous.get(key)!r} (now {run.get(key)!r})" for key in keys if previous.get(key) != run.get(key)]
            if different:
                raise IndexFileError(
                    f"{out}: was made with {', '.join(different)}; pass the same options to add to it, "
                    "--overwrite to start it over, or another -o"
                )
        self.done = {key for file in files for key in pq.read_table(file, columns=["path"]).column("path").to_pylist()}
        self._next = 1 + max((int(file.stem.split("-")[1]) for file in files), default=0)

    def check_model(self, description: dict) -> None:
        """Refuse rows of another model than the folder's (see `store.check_same_model`)."""
        if self.previous is not None:
            check_same_model(self.out, self.previous, description, allow_mismatch=self.allow_model_mismatch)

    def commit(self, chunk: _ShardChunk) -> None:
        """Write the chunk's rows and errors as the next shard (nothing when it is empty), then clear it."""
        if not chunk.rows and not chunk.errors:
            return
        meta = {**self.run, **chunk.run, "format_version": FORMAT_VERSION, "engine": "ray", "rows": chunk.rows, "errors": chunk.errors}
        table = chunk.table().replace_schema_metadata({META_KEY: json.dumps(meta)})
        with atomic_write(self.out / f"part-{self._next:06d}.parquet") as temporary:
            pq.write_table(table, temporary)
        self.done.update(chunk.keys)
        self._next += 1
        chunk.clear()

    def finish(self) -> dict:
        """Write the folder's error table `_errors.parquet` (bad inputs still without a row) and return
        the folder's metadata."""
        meta = read_meta(self.out) if shard_files(self.out) else {**self.run, "rows": 0, "errors": []}
        table = pa.table({"path": [e["path"] for e in meta["errors"]], "error": [e["error"] for e in meta["errors"]]},
                         schema=pa.schema([("path", pa.string()), ("error", pa.string())]))
        with atomic_write(self.out / ERRORS_FILE) as temporary:
            pq.write_table(table, temporary)
        return meta
