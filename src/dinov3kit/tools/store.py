"""The embedding index: one Parquet file, written in atomic chunks so that no run loses or repeats rows.

Layout of `OUT` (a single Parquet file, readable by pandas, polars, DuckDB, pyarrow): one row per image
with `path`, `sha256`, `width`, `height`, `cls` and `mean_patch` (float32 vectors) and, when asked,
`patches` (the float16 patch grid, row-major [h, w, D], flattened). The file's key-value metadata
`dinov3kit` holds the model, resolution, normalisation and the error table (bad inputs with their error).

While a run is going, finished chunks are committed to `OUT.partial/` (each chunk a complete Parquet file
written under a temporary name and renamed, an atomic step). At the end the chunks are merged with the
rows already in `OUT` into a new file that replaces `OUT` atomically. A killed run therefore leaves `OUT`
as it was (valid or absent) and every committed chunk intact; resuming merges them and skips their images
(a resumed `--overwrite` run goes on replacing `OUT`, which is kept until then). Readers open `OUT` once, so while a run goes on they see the last complete index.

The metadata also records which model made the rows (`model_digest`: its config and tensor shapes,
`weight_sample`: a few of its weights, compared with a tolerance so that another dtype of the same
checkpoint matches), so that queries and resumed runs embedded by another model are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write
from ..optional import require

pa = require("pyarrow")
pq = require("pyarrow.parquet")

META_KEY = b"dinov3kit"
FORMAT_VERSION = 1
VECTOR_COLUMNS = ("cls", "mean_patch")
#: Options that must match for a run to add rows to an existing index.
RESUME_KEYS = ("model", "resolution", "patches")


class IndexFileError(ValueError):
    """An index file is missing, unreadable, incomplete or incompatible with the requested run."""


class ModelMismatchError(IndexFileError):
    """An index was made by another model (or preprocessing) than the one given to search or extend it."""


#: Preprocessing that must match for vectors to be comparable.
PREPROCESSING_KEYS = ("resolution", "image_mean", "image_std")
#: Relative tolerance of the weight sample (another dtype of the same checkpoint stays within it).
WEIGHT_SAMPLE_RTOL = 2e-2


def _short(error: Exception) -> str:
    """The first line of a (pyarrow) error, shortened: its schema dumps are of no use to a user."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_same_model(path: Path, meta: dict, run: dict, *, allow_mismatch: bool = False) -> None:
    """Refuse (`ModelMismatchError`) to mix vectors of the index `path` (its metadata `meta`) with those of
    the model described by `run` (`Embedder.describe()`): another width always, another model or
    preprocessing unless `allow_mismatch`. An index from before model digests only gets a warning."""
    if meta.get("dim") is not None and run.get("dim") is not None and meta["dim"] != run["dim"]:
        raise ModelMismatchError(
            f"{path}: holds {meta['dim']}-wide vectors from {meta.get('model')}, but {run.get('model')} makes "
            f"{run['dim']}-wide ones; they cannot be compared (use the index's model, or another index)"
        )
    if allow_mismatch:
        return
    if "model_digest" not in meta:
        warnings.warn(
            f"{path}: made before dinov3kit recorded model digests; cannot check that {run.get('model')} is the model "
            "that made it (re-embed to record it)",
            stacklevel=2,
        )
        return
    different = [key for key in PREPROCESSING_KEYS if key in meta and _differs(meta[key], run.get(key))]
    if meta["model_digest"] != run.get("model_digest") or not _weights_match(meta.get("weight_sample"), run.get("weight_sample")):
        different.insert(0, "weights or config")
    if different:
        raise ModelMismatchError(
            f"{path}: was made by {meta.get('model')}, and {run.get('model')} differs in its {', '.join(different)}; "
            "its vectors would not be comparable. Pass the index's model (--model), or --allow-model-mismatch "
            "to compare them anyway"
        )


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return not np.allclose(a, b, rtol=1e-6, atol=1e-6)
    return a != b


def _weights_match(a: list[float] | None, b: list[float] | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return a == b
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= WEIGHT_SAMPLE_RTOL * np.maximum(np.abs(a), np.abs(b)) + 1e-4))


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
    """The `dinov3kit` metadata of an index file (model, resolution, errors, ...), or of a folder index."""
    if Path(path).is_dir():
        return read_folder_meta(Path(path))
    try:
        return _meta_of(pq.read_metadata(path), path)
    except (OSError, ValueError, pa.ArrowException) as error:
        if isinstance(error, IndexFileError):
            raise
        raise IndexFileError(f"{path}: not a readable Parquet index ({_short(error)})") from None


