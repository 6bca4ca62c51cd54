"""The embedding index: one Parquet file, written in atomic chunks so that no run loses or repeats rows.

Layout of `OUT` (a single Parquet file, readable by pandas, polars, DuckDB, pyarrow): one row per image
with `path`, `sha256`, `width`, `height`, `cls` and `mean_patch` (float32 vectors) and, when asked,
`patches` (the float16 patch grid, row-major [h, w, D], flattened). The file's key-value metadata
`dinov3kit` holds the model, resolution, normalisation and the error table (bad inputs with their error).

While a run is going, finished chunks are committed to `OUT.partial/` (each chunk a complete Parquet file
written under a temporary name and renamed, an atomic step). At the end the chunks are merged with the
rows already in `OUT` into a new file that replaces `OUT` atomically. A killed run therefore leaves `OUT`
as it was (valid or absent) and every committed chunk intact; resuming merges them and skips their images.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .deps import require

pa = require("pyarrow")
pq = require("pyarrow.parquet")

META_KEY = b"dinov3kit"
FORMAT_VERSION = 1
VECTOR_COLUMNS = ("cls", "mean_patch")
#: Options that must match for a run to add rows to an existing index.
RESUME_KEYS = ("model", "resolution", "patches")


class IndexFileError(ValueError):
    """An index file is missing, unreadable, incomplete or incompatible with the requested run."""


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def index_schema(dim: int, patch_shape: tuple[int, int] | None):
    """Arrow schema of the rows; `patch_shape` (h, w) adds the flattened float16 patch grid."""
    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("cls", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("mean_patch", pa.list_(pa.float32(), dim), nullable=False),
    ]
    if patch_shape is not None:
        fields.append(pa.field("patches", pa.list_(pa.float16(), patch_shape[0] * patch_shape[1] * dim), nullable=False))
    return pa.schema(fields)


def rows_table(schema, columns: dict[str, Any]):
    """A table of `schema` from per-column lists (strings, ints) and [N, ...] numpy arrays (vectors)."""
    arrays = []
    for field in schema:
        value = columns[field.name]
        if isinstance(field.type, pa.FixedSizeListType):
            flat = np.ascontiguousarray(value, dtype=field.type.value_type.to_pandas_dtype()).reshape(-1)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), field.type.list_size))
        else:
            arrays.append(pa.array(value, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def read_meta(path: Path) -> dict:
    """The `dinov3kit` metadata of an index file (model, resolution, errors, ...)."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, ValueError) as error:
        raise IndexFileError(f"{path}: not a readable Parquet file ({error})") from error
    if META_KEY not in metadata:
        raise IndexFileError(f"{path}: not a dinov3kit index (no {META_KEY.decode()} metadata); make one with `dinov3kit embed`")
    return json.loads(metadata[META_KEY])


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data), encoding="utf-8"))


