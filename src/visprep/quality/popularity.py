"""Popularity bias: per-product exposure and interactions from the events stage's tables, re-sampling weights
(inverse popularity with a temperature), the logQ term that matches the re-sampled distribution, and the
concentration (Gini, head share) of positive-pair mass before and after re-sampling.

Reused, not re-derived: the events stage's `log_q` (log share of the product's click / add-to-cart / purchase /
view events, `visprep.events.interactions`) is `log_q_raw`; the sampler's popularity definition
(`visprep.sampling.stage.popularity_weights`: interactions = summed `count` of non-skip-above interaction pairs)
gives the weights, so `weight` is exactly what `sampling.popularity_exponent = -1/T` draws with, up to a constant;
the events stage's own raw-vs-debiased pair-weight concentration (`visprep.events.debias.concentration`) is
reported beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from visprep.schema import POPULARITY
from visprep.stages import StageOutput
from visprep.views.catalog import all_products
from visprep.workspace import RunRecord, Workspace


def gini_coefficient(values: np.ndarray) -> float:
    """Gini coefficient of non-negative `values` (0 = all equal, -> 1 = all mass on one item)."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    n, total = len(x), float(x.sum())
    if n == 0 or total <= 0:
        return 0.0
    if (x < 0).any():
        raise ValueError(f"gini needs non-negative values, got minimum {x[0]}")
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (i * x).sum() / (n * total) - (n + 1) / n)


def head_share(values: np.ndarray, fraction: float = 0.01) -> float:
    """Share of the total held by the top max(1, ceil(n * fraction)) items."""
    x = np.asarray(values, np.float64).ravel()
    total = float(x.sum())
    if len(x) == 0 or total <= 0:
        return 0.0
    k = max(1, int(np.ceil(len(x) * fraction)))
    return float(np.partition(x, len(x) - k)[len(x) - k:].sum() / total)


def resampling_weights(interactions: np.ndarray, temperature: float) -> np.ndarray:
    """(N,) re-sampling weights (1 + interactions)^(-1/T), scaled to mean 1 (T = 1: inverse popularity)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = np.asarray(interactions, np.float64)
    if (n < 0).any():
        raise ValueError("interactions must be >= 0")
    w = np.power(1.0 + n, -1.0 / temperature)
    return w / w.mean() if len(w) else w


def resampled_log_q(log_q_raw: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """log q' with q' proportional to q * w over the products that have a q (NaN elsewhere): the logQ correction
    term of the re-sampled stream (subtract it from the logit), since re-sampling changes how often each product
    shows up as an in-batch positive."""
    lq = np.asarray(log_q_raw, np.float64)
    w = np.asarray(weight, np.float64)
    ok = np.isfinite(lq) & (w > 0)
    out = np.full(len(lq), np.nan)
    if ok.any():
        z = lq[ok] + np.log(w[ok])
        z_max = z.max()
        out[ok] = z - (z_max + np.log(np.exp(z - z_max).sum()))  # log-softmax: stable for very small q
    return out


@dataclass
class PopularityResult:
    """What one popularity run measured."""

    products: int = 0
    products_with_interactions: int = 0
    temperature: float = 1.0
    before: dict[str, float] = field(default_factory=dict)  # positive-pair mass per product
    after: dict[str, float] = field(default_factory=dict)  # the same mass times the re-sampling weight
    exposure: dict[str, float] = field(default_factory=dict)  # impressions per product
    events_pair_weights: dict[str, float] = field(default_factory=dict)  # events stage: raw vs debiased weights
    run_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"products": self.products, "products_with_interactions": self.products_with_interactions,
                "temperature": self.temperature, "before": self.before, "after": self.after,
                "exposure": self.exposure, "events_pair_weights": self.events_pair_weights}


def concentration_figures(values: np.ndarray, fraction: float) -> dict[str, float]:
    """Gini and head share of `values` (only items with positive mass count), rounded for reports."""
    x = np.asarray(values, np.float64)
    x = x[x > 0]
    return {"gini": round(gini_coefficient(x), 6), f"top{fraction:.0%}_share": round(head_share(x, fraction), 6),
            "items": len(x)}


def product_popularity(ws: Workspace) -> pa.Table:
    """(product_id, exposures, interactions, log_q_raw) for every catalog product and every product in the
    committed events, out of core in DuckDB over the events' Parquet parts."""
    from visprep.events.checkpoint import EventLog
    from visprep.events.duck import sql_list, sql_str, to_arrow
    from visprep.views.db import connect

    parts = EventLog(ws).part_files() if ws.has_table("events") else []
    cfg = ws.config.events
    con = connect(memory_limit=cfg.duckdb_memory_limit, temp_dir=ws.root / "tmp" / "duckdb",
                  threads=cfg.threads or None, preserve_insertion_order=False)
    try:
        if parts:
            con.execute(f"""CREATE TEMP VIEW expo AS SELECT product_id, count(*) AS exposures
                            FROM read_parquet({sql_list(parts)})
                            WHERE type = 'impression' AND product_id IS NOT NULL GROUP BY 1""")
        else:
            con.execute("CREATE TEMP VIEW expo AS SELECT NULL::VARCHAR AS product_id, 0::BIGINT AS exposures "
                        "WHERE false")
        if ws.has_table("interaction_pairs"):
            path = sql_str(str(ws.table_path("interaction_pairs")))
            con.execute(f"""CREATE TEMP VIEW inter AS
                            SELECT product_id, coalesce(sum(count) FILTER (WHERE kind <> 'skip_above'), 0)
                                     AS interactions, any_value(log_q) AS log_q_raw
                            FROM read_parquet({path}) GROUP BY 1""")
        else:
            con.execute("CREATE TEMP VIEW inter AS SELECT NULL::VARCHAR AS product_id, 0::BIGINT AS interactions, "
                        "NULL::DOUBLE AS log_q_raw WHERE false")
        # Every product a sampler may draw, synth's colour variants too (never exposed: the weight of an unseen
        # product).
        con.register("cat", all_products(ws, ["product_id"]))
        return to_arrow(con.sql("""
            WITH ids AS (SELECT product_id FROM cat UNION SELECT product_id FROM expo
                         UNION SELECT product_id FROM inter)
            SELECT ids.product_id, coalesce(e.exposures, 0)::BIGINT AS exposures,
                   coalesce(i.interactions, 0)::BIGINT AS interactions, i.log_q_raw
            FROM ids LEFT JOIN expo e USING (product_id) LEFT JOIN inter i USING (product_id)
            WHERE ids.product_id IS NOT NULL
            ORDER BY ids.product_id"""))
    finally:
        con.close()


