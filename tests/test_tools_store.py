"""The Parquet index: atomic chunks, merging, resuming without duplicates, metadata and errors."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dinov3kit.tools.store import (
    IndexFileError,
    IndexWriter,
    ModelMismatchError,
    check_same_model,
    index_schema,
    partial_dir,
    read_index,
    read_meta,
    rows_table,
)

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


def described(digest: str = "d1", sample=(0.5, -0.25), **extra) -> dict:
    return {"model": "/models/tiny", "resolution": 224, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.2, 0.2],
            "dim": DIM, "model_digest": digest, "weight_sample": list(sample), **extra}


def test_the_model_that_made_an_index_is_checked(tmp_path):
    path = Path("index.parquet")
    check_same_model(path, described(), described(sample=(0.501, -0.2502)))  # another dtype of the same weights
    for other, what in [(described(digest="d2"), "weights or config"), (described(sample=(0.9, 0.1)), "weights or config"),
                        (described(resolution=160), "resolution"), (described(image_std=[0.3, 0.3, 0.3]), "image_std")]:
        with pytest.raises(ModelMismatchError, match=f"differs in its {what}.*--allow-model-mismatch"):
            check_same_model(path, described(), other)
        check_same_model(path, described(), other, allow_mismatch=True)
    for allowed in (False, True):  # another width is never comparable
        with pytest.raises(ModelMismatchError, match="holds 4-wide vectors.*makes 8-wide ones"):
            check_same_model(path, described(), described(dim=8), allow_mismatch=allowed)
    old = {"model": "/models/tiny", "resolution": 224}
    with pytest.warns(UserWarning, match="before dinov3kit recorded model digests"):
        check_same_model(path, old, described())


def test_resuming_with_another_model_is_refused(tmp_path):
    out = tmp_path / "index.parquet"
    first = IndexWriter(out, RUN)
    first.check_model(described())
    first.commit(rows(["a"]), [])  # killed here: the chunk folder records the model
    again = IndexWriter(out, RUN)
    with pytest.raises(ModelMismatchError, match="differs in its weights or config"):
        again.check_model(described(digest="other"))
    again.check_model(described())
    again.finish(described())
    assert read_meta(out)["model_digest"] == "d1"
    with pytest.raises(ModelMismatchError, match="4-wide vectors"):
        IndexWriter(out, RUN, allow_model_mismatch=True).check_model(described(dim=8))
    with pytest.raises(ModelMismatchError, match="weights or config"):
        IndexWriter(out, RUN).check_model(described(digest="other"))


def test_corrupt_index_files_are_named_in_short_errors(tmp_path):
    out = tmp_path / "index.parquet"
    writer = IndexWriter(out, RUN)
    writer.commit(rows([f"img{i}" for i in range(50)]), [])
    writer.finish(RUN)
    data = out.read_bytes()
    broken = tmp_path / "broken.parquet"
    for damaged in (data[: len(data) // 2], data[:100] + bytes(200) + data[300:], b"PAR1" + bytes(100) + b"PAR1"):
        broken.write_bytes(damaged)
        with pytest.raises(IndexFileError, match=f"^{broken}: ") as error:
            read_index(broken)
        assert "\n" not in str(error.value) and len(str(error.value)) < 400
    with pytest.raises(IndexFileError, match="a folder, not an index file|not a readable Parquet"):
        read_index(tmp_path)


def test_readers_see_the_last_complete_index_while_it_is_replaced(tmp_path):
    out = tmp_path / "index.parquet"
    writer = IndexWriter(out, RUN)
    writer.commit(rows(["a", "b"]), [])
    writer.finish(RUN)
    with open(out, "rb") as held:  # a reader that opened the file before the merge renames a new one in
        writer = IndexWriter(out, RUN)
        writer.commit(rows(["c"], seed=3), [])
        writer.finish(RUN)
        assert pq.read_table(held).column("path").to_pylist() == ["a", "b"]
    assert read_index(out).paths == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.parquet"]  # no temporary left behind


def test_a_killed_overwrite_keeps_the_old_index_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "index.parquet"
    first = IndexWriter(out, RUN)
    first.commit(rows(["a", "b"]), [])
    first.finish(RUN)
    killed = IndexWriter(out, RUN, overwrite=True)
    killed.commit(rows(["c"]), [])  # killed here
    assert stored_paths(out) == ["a", "b"]
    resumed = IndexWriter(out, RUN)  # the same command without --overwrite goes on replacing
    assert resumed.done == {"c"}
    resumed.commit(rows(["d"], seed=2), [])
    resumed.finish(RUN)
    assert stored_paths(out) == ["c", "d"]
    (partial_dir(out)).mkdir()
    (partial_dir(out) / "run.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="run.json: unreadable.*--overwrite"):
        IndexWriter(out, RUN)
