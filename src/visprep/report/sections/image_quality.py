"""Image quality: blur scores against the threshold, the resolution scatter, EXIF orientation fixes."""

from __future__ import annotations

import numpy as np

from visprep.report.charts import new_figure
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import empty, figure, table

EXIF_ORIENTATION = {1: "upright (no fix)", 2: "mirrored", 3: "rotated 180°", 4: "flipped vertically",
                    5: "mirrored + rotated 90° CCW", 6: "rotated 90° CW", 7: "mirrored + rotated 90° CW",
                    8: "rotated 90° CCW"}
"""What each EXIF orientation value means; decoding turns images with 2..8 upright."""


def render(ctx: ReportContext) -> str:
    """The image-quality section's body."""
    return _status(ctx) + _blur(ctx) + _resolution(ctx) + _exif(ctx)


def _status(ctx: ReportContext) -> str:
    rows = ctx.rows_of("SELECT status, count(*) AS n FROM images GROUP BY 1 ORDER BY n DESC, status")
    return figure(table(["decode status", "images"], [(r["status"], r["n"]) for r in rows], numeric=[1]),
                  "Stored images by decode result: anything but ok was refused by `visprep inspect` and is in "
                  "the quarantine section.")


def _blur(ctx: ReportContext) -> str:
    threshold = ctx.ws.config.queries.blur_threshold
    # Quarter-decade bins of log10(1 + score), counted in DuckDB.
    rows = ctx.rows_of("SELECT floor(4 * log10(1 + blur)) AS k, count(*) AS n FROM images "
                       "WHERE status = 'ok' AND blur IS NOT NULL AND blur >= 0 GROUP BY 1 ORDER BY 1")
    if not rows:
        return empty("No blur scores: images inspected before blur scoring existed, or none decoded.")
    below = ctx.rows_of("SELECT count(*) AS n FROM images WHERE status = 'ok' AND blur < $t",
                        t=threshold)[0]["n"]
    k = np.array([r["k"] for r in rows], dtype=float)
    lo, hi = 10 ** (k / 4) - 1, 10 ** ((k + 1) / 4) - 1
    fig = new_figure(6.0, 2.8)
    ax = fig.add_subplot()
    ax.bar(np.maximum(lo, 0.5), [r["n"] for r in rows], width=hi - np.maximum(lo, 0.5), align="edge",
           color="#3b6ea8", edgecolor="white")
    ax.axvline(max(threshold, 0.5), color="#b5543b", linestyle="--",
               label=f"queries.blur_threshold = {threshold:g}")
    ax.set_xscale("log")
    ax.set_xlabel("blur score (Laplacian variance at 256 px; higher is sharper)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return ("<h3>Sharpness</h3>"
            + figure(render_chart(fig),
                     f"Blur scores of decoded images with the threshold user photos must pass ({below:,} catalog "
                     "images fall below it): catalog photos left of the line look blurrier than the queries "
                     "the model is allowed to see."))


def _resolution(ctx: ReportContext) -> str:
    n = ctx.limits.scatter_points
    t = ctx.sql("SELECT width, height FROM images WHERE status = 'ok' AND width > 0 AND height > 0 "
                "ORDER BY hash(image_id, $seed) LIMIT $n", seed=ctx.seed, n=n)
    if t.num_rows == 0:
        return ""
    total = ctx.rows_of("SELECT count(*) AS n FROM images WHERE status = 'ok' AND width > 0")[0]["n"]
    w = np.asarray(t.column("width").to_numpy(zero_copy_only=False), dtype=float)
    h = np.asarray(t.column("height").to_numpy(zero_copy_only=False), dtype=float)
    fig = new_figure(4.5, 4.0)
    ax = fig.add_subplot()
    ax.scatter(w, h, s=6, alpha=0.35, color="#3b6ea8", edgecolors="none")
    lo, hi = min(w.min(), h.min()) / 1.2, max(w.max(), h.max()) * 1.2
    ax.plot([lo, hi], [lo, hi], color="#999", linewidth=0.8, label="square")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.legend(fontsize=8)
    shown = "all" if total <= n else f"a seeded sample of {t.num_rows:,} of {total:,}"
    return ("<h3>Resolution</h3>"
            + figure(render_chart(fig),
                     f"Width against height of decoded images ({shown}): clusters far from the diagonal are "
                     "banners or strips, points in the lower left are too small to train on."))


def _exif(ctx: ReportContext) -> str:
    rows = ctx.rows_of("SELECT exif_orientation AS o, count(*) AS n FROM images WHERE status = 'ok' "
                       "GROUP BY 1 ORDER BY n DESC")
    fixed = sum(r["n"] for r in rows if r["o"] is not None and r["o"] != 1)
    shown = [(EXIF_ORIENTATION.get(r["o"], "no EXIF orientation" if r["o"] is None else f"invalid ({r['o']})"),
              r["o"], r["n"]) for r in rows]
    return ("<h3>EXIF orientation fixes</h3>"
            + figure(table(["orientation", "EXIF value", "images"], shown, numeric=[2]),
                     f"{fixed:,} images carried an EXIF rotation or mirror that decoding applied: phone photos "
                     "show up here; a training loader that ignores EXIF would see them sideways."))
