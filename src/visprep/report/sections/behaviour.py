"""Behaviour: the popularity long tail before and after debiasing, click-through by position, pairs by signal."""

from __future__ import annotations

import numpy as np

from visprep.report.charts import bar_chart, new_figure
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import empty, figure, table

CURVE_POINTS = 300
"""Points drawn per long-tail curve (log-spaced ranks), whatever the number of products."""


def render(ctx: ReportContext) -> str:
    """The behaviour section's body."""
    return _long_tail(ctx) + _ctr_by_position(ctx) + _pairs_by_signal(ctx)


def _shares(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, share of the total) at log-spaced ranks of `values` sorted largest first."""
    v = np.sort(values[values > 0])[::-1]
    if v.size == 0:
        return np.array([]), np.array([])
    ranks = np.unique(np.geomspace(1, v.size, num=min(CURVE_POINTS, v.size)).astype(int))
    return ranks, v[ranks - 1] / v.sum()


def _long_tail(ctx: ReportContext) -> str:
    if ctx.has("popularity"):
        t = ctx.sql("SELECT interactions, weight, exposures FROM popularity")
        inter = np.nan_to_num(t.column("interactions").to_numpy(zero_copy_only=False).astype(float))
        weight = np.nan_to_num(t.column("weight").to_numpy(zero_copy_only=False).astype(float), nan=1.0)
        exposures = np.nan_to_num(t.column("exposures").to_numpy(zero_copy_only=False).astype(float))
        curves = {"positives before debiasing": inter, "positives after re-sampling": inter * weight,
                  "exposures (impressions)": exposures}
        where = "tables/popularity"
    elif ctx.has("interaction_pairs"):
        t = ctx.sql("SELECT sum(count) AS n FROM interaction_pairs WHERE kind <> 'skip_above' GROUP BY product_id")
        curves = {"positives before debiasing": t.column("n").to_numpy(zero_copy_only=False).astype(float)}
        where = "tables/interaction_pairs (run `visprep popularity` for the after-debiasing curve)"
    else:
        return empty("No interactions: the long tail needs `visprep events`.")
    fig = new_figure(6.0, 3.2)
    ax = fig.add_subplot()
    for label, values in curves.items():
        ranks, share = _shares(values)
        if ranks.size:
            ax.plot(ranks, share, label=label, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("product rank (most popular first)")
    ax.set_ylabel("share of the total")
    ax.legend(fontsize=8)
    gini = _gini_line(ctx)
    return ("<h3>Popularity long tail</h3>"
            + figure(render_chart(fig), f"Share of positives per product by popularity rank, from {where}: "
                                        "after re-sampling the curve should be flatter (the head loses mass to "
                                        "the tail)." + gini))


def _gini_line(ctx: ReportContext) -> str:
    run = next((r for r in reversed(ctx.run_records) if r.get("stage") == "popularity" and r.get("status") == "ok"),
               None)
    m = (run or {}).get("metrics") or {}
    before, after = m.get("before") or {}, m.get("after") or {}
    if "gini" in before and "gini" in after:
        return f" Gini {before['gini']} before, {after['gini']} after (T = {m.get('temperature')})."
    return ""


def _ctr_by_position(ctx: ReportContext) -> str:
    if not ctx.has("events"):
        return empty("No raw events: click-through by position needs `visprep events`.")
    rows = ctx.rows_of(
        """
        SELECT position, count(*) FILTER (WHERE type = 'impression') AS impressions,
               count(*) FILTER (WHERE type = 'click') AS clicks
        FROM events WHERE position BETWEEN 1 AND 50 GROUP BY 1 ORDER BY 1
        """)
    rows = [r for r in rows if r["impressions"] > 0]
    if not rows:
        return empty("No impressions with a position in the events: click-through by position needs them.")
    pos = np.array([r["position"] for r in rows])
    ctr = np.array([r["clicks"] / r["impressions"] for r in rows])
    fig = new_figure(6.0, 2.8)
    ax = fig.add_subplot()
    ax.plot(pos, ctr, marker="o", markersize=3, color="#3b6ea8")
    ax.set_xlabel("position shown (1 = top)")
    ax.set_ylabel("clicks / impressions")
    ax.set_ylim(bottom=0)
    return ("<h3>Click-through by position</h3>"
            + figure(render_chart(fig), "Click-through rate by the rank a product was shown at: the drop from "
                                        "the top is position bias, which the IPS weights of the interaction "
                                        "pairs correct."))


def _pairs_by_signal(ctx: ReportContext) -> str:
    if not ctx.has("interaction_pairs"):
        return empty("No interaction pairs: `visprep events` builds them from the events.")
    rows = ctx.rows_of(
        """
        SELECT kind, count(*) AS pairs, sum(count)::BIGINT AS events, sum(raw_weight) AS raw_weight,
               sum(debiased_weight) AS debiased_weight
        FROM interaction_pairs GROUP BY 1 ORDER BY pairs DESC, kind
        """)
    chart = bar_chart([r["kind"] for r in rows], [r["pairs"] for r in rows],
                      title="interaction pairs by signal", xlabel="pairs")
    return ("<h3>Pairs by signal</h3>"
            + figure(chart, "Interaction pairs by the behaviour that produced them (skip_above pairs feed "
                            "negatives): a signal with few pairs adds little however strong its weight.")
            + figure(table(["signal", "pairs", "events", "raw weight", "debiased weight"],
                           [(r["kind"], r["pairs"], r["events"], r["raw_weight"], r["debiased_weight"])
                            for r in rows], numeric=[1, 2, 3, 4]),
                     "The same pairs with their summed weights: debiasing moves weight between signals when one "
                     "of them comes mostly from top positions."))
