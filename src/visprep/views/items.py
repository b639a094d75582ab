"""The item pool that mining, sampling and experiments read: one row per usable (product, image).

Reads usable images (`views.images`), products (with synth's colour variants) (brand, category), product groups (the split's `group_id` when the
split ran, else `product_groups` from the dedup stage, else the product; products listing the same photo are
merged), and known positive pairs (`pairs`, and click/cart/purchase/co-view rows of `interaction_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.schema import TABLES
from visprep.views.catalog import all_products, all_splits
from visprep.views.scan import read_columns
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
    _arrow: dict[str, pa.Array] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.image_id)

    def arrow_column(self, name: str) -> pa.Array:
        """String column `name` (image_id, product_id, split, ...) as an Arrow array, made once per pool: the
        dictionary that miners' compact rows index into."""
        if name not in self._arrow:
            self._arrow[name] = pa.array(getattr(self, name), pa.string())
        return self._arrow[name]


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


def _coded_pairs(names: pa.Array, a: pa.ChunkedArray, b: pa.ChunkedArray) -> list[tuple[int, int]]:
    """(code of a, code of b) of the rows whose two products are both among `names` (sorted product ids)."""
    ca, cb = pc.index_in(a, value_set=names), pc.index_in(b, value_set=names)
    both = pc.and_(pc.is_valid(ca), pc.is_valid(cb))
    return list(zip(pc.filter(ca, both).to_pylist(), pc.filter(cb, both).to_pylist()))


def shared_strings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`column` as an object array whose equal values are one Python string (nulls None): a column of few distinct
    values (split, category, brand) costs a pointer per row, not a string object per row as `to_pylist` makes."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    encoded = pc.dictionary_encode(column)
    values = np.empty(len(encoded.dictionary) + 1, dtype=object)  # the extra slot, left None, is the nulls'
    values[:-1] = encoded.dictionary.to_pylist()
    return values[pc.fill_null(encoded.indices, len(encoded.dictionary)).to_numpy(zero_copy_only=False)]


def load_items(ws: Workspace) -> MiningItems:
    """Build the item pool of the workspace (see module docstring)."""
    from visprep.mining.positives import merge_shared_images
    from visprep.mining.skip_above import POSITIVE_KINDS
    from visprep.views.images import usable_images

    imgs = usable_images(ws)
    prod = all_products(ws, ["product_id", "category", "brand"])
    # Each image's product row by Arrow lookup, not dicts of every product (the last row of a product id wins, as
    # a dict built from the rows would have it).
    last = prod.take(pa.array(np.arange(prod.num_rows - 1, -1, -1, dtype=np.int64))) if prod.num_rows else prod
    at = pc.index_in(imgs.column("product_id"), value_set=last.column("product_id").combine_chunks())
    pid = imgs.column("product_id").to_pylist()
    iid = imgs.column("image_id").to_pylist()
    groups = merge_shared_images(pid, iid, product_group_map(ws))
    gid = np.array([groups[p] for p in pid], dtype=object)
    _, gcode = np.unique(gid.astype(str), return_inverse=True) if len(gid) else (None, np.zeros(0, np.int64))
    pnames, pcode = np.unique(np.array(pid, dtype=str), return_inverse=True) if pid else ([], np.zeros(0, np.int64))
    pnames = pa.array(list(pnames), pa.string())
    pairs: set[tuple[int, int]] = set()
    pt = read_columns(ws, "pairs", ["anchor_product_id", "positive_product_id"])
    # Only rows linking two different products make a positive across products (same-product rows are most).
    pt = pt.filter(pc.fill_null(pc.not_equal(pt.column("anchor_product_id"), pt.column("positive_product_id")),
                                False))
    pairs.update(_coded_pairs(pnames, pt.column("anchor_product_id"), pt.column("positive_product_id")))
    if ws.has_table("interaction_pairs"):
        it = read_columns(ws, "interaction_pairs", ["anchor_id", "anchor_type", "product_id", "kind"])
        keep = pc.and_(pc.and_(pc.fill_null(pc.equal(it.column("anchor_type"), "product"), False),
                               pc.fill_null(pc.is_in(it.column("kind"), value_set=pa.array(sorted(POSITIVE_KINDS),
                                                                                            pa.string())), False)),
                       pc.fill_null(pc.not_equal(it.column("anchor_id"), it.column("product_id")), False))
        it = it.filter(keep)
        pairs.update(_coded_pairs(pnames, it.column("anchor_id"), it.column("product_id")))
    return MiningItems(
        image_id=np.array(iid, dtype=object), product_id=np.array(pid, dtype=object),
        split=shared_strings(imgs.column("split")),
        category=shared_strings(last.column("category").take(at)),
        top_category=shared_strings(imgs.column("top_category")),
        brand=shared_strings(last.column("brand").take(at)),
        group=gcode.astype(np.int64), product=np.asarray(pcode, np.int64), group_id=gid,
        positive_pairs=sorted(pairs))
