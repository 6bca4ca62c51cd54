"""Which images a command works on: folders (recursive), globs, image files and list files of paths."""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path
from typing import Iterable

#: Suffixes taken when walking a folder or expanding a glob (named files are taken whatever their suffix).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".avif"}
)
#: Files read as lists of image paths, one a line (CSV/TSV: the `path` column, else the first).
LIST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".tsv"})
_PATH_COLUMNS = ("path", "file", "filename", "filepath", "image", "image_path")
_GLOB_CHARS = frozenset("*?[")


class SourceError(ValueError):
    """A source names nothing: no such file, folder or matching glob, or an unreadable list file."""


def collect_images(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute image paths named by `sources`, in order, each once.

    A folder gives its image files (recursive, sorted, hidden entries skipped); a glob (``*``, ``?``,
    ``[``, ``**``) gives its matches; a ``.txt``/``.lst``/``.csv``/``.tsv`` file gives the paths it lists
    (relative ones are relative to the list file's folder); any other file is taken as an image. Listed
    paths that do not exist are kept, so that the run reports them as bad inputs.
    """
    found: dict[str, Path] = {}
    for source in sources:
        for path in _expand(str(source)):
            found.setdefault(str(path), path)
    return list(found.values())


def _expand(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        return _walk(path)
    if path.is_file():
        return _read_list(path) if path.suffix.lower() in LIST_SUFFIXES else [_absolute(path)]
    if _GLOB_CHARS & set(source):
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        images = [p for m in matches for p in (_walk(Path(m)) if os.path.isdir(m) else [_absolute(Path(m))])]
        images = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise SourceError(f"{source}: the pattern matches no image files")
        return images
    raise SourceError(f"{source}: no such file or folder (pass folders, image files, globs or a .txt/.csv list)")


def _walk(folder: Path) -> list[Path]:
    images = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images.extend(
            _absolute(Path(root) / name)
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return images


def _read_list(list_file: Path) -> list[Path]:
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{list_file}: cannot read this list of paths ({error})") from error
    if list_file.suffix.lower() in (".csv", ".tsv"):
        entries = _csv_paths(text, "\t" if list_file.suffix.lower() == ".tsv" else ",")
    else:
        entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    return [_absolute(p if p.is_absolute() else list_file.parent / p) for p in map(Path, map(os.path.expanduser, entries))]


def _csv_paths(text: str, delimiter: str) -> list[str]:
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in _PATH_COLUMNS if name in header), None)
    if column is None:
        return [row[0].strip() for row in rows]
    return [row[column].strip() for row in rows[1:] if len(row) > column]


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))
