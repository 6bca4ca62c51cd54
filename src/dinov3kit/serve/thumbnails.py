"""Thumbnails of index images, made once and kept in a size-bounded disk cache (least recently used out).

A cached file is named by a hash of the image's absolute path, size in bytes, modification time and
the thumbnail size, so an image changed on disk gets a new thumbnail and nothing a client sends ever
becomes part of a path: the server asks for a row's thumbnail, never for a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from ..fileio import write_bytes_atomic
from ..tools.sources import load_image_file

#: Thumbnail sizes served (longest side in pixels); a small set keeps the cache from holding variants.
SIZES = (128, 256, 512)
DEFAULT_CACHE_BYTES = 512 * 2**20
JPEG_QUALITY = 85


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/dinov3kit/thumbnails (default ~/.cache/dinov3kit/thumbnails)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dinov3kit" / "thumbnails"


def make_thumbnail(path: str, size: int) -> bytes:
    """JPEG bytes of the image at `path` (read and checked as every image file) fitted into size x size."""
    image = load_image_file(path)
    image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class ThumbnailCache:
    """JPEG thumbnails on disk under `folder`, at most `max_bytes` in all (oldest use evicted first).

    The cache reads what an earlier run left in `folder` (in modification-time order) so the bound
    holds across runs. Safe to use from many threads; two servers sharing a folder only cost misses.
    """

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"the thumbnail cache size must be at least 0 bytes, got {max_bytes}")
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[Path, int] = OrderedDict()
        self._total = 0
        self._scan()

    @property
    def total_bytes(self) -> int:
        return self._total

    def _scan(self) -> None:
        if not self.folder.is_dir():
            return
        found = []
        for sub in os.scandir(self.folder):
            if sub.is_dir() and len(sub.name) == 2:
                found += [(entry.stat(), Path(entry.path)) for entry in os.scandir(sub.path) if entry.name.endswith(".jpg")]
        for stat, path in sorted(found, key=lambda item: item[0].st_mtime):
            size = stat.st_size
            self._entries[path] = size
            self._total += size
        with self._lock:
            self._evict()

    def key_path(self, image_path: str, size: int) -> Path:
        """Where the thumbnail of `image_path` at `size` is cached (raises OSError when the image is gone)."""
        absolute = os.path.abspath(image_path)
        stat = os.stat(absolute)
        digest = hashlib.sha256(f"{absolute}\0{stat.st_size}\0{stat.st_mtime_ns}\0{size}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.jpg"

    def get(self, image_path: str, size: int) -> bytes:
        """The JPEG thumbnail of `image_path`, from the cache or made now (and cached)."""
        if size not in SIZES:
            raise ValueError(f"thumbnail size must be one of {', '.join(map(str, SIZES))}, got {size}")
        cached = self.key_path(image_path, size)
        try:
            data = cached.read_bytes()
        except OSError:
            data = None
        if data is not None:
            with self._lock:
                self.hits += 1
                if cached in self._entries:
                    self._entries.move_to_end(cached)
            return data
        data = make_thumbnail(image_path, size)
        self._store(cached, data)
        return data

    def _store(self, cached: Path, data: bytes) -> None:
        with self._lock:
            self.misses += 1
            if len(data) > self.max_bytes:
                return
            write_bytes_atomic(cached, data)
            self._total += len(data) - self._entries.pop(cached, 0)
            self._entries[cached] = len(data)
            self._evict()

    def _evict(self) -> None:
        while self._total > self.max_bytes and self._entries:
            oldest, size = self._entries.popitem(last=False)
            self._total -= size
            oldest.unlink(missing_ok=True)