def events_pair_concentration(ws: Workspace) -> dict[str, float]:
    """The events stage's own concentration report (raw vs debiased positive pair weight) on `interaction_pairs`."""
    from visprep.events.debias import concentration
    from visprep.views.db import connect

    if not ws.has_table("interaction_pairs"):
        return {}
    con = connect(memory_limit=ws.config.events.duckdb_memory_limit, temp_dir=ws.root / "tmp" / "duckdb",
                  preserve_insertion_order=False)
    try:
        return concentration(con, str(ws.table_path("interaction_pairs")).replace("'", "''"))
    finally:
        con.close()


def popularity_stage(ws: Workspace) -> PopularityResult:
    """Write `tables/popularity` (per-product exposure, interactions, re-sampling weight, logQ before and after)
    and record the before/after concentration in the run record."""
    from visprep.pipeline import execute

    return execute(ws, "popularity", compute_popularity)


def compute_popularity(ws: Workspace, run: RunRecord) -> StageOutput:
    """The popularity stage's computation: the `popularity` table and its concentration figures."""
    qc = ws.config.popularity
    res = PopularityResult(temperature=qc.temperature, run_id=run.run_id)
    t = product_popularity(ws)
    inter = t.column("interactions").to_numpy(zero_copy_only=False).astype(np.float64)
    expo = t.column("exposures").to_numpy(zero_copy_only=False).astype(np.float64)
    lq = t.column("log_q_raw").to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    weight = resampling_weights(inter, qc.temperature)
    table = pa.table({
        "product_id": t.column("product_id"),
        "exposures": t.column("exposures"),
        "interactions": t.column("interactions"),
        "weight": pa.array(weight, pa.float64()),
        "log_q_raw": pa.array(lq, pa.float64(), mask=~np.isfinite(lq)),
        "log_q": pa.array(resampled_log_q(lq, weight), pa.float64(), mask=~np.isfinite(lq)),
        "run_id": pa.array([run.run_id] * t.num_rows, pa.string()),
    }, schema=POPULARITY)
    res.products = t.num_rows
    res.products_with_interactions = int((inter > 0).sum())
    res.before = concentration_figures(inter, qc.head_fraction)
    res.after = concentration_figures(inter * weight, qc.head_fraction)
    res.exposure = concentration_figures(expo, qc.head_fraction)
    res.events_pair_weights = events_pair_concentration(ws)
    return StageOutput(tables={"popularity": table}, result=res, metrics=res.as_dict(),
                       counts={"products": res.products, "products_with_interactions": res.products_with_interactions})


def popularity_weight_of(ws: Workspace, product_ids: list[str]) -> np.ndarray:
    """(N,) the `popularity` table's re-sampling weight of each product (1.0 for a product it does not list);
    for the sampler (`plan_epoch(weight=...)`) and pair weights."""
    if not ws.has_table("popularity"):
        return np.ones(len(product_ids))
    import pyarrow.compute as pc

    t = ws.read_table("popularity", ["product_id", "weight"])
    idx = pc.index_in(pa.array(product_ids, pa.string()), value_set=t.column("product_id"))
    found = idx.is_valid().to_numpy(zero_copy_only=False)
    out = np.ones(len(product_ids))
    if found.any():
        pos = idx.filter(idx.is_valid()).to_numpy(zero_copy_only=False).astype(np.int64)
        out[found] = t.column("weight").to_numpy(zero_copy_only=False)[pos]
    return out
