"""The split stage: assign each product group to a split by a salted hash of its group id.

Groups: a product is its own group (same SKU) unless a `product_groups` table (product_id, group_id; written by
dedup once it exists) puts it with its near-duplicates. Products judged at least `labels.pin_min_grade` for an
eval query are pinned, with their whole group, to `labels.eval_split`, so an eval query's products never train.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from visprep.schema import SPLITS, TABLES
from visprep.stages import StageOutput
from visprep.workspace import RunRecord, Workspace


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
    pids = ws.read_table("products", ["product_id"]).column("product_id").to_pylist()
    groups = product_groups(ws, pids)
    pinned = pinned_eval_products(ws, min_grade=labels.pin_min_grade)
    if pinned and labels.eval_split not in cfg.fractions:
        raise ValueError(f"labels.eval_split {labels.eval_split!r} is not a split; splits: {list(cfg.fractions)}")
    pinned_groups = {groups[p] for p in pinned if p in groups}
    rows = [{"product_id": pid, "group_id": groups[pid],
             "split": labels.eval_split if groups[pid] in pinned_groups
             else assign_split(groups[pid], cfg.fractions, seed=cfg.seed)}
            for pid in pids]
    counts: dict[str, int] = {name: 0 for name in cfg.fractions}
    for r in rows:
        counts[r["split"]] += 1
    return StageOutput(tables={"splits": pa.Table.from_pylist(rows, schema=SPLITS)}, result=counts,
                       counts={"products_in": len(pids), "pinned_eval_groups": len(pinned_groups),
                               **{f"split_{k}": v for k, v in counts.items()}})
