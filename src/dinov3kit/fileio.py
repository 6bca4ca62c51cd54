"""Writing files without losing what the user had: atomic replacement and exclusive output locks.

Every file dinov3kit writes (checkpoints, exports, pictures, indexes) goes through `atomic_write`: the
bytes go to a temporary file beside the destination, which is flushed and renamed over it in one step,
so a crash or a full disk leaves the old file (or none) rather than half a file. A destination that is
one of the inputs (the same path, a symlink or a hard link to it) is refused before anything is read
into a writer: writing over a memory-mapped source destroys it.

`OutputLock` lets one process at a time write an output. It is an advisory `flock` on `OUT.lock`, so
the operating system releases it when its holder dies: a lock left by a killed run is taken over by
the next run without any clean-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: locks become no-ops there (documented in OutputLock)
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike


class SameFileError(ValueError):
    """The destination of a write is one of its inputs."""


class OutputLockedError(RuntimeError):
    """Another process holds the output's lock."""


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
    """Raise `SameFileError` if `destination` is any of `sources` (path, symlink or hard link)."""
    for source in sources:
        if same_file(destination, source):
            raise SameFileError(
                f"{destination}: refusing to write over the input {source} (it is the same file); "
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
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            if temporary.is_dir():
                shutil.rmtree(temporary)
            else:
                temporary.unlink()
        raise


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

    def acquire(self) -> "OutputLock":
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

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
