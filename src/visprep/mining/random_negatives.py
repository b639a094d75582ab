"""Random negatives: `k` distinct pool items per anchor, drawn uniformly among its non-positives."""

from __future__ import annotations

import numpy as np

from visprep.mining.positives import PositiveSets


def mine_random_negatives(group: np.ndarray, positives: PositiveSets, *, k: int, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Draw up to `k` distinct non-positive items for every item of the pool.

    Args:
        group: (N,) int64 group codes.
        positives: positive group sets of the N items.
        k: negatives per anchor (fewer when the pool has fewer non-positives).
        rng: the random generator.

    Returns:
        (anchor, negative, rank, counts): (M,) int64, (M,) int64, (M,) int32 draw order 1..k, and counts of
        rejected positive draws and short anchors.
    """
    n = len(group)
    counts = {"positive": 0, "anchors_short": 0}
    if n == 0 or k == 0:
        z = np.zeros(0, np.int64)
        return z, z, z.astype(np.int32), counts
    rows = np.arange(n)
    # Oversample, reject positives and repeats, keep the first k; the few rows left short are redrawn exactly.
    m = min(n, 2 * k + 8)
    draws = rng.integers(0, n, size=(n, m))
    bad = np.zeros(draws.shape, bool)
    for s in range(0, n, 8192):
        r = rows[s : s + 8192]
        bad[s : s + 8192] = positives.contains(r, group[draws[s : s + 8192]])
    counts["positive"] += int(bad.sum())
    srt = np.sort(np.where(bad, -1, draws), axis=1)
    dup = np.zeros_like(bad)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    # Distinct, valid draws in random order: sort-based dedup then shuffle by random keys.
    valid = (srt >= 0) & ~dup
    keys = np.where(valid, rng.random(valid.shape), np.inf)
    order = np.argsort(keys, axis=1)[:, :k]
    picked = np.take_along_axis(srt, order, axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    anchors, negs, ranks = [], [], []
    short = np.flatnonzero(ok.sum(axis=1) < k)
    full = np.setdiff1d(rows, short)
    anchors.append(np.repeat(full, k))
    negs.append(picked[full].reshape(-1))
    ranks.append(np.tile(np.arange(1, k + 1), len(full)))
    for i in short.tolist():  # small pools or anchors with many positives: exact draw
        pool = np.flatnonzero(~np.isin(group, positives.of(i)))
        chosen = rng.permutation(pool)[:k]
        if len(chosen) < k:
            counts["anchors_short"] += 1
        anchors.append(np.full(len(chosen), i))
        negs.append(chosen)
        ranks.append(np.arange(1, len(chosen) + 1))
    return (np.concatenate(anchors).astype(np.int64), np.concatenate(negs).astype(np.int64),
            np.concatenate(ranks).astype(np.int32), counts)
