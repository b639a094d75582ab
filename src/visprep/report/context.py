"""What every section reads through: one DuckDB connection over the workspace's tables, the shared counts, the
thumbnailer and the sampling seed.

Tables are registered as Arrow datasets over their part files with the table's schema (missing columns read as
nulls; products, product_images, images, urls and splits as their unions with the synth stage's tables, as
`visprep.views.catalog` reads them), so DuckDB scans only the columns and rows a query needs: aggregates over a million products never load the
products table into memory. Galleries pick rows by a seeded hash, not a random sample, so the same workspace and
seed always give the same page, whatever the thread count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from visprep.report.counts import WorkspaceCounts, workspace_counts
from visprep.report.thumbs import Thumbnailer
from visprep.schema import TABLES
from visprep.views.catalog import synthetic_urls

# The union views of `visprep.views.catalog` in SQL, so DuckDB still scans only what a query needs.
_UNIONS = {
    "products": "SELECT * FROM catalog_products UNION ALL SELECT * FROM synthetic_products",
    "product_images": "SELECT * FROM catalog_product_images UNION ALL SELECT * FROM synthetic_product_images",
    "images": "SELECT * FROM catalog_images UNION ALL SELECT * FROM synthetic_images",
    "urls": "SELECT * FROM catalog_urls UNION ALL SELECT * FROM synthetic_urls",
    "splits": """SELECT * FROM catalog_splits UNION ALL
                 SELECT v.product_id, s.group_id, s.split FROM synthetic_products v JOIN catalog_splits s
                 ON s.product_id = json_extract_string(v.attributes, '$.synthetic.source_product_id')""",
}
from visprep.workspace import Workspace


@dataclass(frozen=True)
class ReportLimits:
    """How much of the workspace the page shows: these bound its size and build time at any scale."""

    gallery: int = 8  # sampled examples per gallery (pairs, hard negatives, disputed labels)
    dup_groups: int = 6  # largest near-duplicate groups shown
    group_members: int = 8  # products shown per group
    quarantine_examples: int = 3  # examples per (stage, reason)
    scatter_points: int = 4000  # points in the resolution scatter
    table_rows: int = 30  # rows of a long table (categories, raters, runs)
    tree_children: tuple[int, ...] = (12, 10, 6)  # children shown per taxonomy node, by level (and levels)
    runs: int = 300  # newest runs on the timeline

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"report limit {name} must be a positive int (tree_children: a non-empty "
                                 f"tuple of them), got {value!r}")


class ReportContext:
    """The workspace as the sections see it.

    Args:
        ws: the workspace.
        seed: picks the gallery samples.
        limits: how much the page shows at most.
        thumbs: the thumbnail maker (one per report, so each image is decoded once).
        exclude_run: the report's own run id, left out of the run records (it is still "running").
    """

    def __init__(self, ws: Workspace, *, seed: int = 0, limits: ReportLimits | None = None,
                 thumbs: Thumbnailer | None = None, exclude_run: str | None = None) -> None:
        self.ws = ws
        self.seed = seed
        self.limits = limits or ReportLimits()
        self.thumbs = thumbs or Thumbnailer(ws)
        self.exclude_run = exclude_run
        self._con: Any = None
        self._counts: WorkspaceCounts | None = None
        self._runs: list[dict[str, Any]] | None = None

    # --- tables -------------------------------------------------------------------------------------------
    @property
    def counts(self) -> WorkspaceCounts:
        """Rows per table and quarantine counts: the numbers `visprep status` prints."""
        if self._counts is None:
            self._counts = workspace_counts(self.ws)
        return self._counts

    @property
    def run_records(self) -> list[dict[str, Any]]:
        """Every run record, oldest first, without the report's own (unfinished) run."""
        if self._runs is None:
            self._runs = [r for r in self.ws.runs() if r.get("run_id") != self.exclude_run]
        return self._runs

    def rows(self, name: str) -> int:
        """Rows of table `name` (0 when absent)."""
        return self.counts.tables.get(name, 0)

    def has(self, *names: str) -> bool:
        """Tell whether every table in `names` exists and has rows."""
        return all(self.rows(n) > 0 for n in names)

    @property
    def con(self) -> Any:
        """The DuckDB connection with every workspace table registered under its name (empty when absent)."""
        if self._con is None:
            import pyarrow.dataset as ds

            from visprep.views.db import connect

            self._con = connect()
            for name, schema in TABLES.items():
                # The catalog's tables are read as `visprep.views.catalog`'s unions with synth's (below).
                own = f"catalog_{name}" if name in _UNIONS else name
                self._con.register(own, ds.dataset(self.ws.part_paths(name), schema=schema, format="parquet"))
            self._con.register("synthetic_urls", synthetic_urls(self.ws))
            for name, query in _UNIONS.items():
                self._con.execute(f"CREATE VIEW {name} AS {query}")
        return self._con

    def sql(self, query: str, **params: Any) -> pa.Table:
        """Run `query` over the workspace's tables; `params` are bound as `$name` (never formatted into SQL)."""
        rel = self.con.sql(query, params=params or None)
        if rel is None:  # a statement without a result
            return pa.table({})
        # DuckDB 2 renamed `arrow()` (which now returns a reader) to `to_arrow_table()`.
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()

    def rows_of(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """`sql` as a list of row dicts."""
        return self.sql(query, **params).to_pylist()

    def close(self) -> None:
        """Close the DuckDB connection."""
        if self._con is not None:
            self._con.close()
            self._con = None

    # --- images ---------------------------------------------------------------------------------------------
    def image_formats(self, image_ids: Sequence[str]) -> dict[str, str]:
        """image id -> stored format, for the ids that decoded (status ok)."""
        ids = sorted({i for i in image_ids if i})
        if not ids or not self.has("images"):
            return {}
        rows = self.rows_of("SELECT image_id, format FROM images WHERE status = 'ok' AND image_id IN "
                            "(SELECT unnest($ids))", ids=ids)
        return {r["image_id"]: r["format"] for r in rows}

    def product_images(self, product_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """product id -> (image id, format) of its first image that fetched and decoded."""
        ids = sorted({p for p in product_ids if p})
        if not ids or not self.has("product_images", "urls", "images"):
            return {}
        rows = self.rows_of(
            """
            WITH pi AS (SELECT product_id, url, position FROM product_images
                        WHERE product_id IN (SELECT unnest($ids))),
                 u AS (SELECT url, image_id, status FROM urls WHERE url IN (SELECT url FROM pi)
                       QUALIFY row_number() OVER (PARTITION BY url ORDER BY fetched_at DESC) = 1)
            SELECT pi.product_id, i.image_id, i.format FROM pi
            JOIN u ON u.url = pi.url AND u.status = 'ok'
            JOIN images i ON i.image_id = u.image_id AND i.status = 'ok'
            QUALIFY row_number() OVER (PARTITION BY pi.product_id ORDER BY pi.position NULLS LAST, i.image_id) = 1
            """, ids=ids)
        return {r["product_id"]: (r["image_id"], r["format"]) for r in rows}

    def titles(self, product_ids: Sequence[str]) -> dict[str, str]:
        """product id -> title, for the ids in the products table."""
        ids = sorted({p for p in product_ids if p})
        if not ids or not self.has("products"):
            return {}
        rows = self.rows_of("SELECT product_id, title FROM products WHERE product_id IN (SELECT unnest($ids))",
                            ids=ids)
        return {r["product_id"]: r["title"] for r in rows}

    def thumb(self, image_id: str | None, fmt: str | None) -> str | None:
        """The thumbnail data URI of a stored image (None when absent or undecodable)."""
        return self.thumbs.data_uri(image_id, fmt)
