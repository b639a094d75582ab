"""The item pool that mining, sampling and experiments read: one row per usable (product, image).

Reads usable images (`views.images`), products (with synth's colour variants) (brand, category), product groups (the split's `group_id` when the
split ran, else `product_groups` from the dedup stage, else the product; products listing the same photo are
merged), and known positive pairs (`pairs`, and click/cart/purchase/co-view rows of `interaction_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visprep.schema import TABLES
from visprep.views.catalog import all_products, all_splits
from visprep.workspace import Workspace


@dataclass
class MiningItems:
    """The pool: one row per usable (product, image), with integer codes for groups and products."""

    image_id: np.ndarray  # object
    product_id: np.ndarray  # object
    split: np.ndarray  # object
    category: np.ndarray  # object
    top_category: np.ndarray  # object
    brand: np.ndarray  # object
    group: np.ndarray  # int64 codes
    product: np.ndarray  # int64 codes
    group_id: np.ndarray  # object: the group id string
    positive_pairs: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_id)


def product_group_map(ws: Workspace) -> dict[str, str]:
    """product -> group: the splits table's group_id (dedup groups plus synthetic colour variants joined to their
    source, the split's own grouping), else `product_groups` before any split exists."""
    if ws.has_table("splits"):
        t = all_splits(ws, ["product_id", "group_id"])
    elif "product_groups" in TABLES and ws.has_table("product_groups"):
        t = ws.read_table("product_groups", ["product_id", "group_id"])
    else:
        return {}
    return {p: g for p, g in zip(t.column("product_id").to_pylist(), t.column("group_id").to_pylist()) if g}


def load_items(ws: Workspace) -> MiningItems:
    """Build the item pool of the workspace (see module docstring)."""
    from visprep.mining.positives import merge_shared_images
    from visprep.mining.skip_above import POSITIVE_KINDS
    from visprep.views.images import usable_images

    imgs = usable_images(ws)
    prod = all_products(ws, ["product_id", "category", "brand"])
    cat_of = dict(zip(prod.column("product_id").to_pylist(), prod.column("category").to_pylist()))
    brand_of = dict(zip(prod.column("product_id").to_pylist(), prod.column("brand").to_pylist()))
    pid = imgs.column("product_id").to_pylist()
    iid = imgs.column("image_id").to_pylist()
    groups = merge_shared_images(pid, iid, product_group_map(ws))
    gid = np.array([groups[p] for p in pid], dtype=object)
    _, gcode = np.unique(gid.astype(str), return_inverse=True) if len(gid) else (None, np.zeros(0, np.int64))
    pnames, pcode = np.unique(np.array(pid, dtype=str), return_inverse=True) if pid else ([], np.zeros(0, np.int64))
    code_of = {p: i for i, p in enumerate(list(pnames))}
    pairs: set[tuple[int, int]] = set()
    pt = ws.read_table("pairs", ["anchor_product_id", "positive_product_id"])
    for a, b in zip(pt.column("anchor_product_id").to_pylist(), pt.column("positive_product_id").to_pylist()):
        if a != b and a in code_of and b in code_of:
            pairs.add((code_of[a], code_of[b]))
    if ws.has_table("interaction_pairs"):
        it = ws.read_table("interaction_pairs", ["anchor_id", "anchor_type", "product_id", "kind"])
        for a, t, b, k in zip(*(it.column(c).to_pylist() for c in ("anchor_id", "anchor_type", "product_id", "kind"))):
            if t == "product" and k in POSITIVE_KINDS and a != b and a in code_of and b in code_of:
                pairs.add((code_of[a], code_of[b]))
    return MiningItems(
        image_id=np.array(iid, dtype=object), product_id=np.array(pid, dtype=object),
        split=np.array(imgs.column("split").to_pylist(), dtype=object),
        category=np.array([cat_of.get(p) for p in pid], dtype=object),
        top_category=np.array(imgs.column("top_category").to_pylist(), dtype=object),
        brand=np.array([brand_of.get(p) for p in pid], dtype=object),
        group=gcode.astype(np.int64), product=np.asarray(pcode, np.int64), group_id=gid,
        positive_pairs=sorted(pairs))
