"""`dedup`: groups of near-duplicate images (cosine similarity of their features above a threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .store import Index

#: Rows compared against the whole index at once (bounds memory to BLOCK_ROWS × N scores).
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


def similar_pairs(vectors: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs of rows (i < j) whose unit vectors have a cosine similarity of at least `threshold`."""
    matrix = torch.from_numpy(vectors)
    pairs = []
    for start in range(0, len(matrix), BLOCK_ROWS):
        scores = matrix[start : start + BLOCK_ROWS] @ matrix.T
        rows = torch.arange(start, start + scores.shape[0]).unsqueeze(1)
        hits = torch.nonzero((scores >= threshold) & (torch.arange(len(matrix)) > rows))
        pairs += [(start + int(i), int(j)) for i, j in hits]
    return pairs


def connected_groups(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size > 1 of the graph with these edges, each sorted, ordered by first row."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[int]] = {}
    for node in sorted({n for pair in pairs for n in pair}):
        components.setdefault(root(node), []).append(node)
    return sorted(components.values())


def find_duplicates(index: Index, threshold: float = 0.95) -> list[DuplicateGroup]:
    """Near-duplicate groups of `index`: rows joined when their cosine similarity is ≥ `threshold`."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    groups = []
    for number, rows in enumerate(connected_groups(len(index.paths), similar_pairs(index.vectors, threshold)), 1):
        first = index.vectors[rows[0]]
        members = [Member(row, index.paths[row], float(index.vectors[row] @ first)) for row in rows]
        groups.append(DuplicateGroup(number, members))
    return groups
