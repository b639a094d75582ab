"""The split stage: assign each product group to a split by a salted hash of its group id."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from visprep.config import section_params
from visprep.schema import SPLITS
from visprep.workspace import Workspace


def assign_split(group_id: str, fractions: dict[str, float], *, seed: int = 0) -> str:
    """Return the split of `group_id`: stable across runs, machines and catalog sizes."""
    digest = hashlib.sha256(f"{seed}\x00{group_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    name = ""
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return name  # u is within float rounding of 1.0


def split_stage(ws: Workspace) -> dict[str, int]:
    """Write `splits` (product_id, group_id, split) for every product; return products per split."""
    cfg = ws.config.split
    with ws.run("split", section_params(ws.config, "split")) as run:
        run.inputs = {"products": ws.table_fingerprint("products")}
        pids = ws.read_table("products", ["product_id"]).column("product_id").to_pylist()
        # Until near-duplicate groups exist, a product is its own group.
        groups = {pid: pid for pid in pids}
        rows = [{"product_id": pid, "group_id": groups[pid], "split": assign_split(groups[pid], cfg.fractions,
                                                                                      seed=cfg.seed)}
                for pid in pids]
        ws.write_table("splits", pa.Table.from_pylist(rows, schema=SPLITS))
        counts: dict[str, int] = {name: 0 for name in cfg.fractions}
        for r in rows:
            counts[r["split"]] += 1
        run.counts = {"products_in": len(pids), **{f"split_{k}": v for k, v in counts.items()}}
    return counts
