"""Union-find over accepted duplicate edges: product groups with a canonical product each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        """Return the root of `x`."""
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return int(x)

    def union(self, a: int, b: int) -> bool:
        """Join the sets of `a` and `b`; True when they were apart."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def roots(self) -> np.ndarray:
        """(n,) root of every element."""
        return np.fromiter((self.find(x) for x in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


def connected_groups(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (0..G-1, in order of first member) of each of `n` items joined by edges (a[k], b[k])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.empty(0, np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # Relabel so labels follow the first member of each component (what the union-find version gave).
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[comp]


def canonical_members(labels: np.ndarray, priority: Sequence[tuple]) -> np.ndarray:
    """Index of the canonical member of each item's group: the member with the smallest `priority` tuple."""
    n = len(labels)
    if n == 0:
        return np.empty(0, np.int64)
    # Rank the priority tuples once (a Python sort of tuples), then a vectorised per-group minimum of the ranks.
    rank = np.empty(n, np.int64)
    rank[sorted(range(n), key=priority.__getitem__)] = np.arange(n)
    best_rank = np.full(int(labels.max()) + 1, n, np.int64)
    np.minimum.at(best_rank, labels, rank)
    by_rank = np.empty(n, np.int64)
    by_rank[rank] = np.arange(n)
    return by_rank[best_rank[labels]]
