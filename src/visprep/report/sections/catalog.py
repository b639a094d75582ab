"""Catalog: products per category (the taxonomy tree), images per product, source mix, image sizes."""

from __future__ import annotations

from typing import Any

import numpy as np

from visprep.report.charts import Chart, bar_chart, new_figure
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import empty, esc, figure, table


def render(ctx: ReportContext) -> str:
    """The catalog section's body."""
    parts = [_taxonomy(ctx), _images_per_product(ctx), _source_mix(ctx), _image_sizes(ctx)]
    return "".join(parts)


def _taxonomy(ctx: ReportContext) -> str:
    rows = ctx.rows_of(
        """
        SELECT CASE WHEN category_path IS NULL OR len(category_path) = 0 THEN [category]
                    ELSE category_path[1:$depth] END AS path, count(*) AS n
        FROM products GROUP BY ALL
        """, depth=len(ctx.limits.tree_children))  # deeper paths count toward their ancestor at the last level
    tree: dict[str, Any] = {}
    for r in rows:
        node = tree
        for name in r["path"] or ["(none)"]:
            entry = node.setdefault(name or "(none)", {"n": 0, "children": {}})
            entry["n"] += r["n"]
            node = entry["children"]
    top = sorted(tree.items(), key=lambda kv: (-kv[1]["n"], kv[0]))
    k = ctx.limits.table_rows
    labels = [name for name, _ in top[:k]]
    values = [v["n"] for _, v in top[:k]]
    if len(top) > k:
        labels.append(f"{len(top) - k} other categories")
        values.append(sum(v["n"] for _, v in top[k:]))
    chart = bar_chart(labels, values, title="products per top-level category", xlabel="products")
    tree_html = _tree_html(tree, ctx.limits.tree_children, depth=0)
    return ("<h3>Products per category</h3>"
            + figure(chart, "Products per top-level category: look for categories too small to train on or one "
                            "category dominating the batches.")
            + figure(f'<div class="tree">{tree_html}</div>',
                     "The taxonomy tree with product counts (largest first): check that the category paths "
                     "nest as intended and that no branch is a typo of another."))


def _tree_html(nodes: dict[str, Any], limits: tuple[int, ...], *, depth: int) -> str:
    """Nested <details> of the taxonomy, largest first, `limits[depth]` children a node: at most
    12 + 12 * 10 + 12 * 10 * 6 entries with the defaults, whatever the catalog's size."""
    ordered = sorted(nodes.items(), key=lambda kv: (-kv[1]["n"], kv[0]))
    limit = limits[depth]
    out = []
    for name, node in ordered[:limit]:
        label = f'{esc(name)} <span class="count">({node["n"]:,})</span>'
        if node["children"] and depth + 1 < len(limits):
            out.append(f"<details{' open' if depth == 0 else ''}><summary>{label}</summary>"
                       f"{_tree_html(node['children'], limits, depth=depth + 1)}</details>")
        else:
            out.append(f'<div class="leaf">{label}</div>')
    if len(ordered) > limit:
        rest = sum(n["n"] for _, n in ordered[limit:])
        out.append(f'<div class="leaf count">… {len(ordered) - limit:,} more ({rest:,} products)</div>')
    return "".join(out)


def _images_per_product(ctx: ReportContext) -> str:
    rows = ctx.rows_of(
        """
        WITH per AS (SELECT p.product_id, count(pi.url) AS n FROM products p
                     LEFT JOIN product_images pi ON pi.product_id = p.product_id GROUP BY p.product_id)
        SELECT least(n, 10) AS n, count(*) AS products FROM per GROUP BY 1 ORDER BY 1
        """)
    if not rows:
        return ""
    labels = [("10+" if r["n"] == 10 else str(r["n"])) for r in rows]
    chart = bar_chart(labels, [r["products"] for r in rows], title="images listed per product",
                      xlabel="products", horizontal=False)
    return ("<h3>Images per product</h3>"
            + figure(chart, "Products by how many images they list: products with one image give no same-product "
                            "pair; zero means the product cannot be used at all."))


def _source_mix(ctx: ReportContext) -> str:
    rows = ctx.rows_of(
        """
        SELECT coalesce(source, 'catalog') AS source, count(*) AS images, count(DISTINCT product_id) AS products
        FROM product_images GROUP BY 1 ORDER BY images DESC
        """)
    if ctx.has("queries"):
        q = ctx.rows_of("SELECT count(*) FILTER (WHERE status = 'accepted') AS n FROM queries")[0]["n"]
        rows.append({"source": "user query photos (tables/queries, accepted)", "images": q, "products": None})
    if not rows:
        return empty("No product images listed (tables/product_images is empty).")
    return ("<h3>Source mix</h3>"
            + figure(table(["source", "images", "products"],
                           [(r["source"], r["images"], r["products"]) for r in rows], numeric=[1, 2]),
                     "Images by source (catalog, synthetic views, user photos): synthetic views should stay a "
                     "minority, and user photos are what the model will be queried with."))


def _image_sizes(ctx: ReportContext) -> str:
    if not ctx.has("images"):
        return empty("No decoded images: image sizes appear after `visprep inspect`.")
    # Half-octave bins computed in DuckDB: the histogram, not the million rows, comes back.
    sides = ctx.rows_of("SELECT floor(2 * log2(greatest(width, height))) AS k, count(*) AS n FROM images "
                        "WHERE status = 'ok' AND width > 0 AND height > 0 GROUP BY 1 ORDER BY 1")
    sizes = ctx.rows_of("SELECT floor(2 * log2(bytes)) AS k, count(*) AS n FROM images "
                        "WHERE status = 'ok' AND bytes > 0 GROUP BY 1 ORDER BY 1")
    if not sides:
        return empty("No image decoded successfully, so there are no sizes to show.")
    fig = new_figure(8.0, 2.8)
    for i, (rows, xlabel) in enumerate(((sides, "longer side (px)"), (sizes, "file size (bytes)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        _log_bars(ax, rows)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("images")
    chart: Chart = render_chart(fig)
    return ("<h3>Image sizes</h3>"
            + figure(chart, "Decoded images by longer side and by file size: a bump of tiny images (thumbnails "
                            "scraped instead of photos) or of huge files is worth a look."))


def _log_bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Bars of half-octave bins `k` (edges 2^(k/2) .. 2^((k+1)/2)) on a log x axis."""
    k = np.array([r["k"] for r in rows], dtype=float)
    lo, hi = 2 ** (k / 2), 2 ** ((k + 1) / 2)
    ax.bar(lo, [r["n"] for r in rows], width=hi - lo, align="edge", color="#3b6ea8", edgecolor="white")
    ax.set_xscale("log")
