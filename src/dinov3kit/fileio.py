"""Writing files without losing what the user had: atomic replacement and exclusive output locks.

Every file dinov3kit writes (checkpoints, exports, pictures, indexes) goes through `atomic_write`: the
bytes go to a temporary file beside the destination, which is flushed and renamed over it in one step,
so a crash or a full disk leaves the old file (or none) rather than half a file. A destination that is
one of the inputs (the same path, a symlink or a hard link to it) is refused before anything is read
into a writer: writing over a memory-mapped source destroys it.

`OutputLock` lets one process at a time write an output. It is an advisory `flock` on `OUT.lock`, so
the operating system releases it when its holder dies: a lock left by a killed run is taken over by
the next run without any clean-up.

`read_regular_file` is the reading side: it reads only regular files (a FIFO would block forever, a
link to /dev/zero would never end) and at most `max_bytes` of them (default 256 MB, `DINOV3KIT_MAX_BYTES`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: locks become no-ops there (documented in OutputLock)
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike

#: Bytes read from one input file at most, unless told otherwise (`--max-bytes`, `$DINOV3KIT_MAX_BYTES`).
DEFAULT_MAX_BYTES = 256 * 2**20
MAX_BYTES_ENV = "DINOV3KIT_MAX_BYTES"
#: Size units: K, M, G and KiB, MiB, GiB are binary; KB, MB, GB decimal, as transformers reads "5GB".
_SIZE_UNITS = {
    "": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
    "KB": 10**3, "MB": 10**6, "GB": 10**9,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Z]*)\s*")
_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class SameFileError(ValueError):
    """The destination of a write is one of its inputs."""


class OutputLockedError(RuntimeError):
    """Another process holds the output's lock."""


class FileRefusedError(OSError):
    """An input that is not read: not a regular file, or larger than the byte limit."""


def parse_size(text: str | int, *, minimum: int = 1) -> int:
    """A byte count from `1000`, `64K`, `256M`, `2GiB` (binary) or `5GB`, `1.5 MB` (decimal, as in
    transformers' `max_shard_size`), at least `minimum`; raises ValueError otherwise."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(str(text).upper())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise ValueError(
                f"a size must be a number of bytes, optionally with K, M, G (binary), KiB, MiB, GiB or KB, MB, GB "
                f"(decimal), e.g. 256M or 5GB; got {text!r}"
            )
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if value < minimum:
        raise ValueError(f"a size must be at least {minimum} byte{'s' * (minimum != 1)}, got {text!r}")
    return value


def default_max_bytes() -> int:
    """The per-file byte limit: `$DINOV3KIT_MAX_BYTES` when set, else `DEFAULT_MAX_BYTES`."""
    configured = os.environ.get(MAX_BYTES_ENV)
    if not configured:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(configured)
    except ValueError as error:
        raise ValueError(f"${MAX_BYTES_ENV}: {error}") from None


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular_file(path: PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of `path`, refusing with `FileRefusedError` anything that is not a regular file (after
    following symlinks) or that holds more than `max_bytes` (default `default_max_bytes()`).

    The file is opened without blocking and checked on the open descriptor, so a FIFO never blocks and a
    file swapped for something else between a check and the read is still caught.
    """
    limit = default_max_bytes() if max_bytes is None else max_bytes
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise FileRefusedError(f"{path}: {file_kind(status.st_mode)}, not a regular file; only regular files are read")
        if status.st_size > limit:
            raise FileRefusedError(_too_big(path, status.st_size, limit))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(descriptor, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > limit:
        raise FileRefusedError(_too_big(path, size, limit))
    return b"".join(chunks)


def _too_big(path: PathLike, size: int, limit: int) -> str:
    return f"{path}: {size} bytes, over the limit of {limit} bytes per file (raise it with --max-bytes or ${MAX_BYTES_ENV})"


def input_files(source: PathLike) -> list[Path]:
    """The local files an input consists of: the file itself, or the files directly in a folder (a
    transformers checkpoint); nothing for a name that is not on disk (a hub id)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path] if path.exists() else []


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or hard links to one inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def refuse_overwriting_sources(destination: PathLike, sources: Iterable[PathLike]) -> None:
    """Raise `SameFileError` if `destination` is any of `sources` (path, symlink or hard link), or, for
    a folder destination, one of the files in it is. One `stat` per source: cheap for long lists."""
    destination = Path(destination)
    try:
        status = os.stat(destination)
    except OSError:
        return  # nothing there yet: nothing to lose
    written = {(status.st_dev, status.st_ino): "it is the same file"}
    if stat.S_ISDIR(status.st_mode):
        for entry in os.scandir(destination):
            with contextlib.suppress(OSError):
                inner = entry.stat()
                written.setdefault((inner.st_dev, inner.st_ino), f"it is {entry.path}, inside the destination")
    for source in sources:
        try:
            source_status = os.stat(source)
        except OSError:
            continue
        reason = written.get((source_status.st_dev, source_status.st_ino))
        if reason:
            raise SameFileError(
                f"{destination}: refusing to write over the input {source} ({reason}); "
                "write to another path and rename it afterwards"
            )


@contextlib.contextmanager
def atomic_write(destination: PathLike, *, sources: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; on success it replaces `destination` atomically.

    The temporary file is removed when the block raises, so a failed write leaves `destination` as it
    was. `sources` are the files the written content is read from; naming the destination among them
    is refused up front (see `refuse_overwriting_sources`).
    """
    destination = Path(destination)
    refuse_overwriting_sources(destination, sources)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        if temporary.is_file():
            with open(temporary, "rb+") as written:
                os.fsync(written.fileno())
            os.chmod(temporary, _mode_for(destination))
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            if temporary.is_dir():
                shutil.rmtree(temporary)
            else:
                temporary.unlink()
        raise


def _mode_for(destination: Path) -> int:
    """Permissions of the file replacing `destination`: its own, else what `open` would give a new file
    (the temporary file was created private, 0600)."""
    try:
        return stat.S_IMODE(os.stat(destination).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(destination: PathLike, data: bytes) -> None:
    """Write `data` to `destination` through `atomic_write`."""
    with atomic_write(destination) as temporary:
        temporary.write_bytes(data)


def lock_path(output: PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".lock")


class OutputLock:
    """An exclusive, process-lifetime lock on an output path, held for a whole run.

    `with OutputLock(out, "dinov3kit embed"):` raises `OutputLockedError` naming the holder's pid when
    another process holds it. The lock file `OUT.lock` stays behind (harmless, reused by the next run).
    On systems without `fcntl` (Windows) the lock is not enforced.
    """

    def __init__(self, output: PathLike, holder: str = "dinov3kit") -> None:
        self.output = Path(output)
        self.holder = holder
        self.path = lock_path(self.output)
        self._handle = None

    def acquire(self) -> OutputLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            handle.close()
            raise OutputLockedError(
                f"another `{self.holder}` (pid {pid}) is writing {self.output}; wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
