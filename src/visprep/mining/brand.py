"""Brand negatives: same category, other brand (hard for a model that learned categories, easy for a person)."""

from __future__ import annotations

import numpy as np

from visprep.mining.other_category import sample_distinct
from visprep.mining.positives import PositiveSets


def mine_brand_negatives(category: np.ndarray, brand: np.ndarray, group: np.ndarray, positives: PositiveSets, *,
                         k: int, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """For each item with a brand, draw up to `k` distinct items of the same category and another (known) brand.

    Args:
        category: (N,) object array of category strings (None: item skipped).
        brand: (N,) object array of brands (None or "": item neither anchor nor negative).
        group: (N,) int64 group codes; positives: their positive sets (drawn positives are dropped and counted).
        k: negatives per anchor.
        rng: the random generator.

    Returns:
        (anchor, negative, rank, counts) like `mine_random_negatives`; counts: positive, anchors_without_brand.
    """
    counts = {"positive": 0, "anchors_without_brand": 0}
    has = np.array([bool(b) and c is not None for b, c in zip(brand.tolist(), category.tolist())], bool)
    counts["anchors_without_brand"] = int((~has).sum())
    anchors, negs, ranks = [], [], []
    idx = np.flatnonzero(has)
    if k and len(idx):
        key_cat = category[idx].astype(str)
        key_brand = brand[idx].astype(str)
        for cat in np.unique(key_cat):
            in_cat = idx[key_cat == cat]
            brands_in = key_brand[key_cat == cat]
            for b in np.unique(brands_in):
                members = in_cat[brands_in == b]
                pool = in_cat[brands_in != b]
                kk = min(k, len(pool))
                if kk == 0:
                    continue
                chosen = pool[sample_distinct(len(members), len(pool), kk, rng)]
                anchors.append(np.repeat(members, kk))
                negs.append(chosen.reshape(-1))
                ranks.append(np.tile(np.arange(1, kk + 1), len(members)))
    if not anchors:
        z = np.zeros(0, np.int64)
        return z, z, z.astype(np.int32), counts
    a, n, r = np.concatenate(anchors), np.concatenate(negs), np.concatenate(ranks)
    bad = np.zeros(len(a), bool)
    for s in range(0, len(a), 8192):
        bad[s : s + 8192] = positives.contains(a[s : s + 8192], group[n[s : s + 8192]][:, None])[:, 0]
    counts["positive"] = int(bad.sum())
    return a[~bad].astype(np.int64), n[~bad].astype(np.int64), r[~bad].astype(np.int32), counts
