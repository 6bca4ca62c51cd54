import os
import stat
import subprocess
import sys

import pytest

from dinov3kit.fileio import (
    FileRefusedError,
    OutputLock,
    OutputLockedError,
    SameFileError,
    atomic_write,
    input_files,
    parse_size,
    read_regular_file,
    refuse_overwriting_sources,
    write_bytes_atomic,
)


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
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~current_umask()  # not the temporary file's 0600
    target.chmod(0o640)
    write_bytes_atomic(target, b"newer")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a replaced file keeps its permissions


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def test_a_folder_destination_holding_an_input_is_refused(tmp_path):
    checkpoint = tmp_path / "hf"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    refuse_overwriting_sources(tmp_path / "elsewhere", [checkpoint / "model.safetensors"])
    with pytest.raises(SameFileError, match="inside the destination"):
        refuse_overwriting_sources(checkpoint, [checkpoint / "model.safetensors"])
    copy = tmp_path / "copy"
    copy.mkdir()
    os.link(checkpoint / "model.safetensors", copy / "model.safetensors")  # writing it in place would change the input
    with pytest.raises(SameFileError, match="inside the destination"):
        refuse_overwriting_sources(copy, [checkpoint / "model.safetensors"])
    assert input_files(checkpoint) == [checkpoint / "model.safetensors"] and input_files("owner/hub-id") == []


@pytest.mark.parametrize(
    "text, value",
    [("1000", 1000), ("64K", 65536), ("256M", 256 * 2**20), ("2g", 2 * 2**30), (7, 7), ("2GiB", 2**31),
     ("5GB", 5 * 10**9), (" 1.5 MB ", 1_500_000), ("1.5G", 3 * 2**29)],
)  # fmt: skip
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-5", "0", "0.1", "12T", "5 GBs"])
def test_bad_sizes_say_what_a_size_is(text):
    with pytest.raises(ValueError, match="a size must"):
        parse_size(text)


def test_only_regular_files_within_the_limit_are_read(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"0123456789")
    assert read_regular_file(data) == read_regular_file(data, max_bytes=10) == b"0123456789"
    with pytest.raises(FileRefusedError, match="10 bytes, over the limit of 9 bytes per file"):
        read_regular_file(data, max_bytes=9)
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(FileRefusedError, match="named pipe"):
        read_regular_file(tmp_path / "pipe.png")
    with pytest.raises(FileRefusedError, match="character device"):
        read_regular_file("/dev/zero")
    with pytest.raises(FileRefusedError, match="a folder"):
        read_regular_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing")
