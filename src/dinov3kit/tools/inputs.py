"""What `embed` reads, as `Item`s: every source `sources.collect_images` takes, plus tables of paths
(Parquet or CSV with a path column), WebDataset tar shards and fsspec URLs. Both engines use it.

- A Parquet (or, with `path_column`, CSV/TSV) file gives the paths or URLs of its path column; relative
  paths are relative to the table's folder.
- A ``.tar`` file, or a brace pattern such as ``shards/{0000..0099}.tar``, is read as WebDataset shards
  (the layout img2dataset writes: ``KEY.jpg`` with ``KEY.json`` / ``KEY.txt`` beside it). A row's identity
  is ``SHARD/KEY``; its ``key``, ``shard``, ``json`` and ``txt`` go into extra columns of the index.
- ``file://`` URLs are local paths; other URLs (``s3://``, ``gs://``, ``memory://``, ...) are read through
  fsspec when its backend is installed: a URL names an image, a table, a shard or a folder/glob of images.

An `Item` says where its bytes are (a path or URL, and for a tar member its offset and size), so that
decoding workers read just that image; the listing itself reads only tar headers and small metadata.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from ..fileio import default_max_bytes
from ..optional import require
from .sources import IMAGE_SUFFIXES, SourceError, collect_images, read_image_bytes

#: Extra index columns of WebDataset rows (strings, null where a sample has none).
WEBDATASET_COLUMNS = ("key", "shard", "json", "txt")
TABLE_SUFFIXES = frozenset({".parquet", ".pq"})
_TEXT_TABLE_SUFFIXES = frozenset({".csv", ".tsv"})
_PATH_COLUMNS = ("path", "url", "image_path", "filepath", "file", "filename", "image", "image_url")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")


@dataclass(frozen=True)
class Item:
    """One image to embed: its identity `key` (the index's `path` column), where its bytes are, and
    extra column values."""

    key: str
    location: str
    offset: int = -1  # a member of a tar shard: byte offset and size of its data in `location`
    size: int = -1
    extra: tuple[tuple[str, str | None], ...] = ()


def is_url(source: str) -> bool:
    """A URL with a scheme (``s3://``, ``file://``, ...), not a Windows drive letter."""
    scheme = urlparse(source).scheme
    return len(scheme) > 1 and "://" in source


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``{0000..0099}`` (zero padding kept) and ``{a,b}``, in order."""
    matches = [(match, values) for regex, values in ((_RANGE, _range_values), (_ALTERNATIVES, lambda m: m.group(1).split(",")))
               if (match := regex.search(pattern))]
    if not matches:
        return [pattern]
    match, values = min(matches, key=lambda pair: pair[0].start())
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for value in values(match) for expanded in expand_braces(head + value + tail)]


def _range_values(match: re.Match) -> list[str]:
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") or last.startswith("0") else 0
    step = 1 if int(last) >= int(first) else -1
    return [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]


def collect_items(sources: Iterable[str | os.PathLike], *, path_column: str | None = None) -> list[Item]:
    """The images named by `sources`, in order, each identity once (see the module docstring)."""
    found: dict[str, Item] = {}
    for source in sources:
        for item in _expand(str(source), path_column):
            found.setdefault(item.key, item)
    return list(found.values())


def _expand(source: str, path_column: str | None) -> Iterator[Item]:
    if source.startswith("file://"):
        source = urlparse(source).path
    names = expand_braces(source) if "{" in source else [source]
    for name in names:
        suffix = PurePosixPath(urlparse(name).path if is_url(name) else name).suffix.lower()
        if suffix == ".tar":
            yield from _webdataset_items(name)
        elif suffix in TABLE_SUFFIXES or (path_column and suffix in _TEXT_TABLE_SUFFIXES):
            yield from _table_items(name, path_column)
        elif is_url(name):
            yield from _url_items(name)
        else:
            yield from (Item(str(path), str(path)) for path in collect_images([name]))


# --- tables of paths ---------------------------------------------------------------------------
def _table_items(table: str, path_column: str | None) -> Iterator[Item]:
    suffix = PurePosixPath(urlparse(table).path if is_url(table) else table).suffix.lower()
    try:
        data = _read_all(table)
        if suffix in TABLE_SUFFIXES:

            columns = require("pyarrow.parquet").read_table(io.BytesIO(data))
            names = columns.column_names
            column = _path_column(table, names, path_column)
            values = columns.column(column).to_pylist()
        else:
            rows = list(csv.reader(data.decode("utf-8-sig").splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
            names = [cell.strip() for cell in rows[0]] if rows else []
            column = _path_column(table, names, path_column)
            values = [row[names.index(column)].strip() for row in rows[1:] if len(row) > names.index(column)]
    except SourceError:
        raise
    except (OSError, ValueError, ImportError) as error:
        raise SourceError(f"{table}: cannot read this table of paths ({error})") from error
    base = table.rsplit("/", 1)[0] if is_url(table) else os.path.dirname(os.path.abspath(table))
    for value in values:
        if value:
            location = _resolve(str(value), base, is_url(table))
            yield Item(location, location)


def _path_column(table: str, names: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in names:
            raise SourceError(f"{table}: no column {wanted!r} (it has {', '.join(names) or 'no columns'}); pick one with --path-column")
        return wanted
    lowered = {name.lower(): name for name in names}
    for name in _PATH_COLUMNS:
        if name in lowered:
            return lowered[name]
    raise SourceError(f"{table}: no path column among {', '.join(names) or 'no columns'}; name it with --path-column")


def _resolve(value: str, base: str, base_is_url: bool) -> str:
    if value.startswith("file://"):
        return urlparse(value).path
    if is_url(value) or os.path.isabs(value):
        return value
    if base_is_url:
        return f"{base}/{value}"
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


# --- WebDataset shards -------------------------------------------------------------------------
def _webdataset_items(shard: str) -> Iterator[Item]:
    """The images of a tar shard, with the sample's key, shard, json and txt as extra columns."""
    location = shard if is_url(shard) else os.path.abspath(shard)
    samples: dict[str, dict] = {}
    try:
        with _open(location) as handle, tarfile.open(fileobj=handle, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, dot, suffix = name.partition(".")
                if not dot or stem.startswith("."):
                    continue
                key = f"{folder}/{stem}" if folder else stem
                sample = samples.setdefault(key, {})
                suffix = suffix.lower()
                if f".{suffix}" in IMAGE_SUFFIXES and "image" not in sample:
                    sample["image"] = (member.offset_data, member.size)
                elif suffix in ("json", "txt") and member.size <= 2**20:
                    sample[suffix] = archive.extractfile(member).read().decode("utf-8", errors="replace")
    except FileNotFoundError as error:
        raise SourceError(f"{shard}: no such WebDataset shard") from error
    except (OSError, tarfile.TarError) as error:
        raise SourceError(f"{shard}: not a readable tar shard ({error})") from error
    for key, sample in samples.items():
        if "image" in sample:
            offset, size = sample["image"]
            extra = (("key", key), ("shard", location), ("json", sample.get("json")), ("txt", sample.get("txt")))
            yield Item(f"{location}/{key}", location, offset, size, extra)


# --- fsspec URLs -------------------------------------------------------------------------------
def _filesystem(url: str):
    try:
        import fsspec
    except ImportError as error:
        raise SourceError(f"{url}: reading URLs needs fsspec (pip install fsspec and its backend, e.g. s3fs)") from error
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise SourceError(f"{url}: no fsspec backend for this URL ({error})") from error


def _url_items(url: str) -> Iterator[Item]:
    fs, path = _filesystem(url)
    protocol = url.split("://", 1)[0]
    if any(char in path for char in "*?["):
        matches = sorted(fs.glob(path))
    elif fs.isdir(path):
        matches = sorted(fs.find(path))
    else:
        yield Item(url, url)
        return
    images = [m for m in matches if PurePosixPath(m).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(m).name.startswith(".")]
    if not images:
        raise SourceError(f"{url}: names no image files")
    for match in images:
        name = f"{protocol}://{match.lstrip('/')}" if protocol != "memory" else f"memory://{match}"
        yield Item(name, name)


def _open(location: str):
    if is_url(location):
        fs, path = _filesystem(location)
        return fs.open(path, "rb")
    return open(location, "rb")


def _read_all(location: str, max_bytes: int | None = None) -> bytes:
    max_bytes = max_bytes or default_max_bytes()
    with _open(location) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"larger than {max_bytes} bytes")
    return data


def read_bytes(item: Item, max_bytes: int | None = None) -> bytes:
    """The encoded image of `item` (at most `max_bytes`, default `fileio.default_max_bytes()`): a local
    file (a regular file only, see `sources.read_image_bytes`), a URL, or a member of a tar shard."""
    if item.offset < 0:
        return _read_all(item.location, max_bytes) if is_url(item.location) else read_image_bytes(item.location, max_bytes)
    max_bytes = max_bytes or default_max_bytes()
    if item.size > max_bytes:
        raise OSError(f"larger than {max_bytes} bytes")
    with _open(item.location) as handle:
        handle.seek(item.offset)
        return handle.read(item.size)


def extra_columns(items: Iterable[Item]) -> list[str]:
    """Names of the extra columns the items carry, in first-seen order."""
    names: dict[str, None] = {}
    for item in items:
        for name, _ in item.extra:
            names.setdefault(name, None)
    return list(names)


def with_extra_columns(schema, names: list[str]):
    """`schema` (the index's) plus nullable string columns `names`."""

    pa = require("pyarrow")
    for name in names:
        schema = schema.append(pa.field(name, pa.string(), nullable=True))
    return schema
