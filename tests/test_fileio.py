import os
import subprocess
import sys

import pytest

from dinov3kit.fileio import OutputLock, OutputLockedError, SameFileError, atomic_write, write_bytes_atomic


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
def test_atomic_write_refuses_its_source(tmp_path, kind):
    source = tmp_path / "model.pth"
    source.write_bytes(b"weights")
    destination = {"same": source, "symlink": tmp_path / "link.pth", "hardlink": tmp_path / "hard.pth"}[kind]
    if kind == "symlink":
        destination.symlink_to(source)
    elif kind == "hardlink":
        os.link(source, destination)
    with pytest.raises(SameFileError, match="refusing to write over the input"):
        with atomic_write(destination, sources=[source]):
            pass
    assert source.read_bytes() == b"weights"


def test_output_lock_excludes_other_processes_and_is_freed_by_death(tmp_path):
    out = tmp_path / "index.parquet"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from dinov3kit.fileio import OutputLock; "
         f"l = OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            OutputLock(out, "dinov3kit embed").acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out, "dinov3kit embed"):  # a killed holder's lock is taken over
        pass