class IndexWriter:
    """Adds rows to the index `out`, committing chunks atomically and merging them at `finish`."""

    def __init__(self, out: str | os.PathLike, run: dict, *, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.parts = partial_dir(self.out)
        self.run, self.overwrite = run, overwrite
        previous = None if overwrite else self._previous_run()
        if previous is not None:
            self._check_compatible(previous, run)
        self.resumed = previous is not None
        self.done = set() if overwrite else self._done_paths()
        self._prepared = False
        self._next = 1

    def _prepare(self) -> None:
        """Create the chunk folder on the first write (and only then drop what `overwrite` replaces)."""
        if self._prepared:
            return
        if self.overwrite:
            self.out.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.parts.mkdir(exist_ok=True)
        for stale in self.parts.glob(".*.tmp"):
            stale.unlink()
        if not (self.parts / "run.json").exists():
            _write_json(self.parts / "run.json", self.run)
        self._next = 1 + max((int(p.name.split(".")[0]) for p in self.parts.glob("[0-9]*")), default=0)
        self._prepared = True

    def _previous_run(self) -> dict | None:
        if self.out.exists():
            return read_meta(self.out)
        if (self.parts / "run.json").exists():
            return json.loads((self.parts / "run.json").read_text(encoding="utf-8"))
        return None

    def _check_compatible(self, previous: dict, run: dict) -> None:
        different = [f"{key} {previous.get(key)!r} (now {run.get(key)!r})" for key in RESUME_KEYS if previous.get(key) != run.get(key)]
        if different:
            raise IndexFileError(
                f"{self.out}: was made with {', '.join(different)}; pass the same options to add to it, "
                "--overwrite to start it over, or another -o"
            )

    def _chunk_files(self) -> list[Path]:
        return sorted(self.parts.glob("[0-9]*.parquet")) if self.parts.is_dir() else []

    def _done_paths(self) -> set[str]:
        files = ([self.out] if self.out.exists() else []) + self._chunk_files()
        return {path for file in files for path in pq.read_table(file, columns=["path"]).column("path").to_pylist()}

    def commit(self, table, errors: list[dict[str, str]]) -> None:
        """Commit one chunk: its rows (a table, or None) and its bad inputs [{"path", "error"}]."""
        self._prepare()
        name = f"{self._next:06d}"
        if errors:
            _write_json(self.parts / f"{name}.errors.json", errors)
        if table is not None and table.num_rows:
            _atomic_write(self.parts / f"{name}.parquet", lambda tmp: pq.write_table(table, tmp))
            self.done.update(table.column("path").to_pylist())
        self._next += 1

    def finish(self, meta: dict | None, schema=None) -> dict:
        """Merge `OUT` and the committed chunks into a new `OUT` (atomically) and return its metadata.

        `meta` describes this run's model (None when nothing was embedded now: the previous one is kept);
        `schema` is used when there are no rows at all.
        """
        self._prepare()
        sources = ([self.out] if self.out.exists() else []) + self._chunk_files()
        if not sources and schema is None:
            raise IndexFileError(f"{self.out}: nothing to write (no image was embedded)")
        old = read_meta(self.out) if self.out.exists() else {}
        errors = {e["path"]: e["error"] for e in old.get("errors", [])}
        for file in sorted(self.parts.glob("*.errors.json")):
            errors.update({e["path"]: e["error"] for e in json.loads(file.read_text(encoding="utf-8"))})
        merged = {**self.run, **old, **(meta or {})}
        schema = pq.read_schema(sources[0]).remove_metadata() if sources else schema
        seen: set[str] = set()

        def write(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, schema) as writer:
                for source in sources:
                    file = pq.ParquetFile(source)
                    for group in range(file.num_row_groups):
                        table = file.read_row_group(group).replace_schema_metadata(None)
                        paths = table.column("path").to_pylist()
                        fresh = [p not in seen for p in paths]
                        if not all(fresh):
                            table = table.filter(pa.array(fresh))
                        seen.update(paths)
                        writer.write_table(table)
                merged.update(
                    format_version=FORMAT_VERSION,
                    rows=len(seen),
                    errors=[{"path": p, "error": e} for p, e in errors.items() if p not in seen],
                )
                writer.add_key_value_metadata({META_KEY: json.dumps(merged)})

        _atomic_write(self.out, write)
        shutil.rmtree(self.parts, ignore_errors=True)
        return merged


@dataclass
class Index:
    """The rows of an index that search and dedup need: paths and one L2-normalised feature per row."""

    path: Path
    meta: dict
    paths: list[str]
    vectors: np.ndarray  # [N, D] float32, unit length

    @property
    def errors(self) -> list[dict[str, str]]:
        return self.meta.get("errors", [])


def read_index(path: str | os.PathLike, feature: str = "cls") -> Index:
    """Load an index made by `embed` with the chosen feature ("cls" or "mean_patch") normalised."""
    path = Path(path)
    if not path.exists():
        hint = (
            f"; an unfinished run left {partial_dir(path)}: rerun the same `dinov3kit embed` command to finish it"
            if partial_dir(path).exists()
            else "; make one with `dinov3kit embed SOURCE... -o INDEX.parquet`"
        )
        raise IndexFileError(f"{path}: no such index{hint}")
    if feature not in VECTOR_COLUMNS:
        raise ValueError(f"feature must be one of {VECTOR_COLUMNS}, got {feature!r}")
    meta = read_meta(path)
    table = pq.read_table(path, columns=["path", feature])
    column = table.column(feature).combine_chunks()
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, column.type.list_size)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return Index(path, meta, table.column("path").to_pylist(), (vectors / np.maximum(norms, 1e-12)).astype(np.float32))
