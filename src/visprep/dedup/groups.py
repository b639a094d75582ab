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
    uf = UnionFind(n)
    for x, y in zip(a.tolist(), b.tolist()):
        uf.union(x, y)
    _, labels = np.unique(uf.roots(), return_inverse=True)
    return labels.astype(np.int64)


def canonical_members(labels: np.ndarray, priority: Sequence[tuple]) -> np.ndarray:
    """Index of the canonical member of each item's group: the member with the smallest `priority` tuple."""
    best: dict[int, int] = {}
    for k, g in enumerate(labels.tolist()):
        cur = best.get(g)
        if cur is None or priority[k] < priority[cur]:
            best[g] = k
    return np.asarray([best[g] for g in labels.tolist()], dtype=np.int64)
