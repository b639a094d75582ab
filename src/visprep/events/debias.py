"""Position-bias propensities (intervention harvesting, else an examination model), popularity correction, and the
concentration report (how much pair weight sits on the head of the catalog)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from visprep.config import EventsConfig


@dataclass
class Propensities:
    """Examination propensity per rank (rank 1 = 1.0), clipped, and how each was obtained."""

    by_rank: dict[int, float]
    method: dict[int, str]  # harvested | model
    support: dict[int, int] = field(default_factory=dict)

    def as_report(self) -> dict[str, Any]:
        """JSON-able summary for the run record."""
        shown = [k for k in self.by_rank if k <= 20]  # the head; deeper ranks follow the model
        return {"propensity": {str(k): round(self.by_rank[k], 6) for k in shown},
                "method": {str(k): self.method[k] for k in shown},
                "harvested_ranks": sum(1 for m in self.method.values() if m == "harvested")}


def ordered_sum(expr: str) -> str:
    """DuckDB aggregate of the sum of DOUBLE `expr` added in ascending order: the same bits whatever order the
    rows arrive in (a plain sum() adds in thread order, so two builds over the same events could differ)."""
    return f"list_sum(list({expr} ORDER BY {expr}))"


def model_propensity(rank: int, *, eta: float) -> float:
    """The examination model: 1 / rank^eta."""
    return 1.0 / rank ** eta


def estimate_propensities(con: Any, *, cfg: EventsConfig) -> Propensities:
    """Estimate rank propensities from the temp table `hstats` (query_id, product_id, position, n = result lists
    that showed the product there, k = of them, lists where it was clicked; partial sums, added up here).

    Intervention harvesting (Agarwal et al. 2019): the same (query, product) shown at ranks r and r+1 in different
    lists differs only in examination, so over such pairs, weighted by min(impressions at r, at r+1),
    p(r+1)/p(r) = sum w*CTR(r+1) / sum w*CTR(r). Ratios chain from rank 1. A ratio without `harvest_min_support`
    impressions (or with no clicks) falls back to the model's ratio, (r/(r+1))^eta. Propensities are clipped to
    [propensity_clip, 1].
    """
    eta, top = cfg.examination_eta, cfg.max_rank
    harvested: dict[int, tuple[float, float, int]] = {}
    if cfg.propensity == "harvest":
        rows = con.sql(f"""
            WITH s AS (
                SELECT query_id, product_id, position, sum(n) AS n, sum(k) AS k FROM hstats
                WHERE position <= {top} GROUP BY ALL HAVING sum(n) > 0)
            SELECT a.position, sum(least(a.n, b.n)) AS support,
                   {ordered_sum('least(a.n, b.n) * a.k / a.n')} AS ctr_a,
                   {ordered_sum('least(a.n, b.n) * b.k / b.n')} AS ctr_b
            FROM s a JOIN s b
              ON a.query_id = b.query_id AND a.product_id = b.product_id AND b.position = a.position + 1
            GROUP BY a.position""").fetchall()
        harvested = {int(r): (float(a), float(b), int(n)) for r, n, a, b in rows}
    by_rank, method, support = {1: 1.0}, {1: "model"}, {}
    p = 1.0
    for r in range(1, top):
        a, b, n = harvested.get(r, (0.0, 0.0, 0))
        if n >= cfg.harvest_min_support and a > 0 and b > 0:
            p *= b / a
            method[r + 1] = "harvested"
        else:
            p *= model_propensity(r + 1, eta=eta) / model_propensity(r, eta=eta)
            method[r + 1] = "model"
        support[r + 1] = n
        by_rank[r + 1] = p
    clip = cfg.propensity_clip
    by_rank = {r: min(1.0, max(clip, v)) for r, v in by_rank.items()}
    return Propensities(by_rank=by_rank, method=method, support=support)


def concentration(con: Any, pairs_path: str) -> dict[str, float]:
    """Share of positive pair weight on the top 1% of products, and the Gini of weight over products.

    Computed for `raw_weight` and `debiased_weight` over positive kinds (skip-above excluded), on products that have
    any positive pair.
    """
    out: dict[str, float] = {}
    for col in ("raw_weight", "debiased_weight"):
        row = con.execute(f"""
            WITH w AS (SELECT product_id, sum({col}) AS x FROM read_parquet('{pairs_path}')
                       WHERE kind <> 'skip_above' GROUP BY 1),
            r AS (SELECT x, row_number() OVER (ORDER BY x) AS i, row_number() OVER (ORDER BY x DESC) AS j,
                         count(*) OVER () AS n, sum(x) OVER () AS s FROM w)
            SELECT max(n), max(s), sum(i * x), sum(x) FILTER (WHERE j <= greatest(1, ceil(n * 0.01)))
            FROM r""").fetchone()
        n, s, ix, top = row
        name = col.removesuffix("_weight")
        if not n or not s:
            out[f"{name}_top1pct_share"] = 0.0
            out[f"{name}_gini"] = 0.0
            continue
        out[f"{name}_top1pct_share"] = round(float(top) / float(s), 6)
        out[f"{name}_gini"] = round(2.0 * float(ix) / (n * float(s)) - (n + 1) / n, 6)
    out["products_with_positive_pairs"] = float(n or 0)
    return out


def gini(values: list[float]) -> float:
    """Gini coefficient of non-negative `values` (the oracle the SQL version is tested against)."""
    xs = sorted(values)
    n, s = len(xs), sum(xs)
    if n == 0 or s == 0:
        return 0.0
    return 2.0 * sum((i + 1) * x for i, x in enumerate(xs)) / (n * s) - (n + 1) / n


def popularity_factor(popularity: float, mean_popularity: float, *, alpha: float) -> float:
    """The popularity correction applied to positive weights: (popularity / mean)^-alpha (for docs and tests)."""
    return math.pow(popularity / mean_popularity, -alpha)
