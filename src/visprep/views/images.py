"""Which images training may use: every (product, decoded image) row of the catalog and synth's views, and the
quality floors (`pairs.min_side`, `pairs.min_blur`) that leave some out. Read by pairs, mine, sample, export and
the quality stages, so they all train on the same images."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from visprep.views.catalog import all_splits, synthetic_urls
from visprep.workspace import Workspace


def judged_images(ws: Workspace) -> pa.Table:
    """Every (product, good image) row of `usable_images` before the quality floors, with `url`, `judged_by` (the
    image whose figures count: itself, or the source photo of a synth-stage view), its `judged_width`,
    `judged_height` (px) and `judged_blur`, and `floor_reason` (too_small / too_blurry; null when it passes or has
    no figures)."""
    from visprep.views.db import connect_for
    from visprep.views.scan import query_arrow, scan_view, union_view

    cfg = ws.config.pairs
    has_views = ws.has_table("synthetic_views")
    # A view the synth stage rendered is judged by the photo it was made from: its own blur measures our rendering
    # (a texture backdrop adds edges), not whether the product can be seen.
    lineage = "SELECT image_id, min(source_image_id) AS source_image_id FROM sv GROUP BY image_id" if has_views else \
        "SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS source_image_id WHERE false"
    min_side, min_blur = int(cfg.min_side), float(cfg.min_blur)
    # DuckDB reads the tables' Parquet parts itself, only the columns named here: the whole tables (urls with every
    # fetch attempt, products with their descriptions) never sit in memory as Arrow. The ORDER BY fixes the order.
    con = connect_for(ws, preserve_insertion_order=False)
    try:
        union_view(con, ws, ("product_images", "synthetic_product_images"), ["product_id", "position", "source", "url"],
                   name="pi")
        union_view(con, ws, ("images", "synthetic_images"), ["image_id", "status", "width", "height", "blur"],
                   name="i")
        union_view(con, ws, ("products", "synthetic_products"), ["product_id", "title", "top_category"], name="p")
        scan_view(con, ws, "urls", ["url", "status", "image_id", "fetched_at"], name="fetched")
        latest = "SELECT url, status, image_id FROM fetched " \
                 "QUALIFY row_number() OVER (PARTITION BY url ORDER BY fetched_at DESC) = 1"
        synth_urls = synthetic_urls(ws).select(["url", "status", "image_id"])
        if synth_urls.num_rows:
            con.register("synth_urls", synth_urls)
            latest += " UNION ALL SELECT url, status, image_id FROM synth_urls"
        con.register("s", all_splits(ws))
        if has_views:
            scan_view(con, ws, "synthetic_views", ["image_id", "source_image_id"], name="sv")
        return query_arrow(con, f"""
        WITH u AS ({latest}),
        base AS (
            SELECT pi.product_id, u.image_id, min(pi.position) AS position, min(pi.source) AS source,
                   min(s.split) AS split, min(s.group_id) AS group_id, min(p.title) AS title,
                   min(p.top_category) AS top_category, min(u.url) AS url
            FROM pi
            JOIN u ON u.url = pi.url AND u.status = 'ok'
            JOIN i ON i.image_id = u.image_id AND i.status = 'ok'
            JOIN p ON p.product_id = pi.product_id
            JOIN s ON s.product_id = pi.product_id
            GROUP BY pi.product_id, u.image_id),
        lineage AS ({lineage}),
        fig AS (SELECT image_id, min(width) AS width, min(height) AS height, min(blur) AS blur
                FROM i WHERE status = 'ok' GROUP BY image_id),
        judged AS (
            SELECT b.*, coalesce(f.image_id, b.image_id) AS judged_by
            FROM base b LEFT JOIN lineage l ON l.image_id = b.image_id
            LEFT JOIN fig f ON f.image_id = l.source_image_id)
        SELECT j.*, f.blur AS judged_blur, f.width AS judged_width, f.height AS judged_height,
               CASE WHEN {min_side} > 0 AND (f.width < {min_side} OR f.height < {min_side}) THEN 'too_small'
                    WHEN {min_blur} > 0 AND f.blur < {min_blur} THEN 'too_blurry' END AS floor_reason
        FROM judged j LEFT JOIN fig f ON f.image_id = j.judged_by
        ORDER BY j.product_id, j.position, j.image_id
        """)
    finally:
        con.close()


USABLE_COLUMNS = ("product_id", "image_id", "position", "source", "split", "group_id", "title", "top_category")


def usable_images(ws: Workspace) -> pa.Table:
    """Return one row per (product, usable image): product_id, image_id, position, source, split, group_id, title,
    top_category.

    An image is usable when its newest fetch succeeded, it decoded, and it is at or above the quality floors
    (`pairs.min_side`: shorter side, px; `pairs.min_blur`: inspect's blur score); a view made by the synth stage is
    judged by the figures of the image it was made from. A photo listed twice in one product counts once. Rows
    are ordered by product, position, image. The pairs stage quarantines what the floors leave out
    (`images_below_floors`).
    """
    t = judged_images(ws)
    return t.filter(pc.is_null(t.column("floor_reason"))).select(list(USABLE_COLUMNS))
