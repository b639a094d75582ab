"""Class imbalance: per-category counts and the sampling distribution the P x K planner gives after stratification.

The planner (`visprep.sampling.planner.plan_epoch`) cuts each product's images into cells of K; category c holds
n_c cells and is topped up to max(n_c, round(share_c * sum n)) cells with share_c = n_c^(1/T) / sum n^(1/T)
(T = `sampling.temperature`); nobody loses cells. `stratified_shares` is that target as shares of an epoch's
classes (the tail's top-up cells of the last batch aside, which `tests/test_quality_imbalance.py` bounds against
the planner itself). When a `batch_plan` exists, the shares it actually realised are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visprep.views.catalog import all_products
from visprep.workspace import Workspace


def stratified_shares(cells: np.ndarray, temperature: float) -> np.ndarray:
    """(C,) the share of an epoch's classes each category gets after the planner's over-sampling."""
    if temperature < 1:
        raise ValueError(f"temperature must be >= 1, got {temperature}")
    n = np.asarray(cells, np.float64)
    if len(n) == 0 or n.sum() == 0:
        return np.zeros(len(n))
    share = n ** (1.0 / temperature)
    share /= share.sum()
    target = np.maximum(n, np.round(share * n.sum()))
    return target / target.sum()


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest over smallest non-zero count (1 = balanced)."""
    c = np.asarray(counts, np.float64)
    c = c[c > 0]
    return float(c.max() / c.min()) if len(c) else 0.0


@dataclass
class CategoryBalance:
    """Per top-level category: products, sampled images and cells, natural vs stratified vs realised share."""

    temperature: float
    k: int
    splits: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        nat = [r["natural_share"] for r in self.rows]
        strat = [r["stratified_share"] for r in self.rows]
        return {"temperature": self.temperature, "k": self.k, "splits": self.splits, "categories": self.rows,
                "imbalance_ratio_natural": round(imbalance_ratio(np.array(nat)), 3),
                "imbalance_ratio_stratified": round(imbalance_ratio(np.array(strat)), 3), "note": self.note}


def category_balance(ws: Workspace) -> CategoryBalance:
    """Counts and sampling shares by top-level category for the splits `visprep sample` plans."""
    cfg = ws.config.sampling
    res = CategoryBalance(temperature=cfg.temperature, k=cfg.k, splits=list(cfg.splits))
    products = all_products(ws, ["product_id", "top_category"])
    if products.num_rows == 0:
        res.note = "no products"
        return res
    if not ws.has_table("splits"):
        res.note = "no splits table: run `visprep split` for the sampling distribution"
        t = ws.sql("SELECT coalesce(top_category, '(none)') AS category, count(*) AS products, 0 AS images, "
                   "0 AS cells FROM p GROUP BY 1 ORDER BY 1", p=products)
    else:
        from visprep.views.images import usable_images

        imgs = usable_images(ws)
        splits = ", ".join(f"'{s}'" for s in cfg.splits) or "NULL"
        t = ws.sql(f"""
            WITH per AS (
                SELECT product_id, count(*) AS n FROM i WHERE split IN ({splits}) GROUP BY 1)
            SELECT coalesce(p.top_category, '(none)') AS category, count(*) AS products,
                   coalesce(sum(per.n), 0)::BIGINT AS images,
                   coalesce(sum(ceil(per.n / {int(cfg.k)})), 0)::BIGINT AS cells
            FROM p LEFT JOIN per USING (product_id) GROUP BY 1 ORDER BY 1""", i=imgs, p=products)
    cells = t.column("cells").to_numpy(zero_copy_only=False).astype(np.float64)
    nat = cells / cells.sum() if cells.sum() > 0 else np.zeros(len(cells))
    strat = stratified_shares(cells, cfg.temperature)
    realised: dict[str, float] = {}
    if ws.has_table("batch_plan"):
        plan = ws.sql("""SELECT coalesce(top_category, '(none)') AS category, count(*) AS n FROM (
                             SELECT DISTINCT split, epoch, batch, class_index, top_category FROM b) GROUP BY 1""",
                      b=ws.read_table("batch_plan", ["split", "epoch", "batch", "class_index", "top_category"]))
        total = sum(plan.column("n").to_pylist())
        realised = {c: n / total for c, n in zip(plan.column("category").to_pylist(), plan.column("n").to_pylist())}
    for k, row in enumerate(t.to_pylist()):
        res.rows.append({**row, "natural_share": round(float(nat[k]), 6), "stratified_share": round(float(strat[k]), 6),
                         "realised_share": round(realised[row["category"]], 6) if row["category"] in realised
                         else None})
    return res
