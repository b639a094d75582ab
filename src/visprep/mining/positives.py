"""Who counts as a positive of an anchor: the same product, the same near-duplicate group, or a known positive pair.

Every miner excludes *all* positives of an anchor, not only the one in a given pair. Positives are held at the
level of product groups: each image has a group code, and each anchor a small sorted set of positive group codes
(its own group plus the groups of products it is paired with).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def merge_shared_images(product_ids: Sequence[str], image_ids: Sequence[str],
                        group_of_product: Mapping[str, str]) -> dict[str, str]:
    """Return product -> group, merging groups whose products share an image id (union-find).

    Args:
        product_ids, image_ids: one row per (product, image) listing.
        group_of_product: the starting groups (a product missing from it is its own group).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # deterministic representative: the smallest group id

    first_group: dict[str, str] = {}
    for pid, iid in zip(product_ids, image_ids):
        g = group_of_product.get(pid, pid)
        find(g)
        if iid in first_group:
            union(first_group[iid], g)
        else:
            first_group[iid] = g
    out = {pid: find(group_of_product.get(pid, pid)) for pid in set(product_ids)}
    for pid, g in group_of_product.items():
        out.setdefault(pid, find(g))
    return out


@dataclass(frozen=True)
class PositiveSets:
    """Per-anchor sets of positive group codes, as CSR arrays.

    Attributes:
        indptr: (N + 1,) int64; anchor i's positive groups are `groups[indptr[i]:indptr[i+1]]`, sorted, unique,
            and always include the anchor's own group.
        groups: int64 group codes.
    """

    indptr: np.ndarray
    groups: np.ndarray

    def of(self, i: int) -> np.ndarray:
        """Anchor i's positive group codes."""
        return self.groups[self.indptr[i] : self.indptr[i + 1]]

    def subset(self, rows: np.ndarray) -> PositiveSets:
        """The positive sets of `rows`, re-indexed 0..len(rows)-1 (group codes unchanged)."""
        rows = np.asarray(rows, np.int64)
        lens = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        take = np.repeat(self.indptr[rows], lens) + (np.arange(indptr[-1]) - np.repeat(indptr[:-1], lens))
        return PositiveSets(indptr=indptr, groups=self.groups[take])

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), max set size) int64 matrix of the positive groups of `rows`, padded with -1."""
        lens = self.indptr[rows + 1] - self.indptr[rows]
        width = int(lens.max()) if len(rows) else 0
        out = np.full((len(rows), max(width, 1)), -1, np.int64)
        for j in range(width):
            has = lens > j
            out[has, j] = self.groups[self.indptr[rows[has]] + j]
        return out

    def contains(self, rows: np.ndarray, candidate_groups: np.ndarray) -> np.ndarray:
        """(len(rows), C) bool: is candidate_groups[r, c] a positive group of anchor rows[r] (negative codes: no).

        Looks each (row, group) key up among the rows' sorted positive keys: memory O(len(rows) x C) whatever the
        set sizes (a product co-viewed with a thousand others has a set of a thousand groups).
        """
        rows = np.asarray(rows, np.int64)
        candidate_groups = np.asarray(candidate_groups, np.int64)
        lens = self.indptr[rows + 1] - self.indptr[rows]
        total = int(lens.sum())
        take = np.repeat(self.indptr[rows], lens) + (np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens))
        width = int(max(self.groups.max(initial=0), candidate_groups.max(initial=0))) + 1
        # Rows ascend and each row's groups are sorted, so the keys are sorted.
        keys = np.repeat(np.arange(len(rows), dtype=np.int64), lens) * width + self.groups[take]
        wanted = np.arange(len(rows), dtype=np.int64)[:, None] * width + candidate_groups
        if not len(keys):
            return np.zeros(candidate_groups.shape, bool)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return (keys[at] == wanted) & (candidate_groups >= 0)


def build_positive_sets(group: np.ndarray, product: np.ndarray,
                        positive_product_pairs: Iterable[tuple[int, int]] = ()) -> PositiveSets:
    """Build each image's positive group set.

    Args:
        group: (N,) int64 group code of each image.
        product: (N,) int64 product code of each image.
        positive_product_pairs: (product code, product code) known positive pairs (undirected): every image of
            either product gets the other's group as a positive.

    Returns:
        `PositiveSets` over the N images.
    """
    n = len(group)
    group = np.asarray(group, np.int64)
    product = np.asarray(product, np.int64)
    pairs = np.asarray(list(positive_product_pairs), np.int64).reshape(-1, 2)
    width = int(group.max(initial=-1)) + 1
    # Built with arrays, not a Python set per group (at 1M products those were hundreds of MiB): each group's set
    # is its own code plus the groups of its products' positive pairs, sorted and unique.
    product_group = np.full(int(max(product.max(initial=-1), pairs.max(initial=-1))) + 1, -1, np.int64)
    product_group[product] = group  # a product's images share its group
    ga, gb = product_group[pairs[:, 0]], product_group[pairs[:, 1]]
    ok = (ga >= 0) & (gb >= 0) & (ga != gb)
    ga, gb = ga[ok], gb[ok]
    own = np.unique(group)
    keys = np.unique(np.concatenate([own * width + own, ga * width + gb, gb * width + ga]))
    set_group, set_member = keys // max(width, 1), keys % max(width, 1)
    set_len = np.bincount(set_group, minlength=width).astype(np.int64)
    set_start = np.cumsum(set_len) - set_len
    lens = set_len[group] if n else np.zeros(0, np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=indptr[1:])
    take = np.repeat(set_start[group], lens) + (np.arange(indptr[-1]) - np.repeat(indptr[:-1], lens))
    groups = set_member[take]
    return PositiveSets(indptr=indptr, groups=groups)
