"""The other-category miner: easy negatives of another top-level category, the spec's "random negatives (easy)"
with the guarantee that they are visually different items. Never an image with itself, never a positive (the
anchor's group, products linked to it by known positive pairs or interactions, lifted to groups)."""

from __future__ import annotations

import numpy as np

from visprep.mining.positives import PositiveSets


def sample_distinct(n_rows: int, pool_size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Return (n_rows, k) indices into a pool, distinct within each row, uniform (Floyd's algorithm, vectorised)."""
    if k > pool_size:
        raise ValueError(f"cannot draw {k} distinct items from a pool of {pool_size}")
    out = np.empty((n_rows, k), dtype=np.int64)
    for col, j in enumerate(range(pool_size - k, pool_size)):
        t = rng.integers(0, j + 1, size=n_rows)
        taken = (out[:, :col] == t[:, None]).any(axis=1)
        out[:, col] = np.where(taken, j, t)
    return out


def other_category_negatives(top: np.ndarray, k: int, rng: np.random.Generator
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row, draw up to `k` distinct rows of another top-level category: (anchor_idx, negative_idx, rank).

    Rows whose category is the only one present get no negatives.
    """
    empty = np.empty(0, np.int64)
    cats, inverse = np.unique(top, return_inverse=True)
    if len(cats) < 2 or k == 0:
        return empty, empty, empty
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(cats) + 1))
    anchors, negs, ranks = [], [], []
    for c in range(len(cats)):
        members = order[bounds[c] : bounds[c + 1]]
        pool = np.concatenate([order[: bounds[c]], order[bounds[c + 1] :]])
        kk = min(k, len(pool))
        chosen = pool[sample_distinct(len(members), len(pool), kk, rng)]
        anchors.append(np.repeat(members, kk))
        negs.append(chosen.reshape(-1))
        ranks.append(np.tile(np.arange(1, kk + 1), len(members)))
    return np.concatenate(anchors), np.concatenate(negs), np.concatenate(ranks)


def mine_other_category_negatives(top: np.ndarray, image_id: np.ndarray, group: np.ndarray, positives: PositiveSets,
                                  *, k: int, rng: np.random.Generator
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Draw `k` items of another top-level category per item of a pool; drop draws of the same image or a positive.

    Args:
        top: (N,) top-level category of each item.
        image_id: (N,) image ids (a photo listed by products of two categories must not be its own negative).
        group: (N,) int64 group codes.
        positives: positive group sets of the N items.
        k: draws per anchor.
        rng: the random generator.

    Returns:
        (anchor, negative, rank, counts): rows into the pool, the draw order 1..k, and counts of dropped draws.
    """
    a, n, rank = other_category_negatives(np.asarray(top).astype(str), k, rng)
    counts = {"same_image": 0, "positive": 0}
    if len(a) == 0:
        return a, n, rank.astype(np.int32), counts
    same = np.asarray(image_id)[a] == np.asarray(image_id)[n]
    order = np.argsort(a, kind="stable")  # `contains` wants ascending anchor rows
    hit = np.empty(len(a), bool)
    hit[order] = positives.contains(a[order], group[n[order]][:, None])[:, 0]
    hit &= ~same
    counts["same_image"], counts["positive"] = int(same.sum()), int(hit.sum())
    keep = ~(same | hit)
    return a[keep], n[keep], rank[keep].astype(np.int32), counts
