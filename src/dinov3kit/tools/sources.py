"""Which images a command works on (folders, globs, image files and list files of paths), and reading
them within bounds: only regular files, at most `max_bytes` each, each real folder walked once."""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..fileio import FileRefusedError, read_regular_file
from ..images import ImageLoadError, load_image

#: Suffixes taken when walking a folder or expanding a glob (named files are taken whatever their suffix).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".avif"}
)
#: Files read as lists of image paths, one a line (CSV/TSV: the `path` column, else the first).
LIST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".tsv"})
_PATH_COLUMNS = ("path", "file", "filename", "filepath", "image", "image_path")
_GLOB_CHARS = frozenset("*?[")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class SourceError(ValueError):
    """A source names nothing: no such file, folder or matching glob, or an unreadable list file."""


def collect_images(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute image paths named by `sources`, in order, each once.

    A folder gives its image files (recursive, sorted, hidden entries skipped); a glob (``*``, ``?``,
    ``[``, ``**``) gives its matches; a ``.txt``/``.lst``/``.csv``/``.tsv`` file gives the paths it lists
    (relative ones are relative to the list file's folder); any other file is taken as an image. Listed
    paths that do not exist, and special files (FIFOs, devices) met in folders, are kept, so that the
    run reports them as bad inputs. Symlinks are followed, each real folder once (loops end). URLs are
    refused: only local files are read here.
    """
    found: dict[str, Path] = {}
    for source in sources:
        for path in _expand(str(source)):
            found.setdefault(str(path), path)
    return list(found.values())


def _expand(source: str) -> list[Path]:
    if _URL.match(source):
        raise SourceError(f"{source}: a URL; dinov3kit reads local files only here (download the images first)")
    path = Path(source).expanduser()
    if path.is_dir():
        return _walk(path)
    if path.is_file():
        return _read_list(path) if path.suffix.lower() in LIST_SUFFIXES else [_absolute(path)]
    if path.exists():  # a FIFO, a device, ...: kept, and refused without blocking when it is read
        return [_absolute(path)]
    if _GLOB_CHARS & set(source):
        images = [p for m in _glob(source) for p in (_walk(Path(m)) if os.path.isdir(m) else [_absolute(Path(m))])]
        images = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise SourceError(f"{source}: the pattern matches no image files")
        return images
    raise SourceError(f"{source}: no such file or folder (pass folders, image files, globs or a .txt/.csv list)")


def _glob(pattern: str) -> list[str]:
    """Matches of `pattern`, sorted. A recursive ``**`` is matched over `_walk` (Python's glob follows
    symlink loops, repeating matches and, with two loops, running for ever)."""
    pattern = os.path.expanduser(pattern)
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    if not base.is_dir():
        return []
    matcher = re.compile(_glob_regex(parts[fixed:]))
    return sorted(
        str(p) for p in _walk(base, all_files=True) if matcher.fullmatch(Path(os.path.relpath(p, base.absolute())).as_posix())
    )


def _glob_regex(parts: tuple[str, ...]) -> str:
    """A regex for relative POSIX paths matching the glob components `parts` (``**`` spans folders)."""
    pieces = []
    for number, part in enumerate(parts, 1):
        if part == "**":
            pieces.append(".+/" if number == len(parts) else "(?:[^/]+/)*")
            continue
        piece = ""
        for char in re.split(r"(\*|\?|\[[^\]]*\])", part):
            if char == "*":
                piece += "[^/]*"
            elif char == "?":
                piece += "[^/]"
            elif char.startswith("[") and char.endswith("]") and len(char) > 2:
                piece += "[" + ("^" + char[2:-1] if char[1] == "!" else char[1:-1]) + "]"
            else:
                piece += re.escape(char)
        pieces.append(piece + "/")
    return "".join(pieces).removesuffix("/")


def _walk(folder: Path, all_files: bool = False) -> list[Path]:
    """Image files under `folder` (every file with `all_files`), sorted, hidden entries skipped; symlinks
    are followed but each real folder is entered once, so a loop neither repeats images nor runs forever."""
    images = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            status = os.stat(root)
        except OSError:  # removed or unreadable meanwhile
            dirs[:] = []
            continue
        if (status.st_dev, status.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images.extend(
            _absolute(Path(root) / name)
            for name in sorted(files)
            if not name.startswith(".") and (all_files or Path(name).suffix.lower() in IMAGE_SUFFIXES)
        )
    return images


def _read_list(list_file: Path) -> list[Path]:
    try:
        text = read_regular_file(list_file).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"{list_file}: cannot read this list of paths ({str(error).removeprefix(f'{list_file}: ')})") from None
    if list_file.suffix.lower() in (".csv", ".tsv"):
        entries = _csv_paths(text, "\t" if list_file.suffix.lower() == ".tsv" else ",")
    else:
        entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    urls = [e for e in entries if _URL.match(e)]
    if urls:
        raise SourceError(
            f"{list_file}: lists {len(urls)} URL(s), e.g. {urls[0]}; dinov3kit reads local files only here "
            "(download the images and list their paths)"
        )
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


def read_image_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of an image file: a regular file of at most `max_bytes` (default 256 MB, see
    `dinov3kit.fileio.default_max_bytes`); raises `ImageLoadError` naming the file otherwise."""
    name = str(path)
    try:
        return read_regular_file(path, max_bytes)
    except FileRefusedError as error:
        raise ImageLoadError(name, str(error).removeprefix(f"{name}: ")) from None
    except FileNotFoundError:
        raise ImageLoadError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "is a folder, not an image file") from None
    except OSError as error:
        raise ImageLoadError(name, f"cannot read the file ({error.strerror or error})") from None


def load_image_file(image: str | os.PathLike | Image.Image, max_bytes: int | None = None) -> Image.Image:
    """`image` decoded (a PIL image is returned as is), read through `read_image_bytes`; errors name the file."""
    if isinstance(image, Image.Image):
        return image
    try:
        return load_image(read_image_bytes(image, max_bytes))
    except ImageLoadError as error:
        raise ImageLoadError(str(image), error.reason) from None