def _meta_of(file_metadata, path: Path) -> dict:
    metadata = file_metadata.metadata or {}
    if META_KEY not in metadata:
        raise IndexFileError(f"{path}: not a dinov3kit index (no {META_KEY.decode()} metadata); make one with `dinov3kit embed`")
    try:
        meta = json.loads(metadata[META_KEY])
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("errors", []), list):
        raise IndexFileError(f"{path}: its dinov3kit metadata is corrupt; make the index again with `dinov3kit embed --overwrite`")
    return meta


def _atomic_write(path: Path, write) -> None:
    with atomic_write(path) as temporary:
        write(temporary)


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data), encoding="utf-8"))


class IndexWriter:
    """Adds rows to the index `out`, committing chunks atomically and merging them at `finish`."""

    def __init__(self, out: str | os.PathLike, run: dict, *, overwrite: bool = False, allow_model_mismatch: bool = False) -> None:
        self.out = Path(out)
        self.parts = partial_dir(self.out)
        self.run, self.overwrite, self.allow_model_mismatch = dict(run), overwrite, allow_model_mismatch
        #: This run (or the unfinished one it resumes) replaces `out` rather than adding to it; `out` is
        #: kept until the new index is renamed over it, so a killed --overwrite run loses nothing.
        self.replacing = overwrite or self._unfinished_overwrite()
        previous = None if overwrite else self._previous_run()
        if previous is not None:
            self._check_compatible(previous, run)
        self.previous = previous
        self.resumed = previous is not None
        self.done = set() if overwrite else self._done_paths()
        self._prepared = False
        self._next = 1

    def _prepare(self) -> None:
        """Create the chunk folder on the first write (and only then drop an unfinished run's chunks that
        `overwrite` replaces; `out` itself stays until `finish` renames the new index over it)."""
        if self._prepared:
            return
        if self.overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.parts.mkdir(exist_ok=True)
        for stale in self.parts.glob(".*.tmp"):
            stale.unlink()
        if not (self.parts / "run.json").exists():
            _write_json(self.parts / "run.json", self.run | ({"replaces_out": True} if self.replacing else {}))
        self._next = 1 + max((int(p.name.split(".")[0]) for p in self.parts.glob("[0-9]*")), default=0)
        self._prepared = True

    def _unfinished_overwrite(self) -> bool:
        return bool((self._unfinished_run() or {}).get("replaces_out"))

    def _unfinished_run(self) -> dict | None:
        """What an unfinished run recorded in the chunk folder (None when there is none)."""
        run_file = self.parts / "run.json"
        if not run_file.exists():
            return None
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise IndexFileError(f"{run_file}: unreadable ({error}); pass --overwrite to start {self.out} over") from None
        if not isinstance(run, dict):
            raise IndexFileError(f"{run_file}: not a record of a run; pass --overwrite to start {self.out} over")
        return run

    def _kept_out(self) -> list[Path]:
        """`[out]` when its rows stay in the index, else `[]`."""
        return [self.out] if self.out.exists() and not self.replacing else []

    def _previous_run(self) -> dict | None:
        if self._kept_out():
            return read_meta(self.out)
        if (self.parts / "run.json").exists():
            return self._unfinished_run()
        return None

    def check_model(self, description: dict) -> None:
        """Refuse to add rows of the model described by `description` (`Embedder.describe()`) to rows of
        another (see `check_same_model`); the run records the model for the next resume."""
        if self.previous is not None:
            previous = dict(self.previous)
            previous.setdefault("dim", self._previous_dim())
            check_same_model(self.out, previous, description, allow_mismatch=self.allow_model_mismatch)
        self.run.update({key: description[key] for key in ("dim", "model_digest", "weight_sample", *PREPROCESSING_KEYS) if key in description})

    def _previous_dim(self) -> int | None:
        files = self._kept_out() + self._chunk_files()
        return pq.read_schema(files[0]).field("cls").type.list_size if files else None

    def _check_compatible(self, previous: dict, run: dict) -> None:
        keys = [key for key in RESUME_KEYS if not (key == "model" and self.allow_model_mismatch)]
        different = [f"{key} {previous.get(key)!r} (now {run.get(key)!r})" for key in keys if previous.get(key) != run.get(key)]
        if different:
            raise IndexFileError(
                f"{self.out}: was made with {', '.join(different)}; pass the same options to add to it, "
                "--overwrite to start it over, or another -o"
            )

    def _chunk_files(self) -> list[Path]:
        return sorted(self.parts.glob("[0-9]*.parquet")) if self.parts.is_dir() else []

    def _done_paths(self) -> set[str]:
        files = self._kept_out() + self._chunk_files()
        done = set()
        for file in files:
            try:
                done.update(pq.read_table(file, columns=["path"]).column("path").to_pylist())
            except (OSError, ValueError, pa.ArrowException) as error:
                raise IndexFileError(
                    f"{file}: not a readable Parquet file ({_short(error)}); move it away, or pass --overwrite to start {self.out} over"
                ) from None
        return done

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
        sources = self._kept_out() + self._chunk_files()
        if not sources and schema is None:
            raise IndexFileError(f"{self.out}: nothing to write (no image was embedded)")
        old = read_meta(self.out) if self._kept_out() else {}
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
    """Load an index made by `embed` (a file, or the folder of `embed --engine ray`) with the chosen
    feature ("cls" or "mean_patch") normalised.

    The file is opened once, so a run replacing it meanwhile does not mix two versions."""
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
    try:
        if path.is_dir():  # a folder index (`embed --engine ray`): its shards as one table
            meta = read_folder_meta(path)
            table = pq.read_table(shard_files(path), columns=["path", feature])
        else:
            with open(path, "rb") as handle:
                file = pq.ParquetFile(handle)
                meta = _meta_of(file.metadata, path)
                table = file.read(columns=["path", feature])
        column = table.column(feature).combine_chunks()
        if not isinstance(column.type, pa.FixedSizeListType) or column.null_count or table.column("path").null_count:
            raise IndexFileError(f"{path}: its {feature} column is not a column of vectors; make the index again")
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, column.type.list_size)
        paths = table.column("path").to_pylist()
    except IsADirectoryError:
        raise IndexFileError(f"{path}: a folder, not an index file") from None
    except (OSError, ValueError, KeyError, pa.ArrowException) as error:
        if isinstance(error, IndexFileError):
            raise
        raise IndexFileError(f"{path}: corrupt or unreadable index ({_short(error)}); make it again with `dinov3kit embed`") from None
    if not np.isfinite(vectors).all():
        raise IndexFileError(f"{path}: its {feature} vectors hold NaN or infinite values (a corrupt index); make it again")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return Index(path, meta, paths, (vectors / np.maximum(norms, 1e-12)).astype(np.float32))


