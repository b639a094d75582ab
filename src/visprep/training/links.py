"""Per-anchor candidate lists (mined negatives, event-linked products) and their seeded, rule-checked draws."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from visprep.mining.skip_above import POSITIVE_KINDS


@dataclass(frozen=True)
class LinkTable:
    """Candidates grouped by anchor key, as CSR arrays.

    Attributes:
        indptr: (A + 1,) int64 over the candidate columns; anchor a's candidates are rows indptr[a]:indptr[a+1].
        anchor_of_key: anchor key -> a.
        columns: candidate columns, each (C,) (e.g. image_id, product_id, kind, score, rank, weights).
    """

    indptr: np.ndarray
    anchor_of_key: Mapping[object, int]
    columns: Mapping[str, np.ndarray]

    @classmethod
    def build(cls, keys: Sequence[object], columns: Mapping[str, np.ndarray]) -> LinkTable:
        """Group candidate rows by their anchor key (`keys[i]` is row i's anchor); rows keep their order."""
        uniq: dict[object, int] = {}
        codes = np.fromiter((uniq.setdefault(k, len(uniq)) for k in keys), np.int64, len(keys))
        order = np.argsort(codes, kind="stable")
        indptr = np.zeros(len(uniq) + 1, np.int64)
        np.cumsum(np.bincount(codes, minlength=len(uniq)), out=indptr[1:])
        return cls(indptr, uniq, {name: np.asarray(col)[order] for name, col in columns.items()})

    def candidates(self, key: object) -> np.ndarray:
        """Candidate rows of anchor `key` (empty when it has none)."""
        a = self.anchor_of_key.get(key)
        return np.arange(0) if a is None else np.arange(self.indptr[a], self.indptr[a + 1])


def negative_links(negatives: pa.Table, *, split: str, kinds: Sequence[str]) -> LinkTable:
    """Mined negatives of `split` and `kinds`, keyed by (anchor product, anchor image)."""
    t = negatives.to_pydict()
    keep = [i for i, (s, k) in enumerate(zip(t["split"], t["kind"])) if s == split and k in kinds]
    keys = [(t["anchor_product_id"][i], t["anchor_id"][i]) for i in keep]
    score = np.array([t["score"][i] if t["score"][i] is not None else np.nan for i in keep], np.float32)
    return LinkTable.build(keys, {
        "image_id": np.array([t["negative_id"][i] for i in keep], dtype=object),
        "product_id": np.array([t["negative_product_id"][i] for i in keep], dtype=object),
        "kind": np.array([t["kind"][i] for i in keep], dtype=object),
        "score": score,
        "rank": np.array([t["rank"][i] if t["rank"][i] is not None else -1 for i in keep], np.int32),
    })


def event_links(interactions: pa.Table, *, allowed_products: set[str]) -> LinkTable:
    """Product-to-product positives of `interaction_pairs` (click/cart/purchase/co-view from a product anchor),
    both directions, keyed by product; only products in `allowed_products` (the training split) on either end."""
    t = interactions.to_pydict()
    keys: list[str] = []
    cols: dict[str, list] = {"product_id": [], "kind": [], "raw_weight": [], "debiased_weight": []}
    for a, at, b, kind, raw, deb in zip(t["anchor_id"], t["anchor_type"], t["product_id"], t["kind"],
                                        t["raw_weight"], t["debiased_weight"]):
        if at != "product" or kind not in POSITIVE_KINDS or a == b:
            continue
        if a not in allowed_products or b not in allowed_products:
            continue
        for x, y in ((a, b), (b, a)):
            keys.append(x)
            cols["product_id"].append(y)
            cols["kind"].append(kind)
            cols["raw_weight"].append(float(raw or 0.0))
            cols["debiased_weight"].append(float(deb if deb is not None else (raw or 0.0)))
    return LinkTable.build(keys, {"product_id": np.array(cols["product_id"], dtype=object),
                                  "kind": np.array(cols["kind"], dtype=object),
                                  "raw_weight": np.array(cols["raw_weight"], np.float32),
                                  "debiased_weight": np.array(cols["debiased_weight"], np.float32)})


def draw(candidates: np.ndarray, allowed: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `m` of `candidates` where `allowed`, uniformly without replacement, in draw order."""
    ok = candidates[allowed]
    if len(ok) <= m:
        return ok[rng.permutation(len(ok))]
    return ok[rng.choice(len(ok), size=m, replace=False)]


def not_same_group(anchor_product: str, anchor_group: str, products: np.ndarray,
                   group_of: Mapping[str, str]) -> np.ndarray:
    """(C,) bool: candidate products that are neither the anchor's product nor in the anchor's group."""
    return np.fromiter((p != anchor_product and group_of.get(p, p) != anchor_group for p in products), bool,
                       len(products))
