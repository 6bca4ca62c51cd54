"""`dedup`: groups of near-duplicate images (cosine similarity of their features above a threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .store import Index

#: Scores held at once (rows of a block × all rows): bounds memory to about 5 bytes each (float32 + bool).
SCORE_BUDGET = 1 << 25
#: Rows per block at most.
BLOCK_ROWS = 2048


@dataclass
class Member:
    row: int
    path: str
    similarity: float  # to the group's first member


@dataclass
class DuplicateGroup:
    """Images linked by similarities at or above the threshold (transitively), in row order."""

    group: int
    members: list[Member]

    def to_dict(self) -> dict:
        return {"group": self.group, "members": [member.__dict__ for member in self.members]}


def block_rows(count: int) -> int:
    """Rows compared with the whole index at once, so that a block's scores fit `SCORE_BUDGET`."""
    return max(1, min(BLOCK_ROWS, SCORE_BUDGET // max(1, count)))


def duplicate_components(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Rows linked (transitively) by cosine similarities ≥ `threshold`: connected components of size > 1,
    each sorted, ordered by first row. Blocks of rows are scored against all rows and merged into a
    union-find forest at once, so memory is O(rows × block), never O(pairs)."""
    count = len(vectors)
    parent = np.arange(count)
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    linked = np.zeros(count, dtype=bool)
    step = block_rows(count)
    for start in range(0, count, step):
        scores = matrix[start : start + step] @ matrix.T
        later = torch.arange(count) > torch.arange(start, start + len(scores)).unsqueeze(1)
        hits = ((scores >= threshold) & later).numpy()
        del scores, later
        for offset in np.flatnonzero(hits.any(axis=1)):
            columns = np.flatnonzero(hits[offset])
            roots = np.unique(_roots(parent, np.append(columns, start + offset)))
            parent[roots] = roots[0]
            linked[columns] = True
            linked[start + offset] = True
        parent = _roots(parent, parent)
    groups: dict[int, list[int]] = {}
    for row in np.flatnonzero(linked):
        groups.setdefault(int(parent[row]), []).append(int(row))
    return sorted(groups.values())


def _roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The root of each node in the union-find forest `parent` (vectorised pointer jumping)."""
    roots = parent[nodes]
    while True:
        up = parent[roots]
        if np.array_equal(up, roots):
            return roots
        roots = up


def find_duplicates(index: Index, threshold: float = 0.95) -> list[DuplicateGroup]:
    """Near-duplicate groups of `index`: rows joined when their cosine similarity is ≥ `threshold`."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold is a cosine similarity from -1 to 1 (e.g. 0.95), got {threshold}")
    groups = []
    for number, rows in enumerate(duplicate_components(index.vectors, threshold), 1):
        first = index.vectors[rows[0]]
        members = [Member(row, index.paths[row], float(index.vectors[row] @ first)) for row in rows]
        groups.append(DuplicateGroup(number, members))
    return groups
