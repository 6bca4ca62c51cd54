"""`embed --engine ray` on a local Ray instance (2 CPUs, started here): the same rows as the local
engine, every input kind, bad images, exactly once when a model actor or the driver is killed, the
lock, and the folder index read by search, dedup, info and merge."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from dinov3kit.cli import main  # noqa: E402
from dinov3kit.fileio import OutputLock, OutputLockedError  # noqa: E402
from dinov3kit.tools.embed import BadImageError, embed_images  # noqa: E402
from dinov3kit.tools.ray_engine import parse_workers  # noqa: E402
from dinov3kit.tools.store import read_index, read_meta, shard_files  # noqa: E402
from oracles.hf_twin import save_hf_vit  # noqa: E402
from test_tools_inputs import write_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "photos"
RUN_KEYS_ONLY_IN_FOLDERS = ("engine", "shards")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    _, folder = save_hf_vit(tmp_path_factory.mktemp("vit") / "hf", seed=5, num_register_tokens=4)
    return folder


def photos(folder: Path, copies: int = 1, bad: bool = True) -> Path:
    """The example photos (`copies` times, under other names) and, with `bad`, a corrupt and an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        for photo in PHOTOS.glob("*.jpg"):
            shutil.copy(photo, folder / f"{copy:03d}_{photo.name}")
    if bad:
        (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
        (folder / "empty.png").write_bytes(b"")
    return folder


def rows(index: Path) -> dict[str, dict]:
    files = shard_files(index) if index.is_dir() else [index]
    table = [row for file in files for row in pq.read_table(file).to_pylist()]
    keyed = {row["path"]: row for row in table}
    assert len(keyed) == len(table), "a path appears more than once"
    return keyed


def assert_same_rows(ray_index: Path, local_index: Path) -> None:
    got, expected = rows(ray_index), rows(local_index)
    assert sorted(got) == sorted(expected)
    for path, row in expected.items():
        for name, value in row.items():
            if isinstance(value, list):
                np.testing.assert_allclose(np.array(got[path][name], np.float32), np.array(value, np.float32), rtol=0, atol=1e-6, err_msg=f"{path} {name}")
            else:
                assert got[path][name] == value, (path, name)


def test_workers_parse_as_n_or_min_max():
    assert parse_workers("3") == 3 and parse_workers("1,4") == (1, 4) and parse_workers(None) is None
    for bad in ("0", "4,2", "a", "1,2,3"):
        with pytest.raises(ValueError, match="workers"):
            parse_workers(bad)


def test_ray_rows_and_metadata_equal_the_local_engine(cluster, model, tmp_path, capsys):
    images = photos(tmp_path / "images")
    options = dict(model=model, resolution=160, device="cpu", patches=True, progress=False)
    local = embed_images([images], tmp_path / "local.parquet", workers=0, **options)
    summary = embed_images([images], tmp_path / "out", engine="ray", batch_size=3, chunk_size=1, **options)
    assert (summary.found, summary.embedded, summary.failed, summary.skipped) == (8, 6, 2, 0)
    assert sorted(map(str, summary.errors)) == sorted(map(str, local.errors))
    assert len(shard_files(tmp_path / "out")) >= 2
    assert_same_rows(tmp_path / "out", tmp_path / "local.parquet")
    folder_meta, file_meta = read_meta(tmp_path / "out"), read_meta(tmp_path / "local.parquet")
    assert folder_meta["engine"] == "ray"
    assert {k: v for k, v in folder_meta.items() if k not in RUN_KEYS_ONLY_IN_FOLDERS} == file_meta | {"errors": folder_meta["errors"]}
    assert sorted(map(str, folder_meta["errors"])) == sorted(map(str, file_meta["errors"]))
    errors = pq.read_table(tmp_path / "out" / "_errors.parquet").to_pylist()
    assert sorted(e["path"] for e in errors) == sorted(str(images / n) for n in ("broken.jpg", "empty.png"))

    # Readers take the folder as they take a file: read_index, search, dedup, info, merge.
    folder_index, file_index = read_index(tmp_path / "out"), read_index(tmp_path / "local.parquet")
    order = np.argsort(folder_index.paths)
    np.testing.assert_allclose(folder_index.vectors[order], file_index.vectors[np.argsort(file_index.paths)], atol=1e-6)
    assert main(["search", str(tmp_path / "out"), str(images / "000_cat.jpg"), "-k", "1", "--json"]) == 0
    assert '"path": "' + str(images / "000_cat.jpg") in capsys.readouterr().out
    assert main(["dedup", str(tmp_path / "out"), "--format", "csv"]) == 0
    assert main(["info", str(tmp_path / "out")]) == 0
    assert "2 bad inputs" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "out"), "-o", str(tmp_path / "merged.parquet")]) == 0
    assert_same_rows(tmp_path / "merged.parquet", tmp_path / "local.parquet")
    merged_meta = read_meta(tmp_path / "merged.parquet")
    assert {k: v for k, v in merged_meta.items() if k != "errors"} == {k: v for k, v in file_meta.items() if k != "errors"}

    # Rerunning skips what is committed; bad images are tried again (and fail again).
    again = embed_images([images], tmp_path / "out", engine="ray", **options)
    assert (again.skipped, again.embedded, again.failed) == (6, 0, 2)
    assert_same_rows(tmp_path / "out", tmp_path / "local.parquet")