# --- folder indexes (`embed --engine ray`) ---------------------------------------------------
#: A folder index holds `part-NNNNNN.parquet` shards (each with the columns and `dinov3kit` metadata of
#: an index file, its own bad inputs in `errors`) and `_errors.parquet`, the bad inputs of the whole folder.
#: Names starting with `_` or `.` are skipped by pyarrow, pandas and DuckDB when they read the folder.
SHARD_GLOB = "part-[0-9]*.parquet"
ERRORS_FILE = "_errors.parquet"


def shard_files(folder: Path) -> list[Path]:
    """The committed shards of a folder index, in commit order."""
    return sorted(Path(folder).glob(SHARD_GLOB))


def read_folder_meta(folder: Path) -> dict:
    """The metadata of a folder index as one index file would have it: the run's model and options,
    `rows` in all, and the bad inputs that have no row."""
    files = shard_files(folder)
    if not files:
        raise IndexFileError(f"{folder}: a folder, not an index file (nor a folder index: no {SHARD_GLOB} shards of `dinov3kit embed --engine ray`)")
    metas = [read_meta(file) for file in files]
    errors = {e["path"]: e["error"] for meta in metas for e in meta.get("errors", [])}
    if errors:
        keys = {key for file in files for key in pq.read_table(file, columns=["path"]).column("path").to_pylist()}
        errors = {path: error for path, error in errors.items() if path not in keys}
    merged = {key: value for key, value in metas[0].items() if key not in ("rows", "errors")}
    return merged | {"rows": sum(meta.get("rows", 0) for meta in metas), "shards": len(files),
                     "errors": [{"path": p, "error": e} for p, e in errors.items()]}


def merge_index(folder: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Compact the folder index `folder` into the single index file `out` (atomically; each path once)
    and return its metadata."""

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise IndexFileError(f"{folder}: not a folder index (merge compacts the folder `embed --engine ray` writes)")
    meta = read_folder_meta(folder)
    files = shard_files(folder)
    schema = pq.read_schema(files[0]).remove_metadata()
    seen: set[str] = set()
    with atomic_write(out, sources=files) as temporary:
        with pq.ParquetWriter(temporary, schema) as writer:
            for source in files:
                table = pq.read_table(source).replace_schema_metadata(None)
                paths = table.column("path").to_pylist()
                fresh = [p not in seen for p in paths]
                seen.update(paths)
                writer.write_table(table if all(fresh) else table.filter(pa.array(fresh)))
            meta = {key: value for key, value in meta.items() if key not in ("shards", "engine")} | {"rows": len(seen)}
            writer.add_key_value_metadata({META_KEY: json.dumps(meta)})
    return meta
