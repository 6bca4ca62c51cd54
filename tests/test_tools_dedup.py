"""Near-duplicate groups: pairs above the threshold, joined transitively."""

from pathlib import Path

import numpy as np

from dinov3kit.tools import dedup as dedup_module
from dinov3kit.tools.dedup import connected_groups, find_duplicates, similar_pairs
from dinov3kit.tools.store import Index


def test_connected_groups_join_transitively():
    assert connected_groups(7, [(0, 4), (4, 6), (2, 3)]) == [[0, 4, 6], [2, 3]]
    assert connected_groups(3, []) == []


def test_similar_pairs_over_blocks(monkeypatch):
    monkeypatch.setattr(dedup_module, "BLOCK_ROWS", 3)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 16))
    vectors[7] = vectors[1] + 0.01 * rng.normal(size=16)
    vectors[9] = vectors[1] + 0.01 * rng.normal(size=16)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    assert sorted(similar_pairs(vectors, 0.99)) == [(1, 7), (1, 9), (7, 9)]
    index = Index(Path("i.parquet"), {}, [f"{i}.jpg" for i in range(10)], vectors)
    (group,) = find_duplicates(index, 0.99)
    assert [m.row for m in group.members] == [1, 7, 9]
    assert abs(group.members[0].similarity - 1) < 1e-6
    assert all(m.similarity > 0.99 for m in group.members)
    assert find_duplicates(index, 0.999999) == []
