"""`inputs`: tables of paths, WebDataset shards (brace-expanded), fsspec URLs, for the local engine
(tests/test_tools_ray.py runs the same inputs through the ray engine)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dinov3kit.cli import main
from dinov3kit.tools.embed import embed_images
from dinov3kit.tools.inputs import Item, collect_items, expand_braces, read_bytes
from dinov3kit.tools.runtime import Embedder
from dinov3kit.tools.sources import SourceError
from oracles.hf_twin import save_hf_vit

PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "photos"
NAMES = sorted(p.name for p in PHOTOS.glob("*.jpg"))


def write_shards(folder: Path, per_shard: int = 3) -> list[tuple[str, str, dict]]:
    """img2dataset-style shards `folder/000{0,1}.tar` of the example photos: (shard, key, metadata) per sample."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for number in range(2):
        shard = folder / f"{number:04d}.tar"
        with tarfile.open(shard, "w") as archive:
            for index, name in enumerate(NAMES[number * per_shard : (number + 1) * per_shard]):
                key = f"{number:04d}{index:04d}"
                meta = {"url": f"https://example.com/{name}", "key": key}
                members = {f"{key}.jpg": (PHOTOS / name).read_bytes(), f"{key}.json": json.dumps(meta).encode(), f"{key}.txt": name.encode()}
                for member, data in members.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
                samples.append((str(shard), key, meta))
    return samples


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Embedder:
    _, folder = save_hf_vit(tmp_path_factory.mktemp("vit") / "hf", seed=5, num_register_tokens=4)
    return Embedder.load(folder, device="cpu", resolution=160)


def rows(index: Path) -> dict[str, dict]:
    table = pq.read_table(index).to_pylist()
    return {row["path"]: row for row in table}


