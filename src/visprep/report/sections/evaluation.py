"""Evaluation and experiments: the latest metrics with confidence intervals, the per-category breakdown, and the
latest `visprep experiment` table and chart."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from visprep.report.charts import Chart, new_figure, png_file_chart
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import empty, esc, figure, table


def render(ctx: ReportContext) -> str:
    """The evaluation section's body."""
    return _metrics(ctx) + _by_category(ctx) + _experiment(ctx)


def _ci(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" + ("" if lo is None or hi is None else f" [{lo:.4f}, {hi:.4f}]")


def _latest_metrics(ctx: ReportContext) -> list[dict[str, Any]]:
    # Run ids start with their UTC start time, so the largest is the newest run of each model.
    return ctx.rows_of("SELECT * FROM eval_metrics QUALIFY run_id = max(run_id) OVER (PARTITION BY model) "
                       "ORDER BY model, metric, category")


def _metrics(ctx: ReportContext) -> str:
    if not ctx.has("eval_metrics"):
        return ("<h3>Latest evaluation</h3>"
                + empty("No `visprep evaluate` results (tables/eval_metrics): run `visprep evaluate -m MODEL`."))
    rows = [r for r in _latest_metrics(ctx) if r["category"] == "*"]
    models = sorted({r["model"] for r in rows})
    metrics = sorted({r["metric"] for r in rows})
    fig = new_figure(6.0, 2.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        by = {r["metric"]: r for r in rows if r["model"] == m}
        vals = np.array([by[k]["value"] if k in by and by[k]["value"] is not None else np.nan for k in metrics])
        lo = np.array([by[k]["ci_low"] if k in by and by[k]["ci_low"] is not None else np.nan for k in metrics])
        hi = np.array([by[k]["ci_high"] if k in by and by[k]["ci_high"] is not None else np.nan for k in metrics])
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]), nan=0.0).clip(min=0)
        ax.bar(np.arange(len(metrics)) + i * width, vals, width=width, yerr=err, capsize=3, label=m)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(models) - 1) / 2, metrics, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    t = table(["model", "metric", "value [CI]", "queries", "run"],
              [(r["model"], r["metric"], _ci(r["value"], r["ci_low"], r["ci_high"]), r["n_queries"], r["run_id"])
               for r in rows], numeric=[3])
    return ("<h3>Latest evaluation</h3>"
            + figure(render_chart(fig), "Each model's latest metrics over all eval queries with their bootstrap "
                                        "confidence intervals: overlapping intervals mean the difference is not "
                                        "established.")
            + figure(t, "The same numbers: value with its confidence interval and the number of queries behind "
                        "it."))


def _by_category(ctx: ReportContext) -> str:
    if not ctx.has("eval_metrics"):
        return ""
    rows = [r for r in _latest_metrics(ctx) if r["category"] != "*"]
    if not rows:
        return empty("No per-category breakdown in the latest evaluation (no query had a category).")
    metric = "ndcg@10" if any(r["metric"] == "ndcg@10" for r in rows) else rows[0]["metric"]
    models = sorted({r["model"] for r in rows})
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    queries: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["metric"] == metric:
            cells[r["category"]][r["model"]] = _ci(r["value"], r["ci_low"], r["ci_high"])
            queries[r["category"]] = max(queries[r["category"]], r["n_queries"] or 0)
    cats = sorted(cells, key=lambda c: (-queries[c], c))[: ctx.limits.table_rows]
    more = len(cells) - len(cats)
    return ("<h3>Per category</h3>"
            + figure(table(["category", "queries", *models],
                           [(c, queries[c], *(cells[c].get(m, "") for m in models)) for c in cats], numeric=[1]),
                     f"{esc(metric)} per query category with its confidence interval, most queried first"
                     + (f" ({more} smaller categories left out)" if more > 0 else "")
                     + ": a category far below the others is where the model or its data is weakest."))


def _experiment(ctx: ReportContext) -> str:
    if not ctx.has("experiment_results"):
        return ("<h3>Experiment</h3>"
                + empty("No `visprep experiment` results (tables/experiment_results): run `visprep experiment`."))
    from visprep.experiment.stage import METRICS, verdict

    run_id = ctx.rows_of("SELECT max(run_id) AS r FROM experiment_results")[0]["r"]
    rows = ctx.rows_of("SELECT * FROM experiment_results WHERE run_id = $r", r=run_id)
    ok = [r for r in rows if r["status"] == "ok"]
    by = {(r["variant"], r["metric"]): r for r in ok}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = []
    for v in variants:
        head = by.get((v, METRICS[0]))
        if head is None:
            reason = next((r["reason"] for r in rows if r["variant"] == v and r["reason"]), "")
            lines.append((v, *([""] * len(METRICS)), "", f"skipped: {reason}", ""))
            continue
        d = head["diff_vs_control"]
        diff = "" if d is None else f"{d:+.3f} [{head['diff_ci_low']:+.3f}, {head['diff_ci_high']:+.3f}]"
        lines.append((v, *(_ci((by.get((v, m)) or {}).get("value"), None, None) for m in METRICS),
                      head["control"] or "", diff, verdict(head)))
    t = table(["variant", *METRICS, "control", f"{METRICS[0]} vs control [CI]", "verdict"], lines)
    chart = _experiment_chart(ctx, run_id, [by[(v, METRICS[0])] for v in variants if (v, METRICS[0]) in by],
                              METRICS[0])
    return ("<h3>Experiment</h3>"
            + figure(t, f"Experiment {run_id}: each data-preparation variant's head on frozen features, with the "
                        "difference against its control and a 95% CI; only 'helps' or 'hurts' is a finding, "
                        "'no clear difference' is not.")
            + figure(chart, "Metrics per variant with their confidence intervals: compare each variant with its "
                            "control, not with the best bar."))


def _experiment_chart(ctx: ReportContext, run_id: str, rows: list[dict[str, Any]], metric: str) -> Chart:
    """The experiment's own chart.png when it is there and small, else one drawn from the rows."""
    path = ctx.ws.root / "experiments" / run_id / "chart.png"
    if path.is_file():
        chart = png_file_chart(path.read_bytes())
        if chart is not None:
            return chart
    fig = new_figure(6.0, 0.8 + 0.3 * max(1, len(rows)))
    ax = fig.add_subplot()
    vals = np.array([r["value"] for r in rows], dtype=float)
    lo = np.array([r["ci_low"] if r["ci_low"] is not None else r["value"] for r in rows], dtype=float)
    hi = np.array([r["ci_high"] if r["ci_high"] is not None else r["value"] for r in rows], dtype=float)
    ax.barh(range(len(rows)), vals, xerr=np.vstack([vals - lo, hi - vals]).clip(min=0), capsize=3,
            color="#3b6ea8")
    ax.set_yticks(range(len(rows)), [r["variant"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    return render_chart(fig)
