"""Near-duplicate groups: rows joined transitively above the threshold, in blocks with a union-find, so
memory stays O(rows × block) whatever the number of pairs."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from dinov3kit.tools import dedup as dedup_module
from dinov3kit.tools.dedup import block_rows, duplicate_components, find_duplicates
from dinov3kit.tools.store import Index


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def reference_components(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components by a plain graph search over the full similarity matrix."""
    linked = (vectors @ vectors.T >= threshold) & ~np.eye(len(vectors), dtype=bool)
    seen, groups = set(), []
    for start in range(len(vectors)):
        if start in seen or not linked[start].any():
            continue
        stack, group = [start], set()
        while stack:
            node = stack.pop()
            if node not in group:
                group.add(node)
                stack.extend(np.flatnonzero(linked[node]).tolist())
        seen |= group
        groups.append(sorted(group))
    return sorted(groups)


@pytest.mark.parametrize("block", [1, 3, 64])
def test_blocked_union_find_equals_a_full_graph_search(monkeypatch, block):
    monkeypatch.setattr(dedup_module, "BLOCK_ROWS", block)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    vectors = unit(np.concatenate([centres[rng.integers(0, 6, 60)] + 0.15 * rng.normal(size=(60, 16)), rng.normal(size=(20, 16))]))
    rng.shuffle(vectors)
    for threshold in (0.9, 0.97, 0.5, -1.0):
        assert duplicate_components(vectors, threshold) == reference_components(vectors, threshold)


def test_groups_members_and_similarities():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 16))
    vectors[7] = vectors[1] + 0.01 * rng.normal(size=16)
    vectors[9] = vectors[1] + 0.01 * rng.normal(size=16)
    index = Index(Path("i.parquet"), {}, [f"{i}.jpg" for i in range(10)], unit(vectors))
    (group,) = find_duplicates(index, 0.99)
    assert [m.row for m in group.members] == [1, 7, 9]
    assert abs(group.members[0].similarity - 1) < 1e-6
    assert all(m.similarity > 0.99 for m in group.members)
    assert find_duplicates(index, 0.999999) == []


def test_threshold_minus_one_on_2000_rows_is_one_group_in_bounded_memory(monkeypatch):
    monkeypatch.setattr(dedup_module, "SCORE_BUDGET", 1 << 18)  # 131 rows × 2000 scores per block
    vectors = unit(np.random.default_rng(1).normal(size=(2000, 32)))
    index = Index(Path("i.parquet"), {}, [f"{i}.jpg" for i in range(2000)], vectors)
    assert block_rows(2000) * 2000 <= 1 << 18
    tracemalloc.start()
    try:
        groups = find_duplicates(index, -1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(g.members) for g in groups] == [2000]
    assert peak < 16 * 2**20, f"dedup held {peak / 2**20:.0f} MiB"  # every pair kept would be ~2M tuples, > 200 MiB


@pytest.mark.parametrize("threshold", [1.5, -2.0, float("nan")])
def test_threshold_out_of_range_is_a_clear_error(threshold):
    index = Index(Path("i.parquet"), {}, ["a.jpg"], unit(np.ones((1, 4))))
    with pytest.raises(ValueError, match="cosine similarity from -1 to 1"):
        find_duplicates(index, threshold)
