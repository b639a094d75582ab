"""What happens to training pairs of flagged products: exclude them, down-weight them, or keep them."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

POLICIES = ("exclude", "down_weight", "keep")


def apply_policy(pairs: pa.Table, flagged: Collection[str], *, policy: str, down_weight: float = 0.2
                 ) -> tuple[pa.Table, int]:
    """Return (`pairs` after the policy, number of pairs it touched); a pair is touched when its anchor or positive
    product is flagged.

    Args:
        pairs: a table with anchor_product_id, positive_product_id and weight columns (the `pairs` schema).
        flagged: product ids.
        policy: "exclude" drops the pairs, "down_weight" multiplies their weight by `down_weight`, "keep" leaves them.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown label-issue policy {policy!r}; valid: {list(POLICIES)}")
    if pairs.num_rows == 0 or not flagged:
        return pairs, 0
    value_set = pa.array(sorted(set(flagged)), pa.string())
    hit = pc.or_kleene(pc.is_in(pairs.column("anchor_product_id"), value_set=value_set),
                       pc.is_in(pairs.column("positive_product_id"), value_set=value_set))
    hit = pc.fill_null(hit, False)
    touched = int(pc.sum(hit).as_py() or 0)
    if policy == "exclude":
        return pairs.filter(pc.invert(hit)), touched
    if policy == "down_weight":
        weight = pairs.column("weight").to_numpy(zero_copy_only=False).astype(np.float32)
        weight = np.where(hit.to_numpy(zero_copy_only=False), weight * np.float32(down_weight), weight)
        idx = pairs.column_names.index("weight")
        return pairs.set_column(idx, "weight", pa.array(weight, pairs.schema.field("weight").type)), touched
    return pairs, touched
