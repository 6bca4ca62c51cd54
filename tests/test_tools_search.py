"""Exact nearest-neighbour search: blockwise top-k equals a full sort; row-id queries; self exclusion."""

from pathlib import Path

import numpy as np
import pytest

from dinov3kit.tools import search as search_module
from dinov3kit.tools.search import exact_top_k, search_index
from dinov3kit.tools.store import Index


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_index(n: int = 50, dim: int = 8, seed: int = 0) -> Index:
    vectors = unit(np.random.default_rng(seed).normal(size=(n, dim)))
    return Index(Path("index.parquet"), {}, [f"img{i}.jpg" for i in range(n)], vectors)


def test_blockwise_top_k_matches_a_full_sort(monkeypatch):
    monkeypatch.setattr(search_module, "BLOCK_ROWS", 7)
    index = make_index()
    queries = unit(np.random.default_rng(1).normal(size=(3, 8)))
    scores, rows = exact_top_k(index.vectors, queries, 5)
    full = queries @ index.vectors.T
    expected_rows = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected_rows, 1), rtol=1e-6)


def test_row_queries_find_themselves_first_unless_excluded():
    index = make_index()
    (result,) = search_index(index, ["3"], k=4)
    assert result.row == 3 and result.image == "img3.jpg"
    assert result.hits[0].row == 3 and result.hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert [h.rank for h in result.hits] == [1, 2, 3, 4]
    assert all(a.score >= b.score for a, b in zip(result.hits, result.hits[1:]))
    (excluded,) = search_index(index, ["3"], k=4, exclude_self=True)
    assert [h.row for h in excluded.hits] == [h.row for h in result.hits[1:]] + [excluded.hits[-1].row]
    assert 3 not in [h.row for h in excluded.hits]


def test_bad_queries_say_what_is_wrong():
    index = make_index(5)
    with pytest.raises(ValueError, match="out of range"):
        search_index(index, ["9"])
    with pytest.raises(ValueError, match="neither an image file nor a row id"):
        search_index(index, ["nothing.jpg"])
    with pytest.raises(ValueError, match="need a model"):
        search_index(index, [__file__])


def test_faiss_backend_gives_the_exact_results():
    pytest.importorskip("faiss", reason="the optional faiss extra is not installed")
    index = make_index(200, 16)
    exact = search_index(index, ["5", "17"], k=6)
    through_faiss = search_index(index, ["5", "17"], k=6, backend="faiss")
    for a, b in zip(exact, through_faiss):
        assert [h.row for h in a.hits] == [h.row for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=1e-5)
