"""Pairs: counts by kind, sample positive pairs, mined hard negatives with their similarity, and what the
false-negative guard dropped."""

from __future__ import annotations

from typing import Any

from visprep.report.charts import new_figure
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import empty, esc, figure, table, thumb


def render(ctx: ReportContext) -> str:
    """The pairs section's body."""
    return _counts(ctx) + _positives(ctx) + _image_title(ctx) + _hard_negatives(ctx) + _guard(ctx)


def _counts(ctx: ReportContext) -> str:
    rows: list[tuple[str, str, int]] = []
    for name in ("pairs", "user_pairs", "negatives"):
        if ctx.has(name):
            rows += [(name, r["kind"], r["n"]) for r in ctx.rows_of(
                f"SELECT kind, count(*) AS n FROM {name} GROUP BY 1 ORDER BY n DESC, kind")]
    return figure(table(["table", "kind", "rows"], rows, numeric=[2]),
                  "Training pairs and negatives by kind: a kind with far fewer rows than the others will barely "
                  "be seen in training.")


def _pair_html(ctx: ReportContext, left: tuple[str | None, str | None], right: tuple[str | None, str | None],
               labels: tuple[str, str], titles: tuple[str, str], note: str) -> str:
    return (f'<div class="pair">{thumb(ctx.thumb(*left), labels[0], title=titles[0])}'
            f'{thumb(ctx.thumb(*right), labels[1], title=titles[1])}</div>'
            + (f'<span class="note">{note}</span>' if note else ""))


def _positives(ctx: ReportContext) -> str:
    if not ctx.has("pairs"):
        return empty("No positive pairs: run `visprep pairs`.")
    rows = ctx.rows_of(
        """
        SELECT anchor_id, positive_id, kind, weight, anchor_product_id, split FROM pairs
        WHERE positive_id IS NOT NULL ORDER BY hash(anchor_id, positive_id, $seed) LIMIT $n
        """, seed=ctx.seed, n=ctx.limits.gallery)
    if not rows:
        return empty("No image-image positive pairs (only image-title pairs).")
    fmts = ctx.image_formats([r["anchor_id"] for r in rows] + [r["positive_id"] for r in rows])
    titles = ctx.titles([r["anchor_product_id"] for r in rows])
    cells = []
    for r in rows:
        t = titles.get(r["anchor_product_id"], "")
        cells.append(_pair_html(ctx, (r["anchor_id"], fmts.get(r["anchor_id"])),
                                (r["positive_id"], fmts.get(r["positive_id"])),
                                ("anchor", f"{esc(r['kind'])} w={r['weight'] or 0:.2g}"), (t, t), ""))
    return ("<h3>Sample positive pairs</h3>"
            + figure("".join(cells), f"{len(rows)} positive pairs picked with seed {ctx.seed}: both photos must "
                                     "show the same product; a pair that does not is a catalog error that "
                                     "teaches the model the wrong thing."))


