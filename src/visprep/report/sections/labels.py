"""Labels: grade distribution, rater agreement, and the disputed (query, product) pairs."""

from __future__ import annotations

import numpy as np

from visprep.report.charts import new_figure
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import empty, esc, figure, table, thumb


def render(ctx: ReportContext) -> str:
    """The labels section's body."""
    return _grades(ctx) + _agreement(ctx) + _disputed(ctx)


def _grades(ctx: ReportContext) -> str:
    series = {}
    if ctx.has("judgments"):
        series["rater judgments"] = {r["g"]: r["n"] for r in ctx.rows_of(
            "SELECT grade AS g, count(*) AS n FROM judgments GROUP BY 1")}
    if ctx.has("eval_qrels"):
        series["consensus (eval qrels)"] = {r["g"]: r["n"] for r in ctx.rows_of(
            "SELECT grade AS g, count(*) AS n FROM eval_qrels GROUP BY 1")}
    grades = sorted({g for s in series.values() for g in s})
    fig = new_figure(6.0, 2.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (label, counts) in enumerate(series.items()):
        ax.bar(np.arange(len(grades)) + i * width, [counts.get(g, 0) for g in grades], width=width, label=label)
    ax.set_xticks(np.arange(len(grades)) + width * (len(series) - 1) / 2,
                  [f"{g} {_grade_label(g)}" for g in grades], fontsize=8)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return figure(render_chart(fig), "Grades given by raters and the consensus grade per (query, product): a rubric "
                                     "used well spreads over the grades; nearly all 0 or all 4 means the judged "
                                     "candidates were too easy.")


def _grade_label(g: int) -> str:
    from visprep.labels.rubric import grade_name

    try:
        return grade_name(g)
    except ValueError:  # a grade outside the rubric: show the number alone
        return ""


def _agreement(ctx: ReportContext) -> str:
    out = "<h3>Rater agreement</h3>"
    if ctx.has("label_agreement"):
        rows = ctx.rows_of("SELECT * FROM label_agreement ORDER BY batch = '*' DESC, batch LIMIT $n",
                           n=ctx.limits.table_rows)
        out += figure(table(["batch", "items", "raters", "judgments", "alpha (ordinal)", "Fleiss kappa",
                             "Cohen kappa", "re-label"],
                            [(r["batch"], r["n_items"], r["n_raters"], r["n_judgments"], r["alpha_ordinal"],
                              r["fleiss_kappa"], r["cohen_kappa_mean"], r["relabel_items"]) for r in rows],
                            numeric=[1, 2, 3, 4, 5, 6, 7]),
                      "Agreement per batch (* is all batches): Krippendorff's alpha below about 0.67 means the "
                      "grades are too noisy to rank models on.")
    else:
        out += empty("No agreement table: it needs items judged by two or more raters.")
    if ctx.has("rater_stats"):
        rows = ctx.rows_of("SELECT * FROM rater_stats ORDER BY suspect DESC, kappa_quadratic NULLS FIRST, "
                           "rater_id LIMIT $n", n=ctx.limits.table_rows)
        out += figure(table(["rater", "judgments", "exact agreement", "bias", "kappa (quadratic)", "suspect"],
                            [(r["rater_id"], r["n_judgments"], r["exact_agreement"], r["bias"],
                              r["kappa_quadratic"], "SUSPECT" if r["suspect"] else "") for r in rows],
                            numeric=[1, 2, 3, 4]),
                      "Each rater against the consensus of the others, least reliable first: a suspect rater or a "
                      "large bias is worth a conversation before their grades are used.")
    return out


def _disputed(ctx: ReportContext) -> str:
    if not ctx.has("eval_qrels"):
        return empty("No consensus grades (eval_qrels): disputed pairs need `visprep labels`.")
    total = ctx.rows_of("SELECT count(*) AS n FROM eval_qrels WHERE relabel OR spread >= 2")[0]["n"]
    if total == 0:
        return "<h3>Disputed pairs</h3>" + empty("No disputed pairs: raters never disagreed by 2 grades or more.")
    rows = ctx.rows_of(
        """
        SELECT q.query_id, q.product_id, q.grade, q.grades, q.spread, e.format FROM eval_qrels q
        LEFT JOIN (SELECT query_id, any_value(format) AS format FROM eval_queries GROUP BY 1) e
               ON e.query_id = q.query_id
        WHERE q.relabel OR q.spread >= 2
        ORDER BY q.spread DESC, hash(q.query_id, q.product_id, $seed) LIMIT $n
        """, seed=ctx.seed, n=ctx.limits.gallery)
    images = ctx.product_images([r["product_id"] for r in rows])
    titles = ctx.titles([r["product_id"] for r in rows])
    cells = []
    for r in rows:
        grades = ", ".join(str(g) for g in (r["grades"] or []))
        query = thumb(ctx.thumb(r["query_id"], r["format"]), "query")
        product = thumb(ctx.thumb(*images.get(r["product_id"], (None, None))), esc(r["product_id"]),
                        title=titles.get(r["product_id"], ""))
        cells.append(f'<div class="pair">{query}{product}'
                     f'<span class="note">grades {esc(grades)} → {r["grade"]}</span></div>')
    return ("<h3>Disputed pairs</h3>"
            + figure("".join(cells), f"{total:,} (query photo, product) pairs whose raters disagree by two grades "
                                     f"or more, widest first ({len(rows)} shown): decide them, or send them to "
                                     "re-labelling."))