def test_webdataset_and_parquet_of_paths(cluster, model, tmp_path):
    write_shards(tmp_path / "shards")
    pq.write_table(pa.table({"image": [str(p) for p in sorted(PHOTOS.glob("*.jpg"))[:2]] + [str(tmp_path / "gone.jpg")]}),
                   tmp_path / "paths.parquet")
    sources = [f"file://{tmp_path}/shards/{{0000..0001}}.tar", tmp_path / "paths.parquet"]
    options = dict(model=model, resolution=160, device="cpu", progress=False, path_column="image")
    local = embed_images(sources, tmp_path / "local.parquet", workers=0, **options)
    summary = embed_images(sources, tmp_path / "out", engine="ray", batch_size=4, **options)
    assert (summary.embedded, summary.failed) == (local.embedded, local.failed) == (8, 1)
    assert_same_rows(tmp_path / "out", tmp_path / "local.parquet")
    shard_rows = [row for row in rows(tmp_path / "out").values() if row["key"] is not None]
    assert len(shard_rows) == 6 and all(row["json"] and row["txt"] and row["shard"].endswith(".tar") for row in shard_rows)


def test_strict_stops_at_a_bad_image_and_the_lock_refuses_a_second_run(cluster, model, tmp_path):
    images = photos(tmp_path / "images")
    with pytest.raises(BadImageError, match="strict mode"):
        embed_images([images], tmp_path / "out", engine="ray", model=model, resolution=160, device="cpu", strict=True, progress=False)
    with OutputLock(tmp_path / "out2", "dinov3kit embed"):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            embed_images([images], tmp_path / "out2", engine="ray", model=model, resolution=160, device="cpu", progress=False)
    (tmp_path / "file.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="single-file index"):
        embed_images([images], tmp_path / "file.parquet", engine="ray", model=model, progress=False)


def _descendants_named(ancestor: int, fragment: str) -> list[int]:
    """Processes below `ancestor` whose command line (Ray's process title) contains `fragment`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if fragment not in title:
                continue
            pid = int(entry.name)
            while pid > 1:
                pid = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("PPid:")))
                if pid == ancestor:
                    found.append(int(entry.name))
                    break
        except (OSError, StopIteration, ValueError):
            continue
    return found


def test_a_model_actor_killed_mid_run_is_replaced_and_every_image_lands_once(cluster, model, tmp_path):
    images = photos(tmp_path / "images", copies=6, bad=False)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_the_actor_after_the_first_shard() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            actors = _descendants_named(os.getpid(), "MapWorker(MapBatches(ModelActor))")
            if actors and out.is_dir() and shard_files(out):
                os.kill(actors[0], signal.SIGKILL)
                killed.append(len(shard_files(out)))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_actor_after_the_first_shard)
    killer.start()
    summary = embed_images([images], out, engine="ray", model=model, resolution=160, device="cpu", batch_size=1, chunk_size=1, progress=False)
    killer.join()
    assert killed, "the model actor was never killed"
    assert killed[0] < len(shard_files(out)), "the run had finished before the kill"
    assert (summary.embedded, summary.failed) == (36, 0)
    assert sorted(rows(out)) == sorted(str(p) for p in images.glob("*.jpg"))


@pytest.mark.slow  # a second driver process (torch and ray imports, its own model actor): about a minute
def test_a_killed_driver_is_resumed_by_rerunning(cluster, model, tmp_path):
    images = photos(tmp_path / "images", copies=6, bad=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dinov3kit.cli", "embed", str(images), "-o", str(out), "--engine", "ray", "--address", cluster,
               "--model", str(model), "--resolution", "160", "--device", "cpu", "--batch-size", "1", "--chunk-size", "1", "-q"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and shard_files(out)) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert driver.poll() is None, driver.stdout.read().decode()
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    committed = set(rows(out))
    assert 0 < len(committed) < 36
    summary = embed_images([images], out, engine="ray", model=model, resolution=160, device="cpu", progress=False)
    assert summary.skipped == len(committed) and summary.embedded == 36 - len(committed)
    assert sorted(rows(out)) == sorted(str(p) for p in images.glob("*.jpg"))