def _image_title(ctx: ReportContext) -> str:
    rows = ctx.rows_of(
        """
        SELECT anchor_id, positive_text, anchor_product_id FROM pairs
        WHERE kind = 'image_title' ORDER BY hash(anchor_id, $seed) LIMIT $n
        """, seed=ctx.seed, n=max(1, ctx.limits.gallery // 2))
    if not rows:
        return ""
    fmts = ctx.image_formats([r["anchor_id"] for r in rows])
    body = table(["image", "text it is paired with"],
                 [(thumb(ctx.thumb(r["anchor_id"], fmts.get(r["anchor_id"])), esc(r["anchor_product_id"])),
                   esc(r["positive_text"], limit=300)) for r in rows], raw=[0, 1])
    return ("<h3>Sample image-title pairs</h3>"
            + figure(body, "Photos with the text they are paired with: the text should describe what is "
                           "visible, not shipping or marketing copy."))


def _hard_negatives(ctx: ReportContext) -> str:
    if not ctx.has("negatives"):
        return empty("No negatives: run `visprep mine`.")
    hist = ctx.rows_of("SELECT kind, floor(score * 20) / 20 AS b, count(*) AS n FROM negatives "
                       "WHERE score IS NOT NULL AND isfinite(score) GROUP BY 1, 2 ORDER BY 1, 2")
    out = "<h3>Mined hard negatives</h3>"
    if hist:
        fig = new_figure(6.0, 2.6)
        ax = fig.add_subplot()
        kinds = sorted({h["kind"] for h in hist})
        for kind in kinds:
            pts = [(h["b"], h["n"]) for h in hist if h["kind"] == kind]
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=kind)
        ax.set_xlabel("similarity of anchor and negative")
        ax.set_ylabel("negatives")
        ax.legend(fontsize=8)
        out += figure(render_chart(fig), "Similarity of mined negatives to their anchor: hard negatives should "
                                         "sit high but below the guard's limit; a pile-up at the top suggests "
                                         "unlabelled duplicates.")
    rows = ctx.rows_of(
        """
        SELECT anchor_id, negative_id, kind, score, rank, anchor_product_id, negative_product_id FROM negatives
        WHERE score IS NOT NULL ORDER BY hash(anchor_id, negative_id, $seed) LIMIT $n
        """, seed=ctx.seed, n=ctx.limits.gallery)
    if not rows:
        return out + empty("No scored (mined) negatives: the ann miner writes them (`mining.kinds`).")
    fmts = ctx.image_formats([r["anchor_id"] for r in rows] + [r["negative_id"] for r in rows])
    titles = ctx.titles([r["anchor_product_id"] for r in rows] + [r["negative_product_id"] for r in rows])
    cells = [_pair_html(ctx, (r["anchor_id"], fmts.get(r["anchor_id"])),
                        (r["negative_id"], fmts.get(r["negative_id"])),
                        (esc(r["anchor_product_id"]), f"{esc(r['kind'])} sim {r['score']:.3f}"),
                        (titles.get(r["anchor_product_id"], ""), titles.get(r["negative_product_id"], "")), "")
             for r in rows]
    return out + figure("".join(cells), f"{len(rows)} mined negatives (anchor left, negative right, with their "
                                        "cosine similarity): they should look alike yet be different products; "
                                        "the same product on both sides is a false negative the guard missed.")


def _guard(ctx: ReportContext) -> str:
    run = _last_mine_with_ann(ctx)
    if run is None:
        return empty("The false-negative guard has not run: no `visprep mine` run with the ann miner.")
    c: dict[str, Any] = run.get("counts") or {}
    cfg = (run.get("params") or {}).get("mining") or {}
    kept, absolute, relative = c.get("ann.kept", 0), c.get("ann.guard_absolute", 0), c.get("ann.guard_relative", 0)
    judged = kept + absolute + relative
    rows = [("kept as hard negatives", kept),
            (f"dropped: similarity above mining.max_similarity ({cfg.get('max_similarity', '?')})", absolute),
            ((f"dropped: within mining.relative_margin ({cfg.get('relative_margin', '?')}) of the anchor's "
             "positive"), relative),
            ("skipped: same product group (a positive)", c.get("ann.positive", 0)),
            ("anchors without a positive score (relative rule not applied)",
             c.get("ann.anchors_without_positive_score", 0))]
    share = f"{(absolute + relative) / judged:.1%}" if judged else "n/a"
    return ("<h3>What the false-negative guard dropped</h3>"
            + figure(table(["candidates", "count"], rows, numeric=[1]),
                     f"ANN candidates judged by the guard in mine run {run['run_id']} (the last that re-mined): "
                     f"{share} dropped as probable unlabelled positives; a large share means near-duplicate "
                     "products the dedup stage did not group."))


def _last_mine_with_ann(ctx: ReportContext) -> dict[str, Any] | None:
    """The newest ok mine run that judged ANN candidates (an incremental run that reused all anchors did not)."""
    for r in reversed(ctx.run_records):
        c = r.get("counts") or {}
        if r.get("stage") == "mine" and r.get("status") == "ok" and any(
                c.get(k, 0) for k in ("ann.kept", "ann.guard_absolute", "ann.guard_relative")) and \
                c.get("ann.remined", 1) > 0:
            return r
    return None
