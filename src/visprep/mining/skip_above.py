"""Behavioural hard negatives from skip-above: results shown above a clicked one and not clicked (Joachims et al.).

The events stage writes them to `interaction_pairs` (kind = "skip_above"). An anchor is the query image when the
row names one that is in the pool, else the anchor product's first image; the negative is the skipped product's
first image. A skipped product that is a positive of the anchor (same group, a known positive pair, or clicked /
bought for the same query) is dropped and counted.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa

from visprep.mining.positives import PositiveSets

POSITIVE_KINDS = ("click", "add_to_cart", "purchase", "coview")


def mine_skip_above_negatives(interactions: pa.Table, *, image_index: dict[str, int],
                              first_image_of_product: dict[str, int], group: np.ndarray, positives: PositiveSets,
                              k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Turn skip-above interaction rows into (anchor, negative) pool indices, the `k` heaviest per anchor.

    Args:
        interactions: the `interaction_pairs` table (anchor_id, anchor_type, anchor_image_id, product_id, kind,
            count, raw_weight, ...).
        image_index: image id -> pool index.
        first_image_of_product: product id -> pool index of its first image.
        group, positives: group codes and positive sets of the pool.
        k: negatives kept per anchor (highest weight first).

    Returns:
        (anchor, negative, weight, rank, counts); counts: rows, unresolved (anchor or product not in the pool),
        positive, beyond_k.
    """
    counts = {"rows": 0, "unresolved": 0, "positive": 0, "beyond_k": 0}
    cols = interactions.to_pydict()
    kinds = cols.get("kind", [])
    clicked: dict[str, set[str]] = defaultdict(set)
    for aid, pid, kind in zip(cols.get("anchor_id", []), cols.get("product_id", []), kinds):
        if kind in POSITIVE_KINDS:
            clicked[aid].add(pid)
    found: dict[tuple[int, int], float] = {}
    for i, kind in enumerate(kinds):
        if kind != "skip_above":
            continue
        counts["rows"] += 1
        aid, atype, aimg, pid = (cols["anchor_id"][i], cols["anchor_type"][i], cols["anchor_image_id"][i],
                                 cols["product_id"][i])
        a = image_index.get(aimg) if aimg else None
        if a is None and atype == "product":
            a = first_image_of_product.get(aid)
        neg = first_image_of_product.get(pid)
        if a is None or neg is None:
            counts["unresolved"] += 1
            continue
        if pid in clicked.get(aid, ()) or np.isin(group[neg], positives.of(a)):
            counts["positive"] += 1
            continue
        w = cols.get("raw_weight", [None] * len(kinds))[i]
        w = float(w if w is not None else cols["count"][i])
        found[(a, neg)] = found.get((a, neg), 0.0) + w
    by_anchor: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for (a, neg), w in found.items():
        by_anchor[a].append((w, neg))
    out_a, out_n, out_w, out_r = [], [], [], []
    for a in sorted(by_anchor):
        ranked = sorted(by_anchor[a], key=lambda t: (-t[0], t[1]))
        counts["beyond_k"] += max(0, len(ranked) - k)
        for r, (w, neg) in enumerate(ranked[:k], start=1):
            out_a.append(a)
            out_n.append(neg)
            out_w.append(w)
            out_r.append(r)
    return (np.array(out_a, np.int64), np.array(out_n, np.int64), np.array(out_w, np.float32),
            np.array(out_r, np.int32), counts)
