"""The split stage: assign each product group to a split by a salted hash of its group id.

Groups: a product is its own group (same SKU) unless a `product_groups` table (product_id, group_id; written by
dedup once it exists) puts it with its near-duplicates. Products judged at least `labels.pin_min_grade` for an
eval query are pinned, with their whole group, to `labels.eval_split`, so an eval query's products never train.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.schema import SPLITS, TABLES
from visprep.stages import StageOutput
from visprep.views.scan import read_columns
from visprep.workspace import RunRecord, Workspace

_CHUNK = 65_536


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


def product_groups(ws: Workspace, product_ids: list[str]) -> dict[str, str]:
    """product_id -> group_id: the `product_groups` table where it exists and lists the product, else itself."""
    groups = {pid: pid for pid in product_ids}
    if "product_groups" in TABLES and ws.has_table("product_groups"):
        t = ws.read_table("product_groups", ["product_id", "group_id"])
        for pid, gid in zip(t.column("product_id").to_pylist(), t.column("group_id").to_pylist()):
            if pid in groups and gid:
                groups[pid] = gid
    return groups


def group_ids(ws: Workspace, product_ids: pa.Array) -> pa.Array:
    """The group id of each of `product_ids`: its `product_groups` row's where that lists it (non-empty), else
    itself (the columnar `product_groups`)."""
    if not ("product_groups" in TABLES and ws.has_table("product_groups")):
        return product_ids
    t = read_columns(ws, "product_groups", ["product_id", "group_id"])
    # The last row of a product wins, as in the mapping: reversed, `index_in` finds it first.
    t = t.take(pa.array(np.arange(t.num_rows - 1, -1, -1, dtype=np.int64)))
    gid = t.column("group_id").take(pc.index_in(product_ids, value_set=t.column("product_id").combine_chunks()))
    gid = pc.if_else(pc.fill_null(pc.not_equal(gid, ""), False), gid, product_ids)
    return gid.combine_chunks() if isinstance(gid, pa.ChunkedArray) else gid


def pinned_eval_products(ws: Workspace, *, min_grade: int) -> set[str]:
    """Products judged at least `min_grade` for some eval query (empty without `eval_qrels`)."""
    if not ws.has_table("eval_qrels"):
        return set()
    q = ws.read_table("eval_qrels", ["product_id", "grade"])
    return {p for p, g in zip(q.column("product_id").to_pylist(), q.column("grade").to_pylist()) if g >= min_grade}


def split_stage(ws: Workspace) -> dict[str, int]:
    """Write `splits` (product_id, group_id, split) for every catalog product; return products per split.

    Synth's colour variants are not read here (the split comes before synth): a variant's split is its source's,
    given by `visprep.views.catalog.all_splits`. The runner rewrites the table only when an assignment changed, so
    downstream stages stay up to date otherwise.
    """
    from visprep.pipeline import execute

    return execute(ws, "split", compute_split)


def compute_split(ws: Workspace, run: RunRecord) -> StageOutput:
    """The split stage's computation: the `splits` table and products per split."""
    cfg = ws.config.split
    labels = ws.config.labels
    pids = read_columns(ws, "products", ["product_id"]).column("product_id").combine_chunks()
    groups = group_ids(ws, pids)
    pinned = pinned_eval_products(ws, min_grade=labels.pin_min_grade)
    if pinned and labels.eval_split not in cfg.fractions:
        raise ValueError(f"labels.eval_split {labels.eval_split!r} is not a split; splits: {list(cfg.fractions)}")
    at = pc.index_in(pa.array(sorted(pinned), pa.string()), value_set=pids)
    pinned_groups = set(groups.take(at.drop_null()).to_pylist())
    # A chunk of products at a time in Python: the hash is per group, the rows stay Arrow.
    chunks = []
    for start in range(0, len(groups), _CHUNK):
        chunk = groups.slice(start, _CHUNK).to_pylist()
        chunks.append(pa.array([labels.eval_split if g in pinned_groups
                                else assign_split(g, cfg.fractions, seed=cfg.seed) for g in chunk], pa.string()))
    splits = pa.chunked_array(chunks, pa.string())
    counts: dict[str, int] = {name: 0 for name in cfg.fractions}
    vc = pc.value_counts(splits)
    for name, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        counts[name] += n
    table = pa.table({"product_id": pids, "group_id": groups, "split": splits.combine_chunks()}, schema=SPLITS)
    return StageOutput(tables={"splits": table}, result=counts,
                       counts={"products_in": len(pids), "pinned_eval_groups": len(pinned_groups),
                               **{f"split_{k}": v for k, v in counts.items()}})