def test_brace_expansion_keeps_padding_and_order():
    assert expand_braces("s/{0008..0011}.tar") == ["s/0008.tar", "s/0009.tar", "s/0010.tar", "s/0011.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_shards_give_one_item_per_sample_with_its_metadata(tmp_path):
    samples = write_shards(tmp_path / "shards")
    items = collect_items([str(tmp_path / "shards" / "{0000..0001}.tar")])
    assert [item.key for item in items] == [f"{shard}/{key}" for shard, key, _ in samples]
    first = dict(items[0].extra)
    assert first["key"] == samples[0][1] and first["shard"] == samples[0][0]
    assert json.loads(first["json"]) == samples[0][2] and first["txt"] == NAMES[0]
    assert read_bytes(items[4]) == (PHOTOS / NAMES[4]).read_bytes()


def test_tables_of_paths_parquet_and_csv(tmp_path):
    table = pa.table({"id": [1, 2, 3], "image_path": [str(PHOTOS / NAMES[0]), NAMES[1], f"file://{PHOTOS / NAMES[2]}"]})
    shutil.copy(PHOTOS / NAMES[1], tmp_path / NAMES[1])
    pq.write_table(table, tmp_path / "paths.parquet")
    keys = [item.key for item in collect_items([tmp_path / "paths.parquet"])]
    assert keys == [str(PHOTOS / NAMES[0]), str(tmp_path / NAMES[1]), str(PHOTOS / NAMES[2])]
    (tmp_path / "list.csv").write_text("id,where\n1," + str(PHOTOS / NAMES[3]) + "\n")
    assert [i.key for i in collect_items([tmp_path / "list.csv"], path_column="where")] == [str(PHOTOS / NAMES[3])]
    with pytest.raises(SourceError, match="no column 'nope'.*--path-column"):
        collect_items([tmp_path / "paths.parquet"], path_column="nope")
    pq.write_table(pa.table({"id": [1]}), tmp_path / "nopath.parquet")
    with pytest.raises(SourceError, match="nopath.parquet: no path column"):
        collect_items([tmp_path / "nopath.parquet"])
    with pytest.raises(SourceError, match="no such WebDataset shard"):
        collect_items([tmp_path / "missing-{0..1}.tar"])


def test_fsspec_memory_and_file_urls(tmp_path):
    memory = fsspec.filesystem("memory")
    for name in NAMES[:2]:
        memory.pipe(f"/photos/{name}", (PHOTOS / name).read_bytes())
    items = collect_items(["memory://photos/"])
    assert [item.key for item in items] == [f"memory:///photos/{name}" for name in NAMES[:2]]
    assert read_bytes(items[1]) == (PHOTOS / NAMES[1]).read_bytes()
    assert [i.key for i in collect_items([f"file://{PHOTOS}"])] == [str(PHOTOS / name) for name in NAMES]
    with pytest.raises(SourceError, match="names no image files"):
        memory.pipe("/empty/readme.md", b"x")
        collect_items(["memory://empty/"])


def test_local_engine_embeds_shards_tables_and_urls_as_it_embeds_files(vit, tmp_path):
    write_shards(tmp_path / "shards")
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/more/{NAMES[0]}", (PHOTOS / NAMES[0]).read_bytes())
    pq.write_table(pa.table({"url": ["memory:///more/" + NAMES[0], str(PHOTOS / "missing.jpg")]}), tmp_path / "urls.parquet")
    sources = [str(tmp_path / "shards" / "{0000..0001}.tar"), tmp_path / "urls.parquet"]
    summary = embed_images(sources, tmp_path / "mixed.parquet", embedder=vit, workers=0, progress=False)
    assert (summary.found, summary.embedded, summary.failed) == (8, 7, 1)
    assert summary.errors == [{"path": str(PHOTOS / "missing.jpg"), "error": "no such file"}]
    embed_images([PHOTOS], tmp_path / "files.parquet", embedder=vit, workers=0, progress=False)
    mixed, files = rows(tmp_path / "mixed.parquet"), rows(tmp_path / "files.parquet")
    for row in mixed.values():
        name = row["txt"] or row["path"].rsplit("/", 1)[1]
        np.testing.assert_allclose(row["cls"], files[str(PHOTOS / name)]["cls"], rtol=1e-5, atol=1e-6)
        assert row["sha256"] == files[str(PHOTOS / name)]["sha256"]
    shard_row = next(row for row in mixed.values() if row["key"])
    assert json.loads(shard_row["json"])["key"] == shard_row["key"] and shard_row["shard"].endswith(".tar")
    resumed = embed_images(sources, tmp_path / "mixed.parquet", embedder=vit, workers=0, progress=False)
    assert (resumed.skipped, resumed.embedded) == (7, 0)


def test_cli_path_column_and_ray_only_options(vit, tmp_path, capsys):
    (tmp_path / "list.csv").write_text("n,img\n1," + str(PHOTOS / NAMES[0]) + "\n")
    code = main(["embed", str(tmp_path / "list.csv"), "-o", str(tmp_path / "i.parquet"), "--model", vit.source,
                 "--resolution", "160", "--path-column", "img", "-q", "--workers", "0"])
    assert code == 0 and list(rows(tmp_path / "i.parquet")) == [str(PHOTOS / NAMES[0])]
    assert main(["embed", str(PHOTOS), "-o", str(tmp_path / "j.parquet"), "--decode-cpus", "2"]) == 2
    assert "--decode-cpus: options of --engine ray" in capsys.readouterr().err
    assert main(["embed", str(PHOTOS), "-o", str(tmp_path / "j.parquet"), "--workers", "1,2"]) == 2
    assert "local engine" in capsys.readouterr().err


def test_items_are_plain_data():
    item = Item("k", "/x.tar", 512, 10, (("key", "k"),))
    assert item == Item("k", "/x.tar", 512, 10, (("key", "k"),)) and hash(item)


def test_the_local_engine_never_imports_ray(vit, tmp_path):
    code = (
        "import sys; from dinov3kit.cli import main; "
        f"main(['embed', {str(PHOTOS / NAMES[0])!r}, '-o', {str(tmp_path / 'x.parquet')!r}, '--model', {vit.source!r}, "
        "'--resolution', '160', '--workers', '0', '-q']); print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr
