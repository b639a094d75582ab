"""The sample stage: write `batch_plan` (one row per slot of every planned batch) for the configured splits."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from visprep.sampling.planner import plan_epoch
from visprep.schema import BATCH_PLAN
from visprep.stages import StageOutput
from visprep.workspace import RunRecord, Workspace

if TYPE_CHECKING:
    from visprep.config import SamplingConfig
    from visprep.views.items import MiningItems


def popularity_weights(ws: Workspace, product_ids: list[str], exponent: float) -> np.ndarray:
    """(N,) weight (1 + interactions of the product)^exponent from `interaction_pairs`; ones when absent or 0."""
    if exponent == 0 or not ws.has_table("interaction_pairs"):
        return np.ones(len(product_ids))
    t = ws.read_table("interaction_pairs", ["product_id", "kind", "count"])
    counts: Counter[str] = Counter()
    for p, k, c in zip(*(t.column(x).to_pylist() for x in ("product_id", "kind", "count"))):
        if k != "skip_above":
            counts[p] += int(c or 0)
    return np.array([(1.0 + counts[p]) ** exponent for p in product_ids])


def with_user_photos(ws: Workspace, items: MiningItems) -> tuple[MiningItems, int]:
    """`items` plus one item per exportable user photo (`user_pairs`, as export writes them into the shards), in its
    product's class, group and split: a P x K batch then holds a product's user photos beside its catalog photos."""
    from dataclasses import fields, replace

    from visprep.quality.mix import export_user_pairs

    if not ws.has_table("user_pairs") or len(items) == 0:
        return items, 0
    split_of = dict(zip(items.product_id.tolist(), items.split.tolist()))
    up = export_user_pairs(ws, split_of)
    first: dict[str, int] = {}
    for k, p in enumerate(items.product_id.tolist()):
        first.setdefault(p, k)
    seen = set(zip(items.image_id.tolist(), items.product_id.tolist()))
    photos, src = [], []
    for a, p in zip(up.column("anchor_id").to_pylist(), up.column("anchor_product_id").to_pylist()):
        if p in first and (a, p) not in seen:
            seen.add((a, p))
            photos.append(a)
            src.append(first[p])
    if not photos:
        return items, 0
    rows = np.asarray(src, np.int64)
    extended = {f.name: np.concatenate([getattr(items, f.name), getattr(items, f.name)[rows]])
                for f in fields(items) if isinstance(getattr(items, f.name), np.ndarray)}
    extended["image_id"] = np.concatenate([items.image_id, np.array(photos, dtype=object)])
    return replace(items, **extended), len(photos)


def split_rows(ws: Workspace, items: MiningItems, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of `items` in `split`, their popularity weights, their top-category codes): what the planner reads."""
    rows = np.flatnonzero(items.split == split)
    weight = popularity_weights(ws, items.product_id[rows].tolist(), ws.config.sampling.popularity_exponent)
    top = np.array([str(t) for t in items.top_category[rows]])
    cat_code = np.unique(top, return_inverse=True)[1] if len(rows) else np.zeros(0, np.int64)
    return rows, weight, cat_code


def classes_per_batch(items: MiningItems, rows: np.ndarray, cfg: SamplingConfig) -> int:
    """P for a split: `sampling.p`, or the split's number of product groups when it has fewer (a small catalog
    still gets whole batches; the sample stage notes it). At least 2."""
    return max(2, min(cfg.p, len(np.unique(items.group[rows]))))


def plan_table(items: MiningItems, split: str, epoch: int, planned: tuple[np.ndarray, np.ndarray, np.ndarray],
               cfg: SamplingConfig) -> pa.Table:
    """The `batch_plan` rows of one split and epoch (`planned` from `split_rows`): epoch e is drawn with seed + e,
    so any epoch can be planned again, identically, without the others."""
    rows, weight, cat_code = planned
    plan = plan_epoch(items.product[rows], items.group[rows], cat_code, p=classes_per_batch(items, rows, cfg), k=cfg.k,
                      temperature=cfg.temperature, weight=weight, rng=np.random.default_rng(cfg.seed + epoch))
    b, c, s = np.indices(plan.item.shape)
    local = plan.item.reshape(-1)
    g = rows[local]
    return pa.table({
        "split": pa.array([split] * len(g), pa.string()),
        "epoch": pa.array(np.full(len(g), epoch), pa.int32()),
        "batch": pa.array(b.reshape(-1), pa.int32()),
        "class_index": pa.array(c.reshape(-1), pa.int16()),
        "slot": pa.array(s.reshape(-1), pa.int16()),
        "image_id": pa.array(items.image_id[g].tolist(), pa.string()),
        "product_id": pa.array(items.product_id[g].tolist(), pa.string()),
        "group_id": pa.array(items.group_id[g].tolist(), pa.string()),
        "top_category": pa.array(items.top_category[g].tolist(), pa.string()),
        "repeat": pa.array(plan.repeat.reshape(-1), pa.bool_()),
        "weight": pa.array(weight[local], pa.float32()),
    }, schema=BATCH_PLAN)


def same_image_slots(plan: pa.Table, k: int) -> int:
    """Slots of a plan that repeat an image already in their class's cell (a product with fewer photos than K):
    such a slot is the anchor itself to a contrastive loss, no positive and no negative."""
    images = plan.column("image_id").to_numpy(zero_copy_only=False).reshape(-1, k)
    return int(sum(k - len(set(cell)) for cell in images.tolist()))


def sampling_items(ws: Workspace) -> tuple[MiningItems, int]:
    """The items the planner draws from (usable images plus exportable user photos) and the user-photo count."""
    from visprep.views.items import load_items

    return with_user_photos(ws, load_items(ws))


def sample_stage(ws: Workspace) -> dict[str, int]:
    """Plan `sampling.epochs` epochs of P x K batches per split; return counts (also in the run record)."""
    from visprep.pipeline import execute

    return execute(ws, "sample", compute_sample)


def compute_sample(ws: Workspace, run: RunRecord) -> StageOutput:
    """The sample stage's computation: the `batch_plan` table and its counts."""
    cfg = ws.config.sampling
    counts: dict[str, int] = {}
    notes: list[str] = []
    items, counts["user_photos"] = sampling_items(ws)
    tables = []
    for split in cfg.splits:
        planned = split_rows(ws, items, split)
        if len(planned[0]) == 0:
            notes.append(f"split {split!r}: no usable images")
            continue
        p = classes_per_batch(items, planned[0], cfg)
        if p < cfg.p:
            notes.append(f"split {split!r} has {p} product groups, fewer than sampling.p = {cfg.p}: its batches "
                         f"hold {p} classes")
        counts[f"{split}.p"] = p
        for epoch in range(cfg.epochs):
            table = plan_table(items, split, epoch, planned, cfg)
            tables.append(table)
            counts[f"{split}.epoch{epoch}.batches"] = int(table.num_rows // (p * cfg.k))
            counts[f"{split}.epoch{epoch}.repeats"] = int(np.sum(table.column("repeat").to_numpy(
                zero_copy_only=False)))
            counts[f"{split}.epoch{epoch}.same_image_slots"] = same_image_slots(table, cfg.k)
        counts[f"{split}.items"] = len(planned[0])
    plan = pa.concat_tables(tables) if tables else BATCH_PLAN.empty_table()
    return StageOutput(tables={"batch_plan": plan}, counts=counts, notes=notes, result=counts)
