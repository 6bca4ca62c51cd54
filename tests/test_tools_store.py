"""The Parquet index: atomic chunks, merging, resuming without duplicates, metadata and errors."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dinov3kit.tools.store import IndexFileError, IndexWriter, index_schema, partial_dir, read_index, read_meta, rows_table

RUN = {"model": "/models/tiny", "resolution": 224, "patches": False}
DIM = 4


def rows(names: list[str], seed: int = 0):
    rng = np.random.default_rng(seed)
    n = len(names)
    return rows_table(
        index_schema(DIM, None),
        {
            "path": names,
            "sha256": [f"hash-{name}" for name in names],
            "width": [10] * n,
            "height": [20] * n,
            "cls": rng.normal(size=(n, DIM)),
            "mean_patch": rng.normal(size=(n, DIM)),
        },
    )


def stored_paths(path: Path) -> list[str]:
    return pq.read_table(path).column("path").to_pylist()


def test_chunks_are_committed_as_valid_parquet_and_merged(tmp_path):
    out = tmp_path / "index.parquet"
    writer = IndexWriter(out, RUN)
    writer.commit(rows(["a", "b"]), [{"path": "bad", "error": "corrupt"}])
    writer.commit(rows(["c"], seed=1), [])
    chunks = sorted(partial_dir(out).glob("*.parquet"))
    assert [pq.read_table(c).num_rows for c in chunks] == [2, 1]
    assert not out.exists()
    meta = writer.finish(RUN | {"dtype": "float32"})
    assert stored_paths(out) == ["a", "b", "c"]
    assert read_meta(out) == meta
    assert meta["rows"] == 3 and meta["dtype"] == "float32"
    assert meta["errors"] == [{"path": "bad", "error": "corrupt"}]
    assert not partial_dir(out).exists()


def test_resume_skips_done_images_and_a_retried_error_disappears(tmp_path):
    out = tmp_path / "index.parquet"
    first = IndexWriter(out, RUN)
    first.commit(rows(["a", "b"]), [{"path": "c", "error": "truncated"}])
    first.finish(RUN)
    killed = IndexWriter(out, RUN)  # a second run, killed after one chunk
    assert killed.resumed and killed.done == {"a", "b"}
    killed.commit(rows(["c"]), [])
    resumed = IndexWriter(out, RUN)
    assert resumed.done == {"a", "b", "c"}
    meta = resumed.finish(None)
    assert stored_paths(out) == ["a", "b", "c"] and meta["errors"] == []


def test_chunks_left_behind_after_a_merge_never_duplicate_rows(tmp_path):
    out = tmp_path / "index.parquet"
    writer = IndexWriter(out, RUN)
    writer.commit(rows(["a", "b"]), [])
    backup = tmp_path / "backup"
    shutil.copytree(partial_dir(out), backup)
    writer.finish(RUN)
    shutil.copytree(backup, partial_dir(out))  # killed between replacing OUT and removing the chunks
    again = IndexWriter(out, RUN)
    again.commit(rows(["c"]), [])
    again.finish(None)
    assert stored_paths(out) == ["a", "b", "c"]


def test_incompatible_runs_are_refused_unless_overwriting(tmp_path):
    out = tmp_path / "index.parquet"
    writer = IndexWriter(out, RUN)
    writer.commit(rows(["a"]), [])
    with pytest.raises(IndexFileError, match="resolution 224 .now 448.*--overwrite"):
        IndexWriter(out, RUN | {"resolution": 448})
    fresh = IndexWriter(out, RUN | {"resolution": 448}, overwrite=True)
    assert fresh.done == set() and not fresh.resumed


def test_read_index_gives_unit_vectors_and_explains_missing_files(tmp_path):
    out = tmp_path / "index.parquet"
    writer = IndexWriter(out, RUN)
    table = rows(["a", "b", "c"])
    writer.commit(table, [])
    with pytest.raises(IndexFileError, match="unfinished run"):
        read_index(out)
    writer.finish(RUN)
    index = read_index(out, "mean_patch")
    expected = np.stack(table.column("mean_patch").to_pylist())
    np.testing.assert_allclose(index.vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    assert index.paths == ["a", "b", "c"]
    with pytest.raises(IndexFileError, match="no such index"):
        read_index(tmp_path / "other.parquet")
    pq.write_table(table, tmp_path / "plain.parquet")
    with pytest.raises(IndexFileError, match="not a dinov3kit index"):
        read_index(tmp_path / "plain.parquet")


def test_patch_grids_are_stored_as_float16(tmp_path):
    schema = index_schema(DIM, (2, 3))
    grid = np.arange(2 * 2 * 3 * DIM, dtype=np.float32).reshape(2, -1) / 7
    table = rows_table(schema, {**{n: rows(["a", "b"]).column(n).to_pylist() for n in ["path", "sha256", "width", "height"]},
                                "cls": np.ones((2, DIM)), "mean_patch": np.ones((2, DIM)), "patches": grid})
    pq.write_table(table, tmp_path / "p.parquet")
    back = pq.read_table(tmp_path / "p.parquet").column("patches")
    assert str(back.type.value_type) == "halffloat"
    np.testing.assert_allclose(np.stack(back.to_pylist()).astype(np.float32), grid, rtol=1e-3)


def test_a_run_killed_before_its_merge_is_finished_without_the_model(tmp_path):
    out = tmp_path / "index.parquet"
    IndexWriter(out, RUN).commit(rows(["a", "b"]), [])  # every image committed, then killed
    meta = IndexWriter(out, RUN).finish(None)  # the resumed run has nothing left to embed
    assert stored_paths(out) == ["a", "b"]
    assert meta["model"] == RUN["model"] and meta["resolution"] == 224 and read_meta(out) == meta
