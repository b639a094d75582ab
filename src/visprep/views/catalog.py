"""The catalog as its readers see it: the catalog's own tables with the synth stage's tables beside them.

The catalog stage writes `products` and `product_images`, fetch `urls`, inspect `images`, the split `splits`; the
synth stage writes its views and colour variants into tables of its own (`synthetic_products`,
`synthetic_product_images`, `synthetic_images`, `synthetic_views`). A reader that trains on synthetic rows (pairs,
mine, sample, export, ...) reads the unions here; a reader that must see only the real catalog (dedup, split,
labels, evaluation) reads the base tables.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from visprep.schema import URLS
from visprep.workspace import Workspace, conform

SYNTHETIC_TABLES = ("synthetic_products", "synthetic_product_images", "synthetic_images", "synthetic_views")
"""The synth stage's tables the unions read: a reader of a union records their fingerprints among its inputs."""

SYNTHETIC_SOURCE_FILE = "synthetic"
"""`source_file` of synth's colour variants (catalog files are absolute paths, so it cannot collide)."""

SYNTHETIC_URL_REASON = "synthetic view"
"""`reason` of the URL rows `synthetic_urls` gives for synth's views (what the synth stage wrote into `urls`)."""


def is_synthetic_product(products: pa.Table) -> pa.ChunkedArray:
    """Boolean mask of the synthetic rows (``source_file = "synthetic"``) of a products-shaped table: in `products`,
    the colour variants an older synth stage wrote there."""
    return pc.fill_null(pc.equal(products.column("source_file"), SYNTHETIC_SOURCE_FILE), False)


def is_synth_view_row(product_images: pa.Table, store_uri: str) -> pa.ChunkedArray:
    """Boolean mask of the rows a synth stage made: ``source = "synthetic"`` and a URL in the workspace's image
    store (`store_uri`), unlike synthetic images a catalog file declares itself. In `product_images`, what an
    older synth stage wrote there."""
    prefix = store_uri.rstrip("/") + "/"
    return pc.and_(pc.fill_null(pc.equal(product_images.column("source"), "synthetic"), False),
                   pc.fill_null(pc.starts_with(product_images.column("url"), prefix), False))


def view_url(ws: Workspace, image_id: str) -> str:
    """The URL of a synth-stage view: its file in the workspace's image store, as a file:// URI (the object's URL
    when the store is on an object store, the same on every machine)."""
    return ws.store.uri(image_id, "jpg")


def _union(a: pa.Table, b: pa.Table, keys: list[str]) -> pa.Table:
    """`a` and `b` (same schema) together, sorted by `keys` (if any) when `b` adds rows (the order one table
    had)."""
    if b.num_rows == 0:
        return a
    both = pa.concat_tables([a, b])
    return both.sort_by([(k, "ascending") for k in keys]) if keys else both


def _read(ws: Workspace, name: str, columns: list[str] | None) -> pa.Table:
    """Table `name`, only `columns` read from its parts when given (all of it otherwise)."""
    from visprep.views.scan import read_columns

    return read_columns(ws, name, columns) if columns else ws.read_table(name)


def all_products(ws: Workspace, columns: list[str] | None = None) -> pa.Table:
    """`products` and synth's colour variants (`synthetic_products`), by product_id."""
    return _union(_read(ws, "products", columns), _read(ws, "synthetic_products", columns), ["product_id"])


def all_product_images(ws: Workspace, columns: list[str] | None = None) -> pa.Table:
    """`product_images` and synth's views and variant images (`synthetic_product_images`), by product, position."""
    keys = [k for k in ("product_id", "position") if columns is None or k in columns]
    return _union(_read(ws, "product_images", columns), _read(ws, "synthetic_product_images", columns), keys)


def all_images(ws: Workspace, columns: list[str] | None = None) -> pa.Table:
    """`images` (what inspect decoded) and the facts of synth's views (`synthetic_images`)."""
    return _union(_read(ws, "images", columns), _read(ws, "synthetic_images", columns), [])


def synthetic_urls(ws: Workspace) -> pa.Table:
    """`urls`-shaped rows of synth's views: each URL of `synthetic_product_images` (a file of the image store, named
    after its image id), its image id, format and size (status "ok", reason `SYNTHETIC_URL_REASON`, no fetch
    time). Read from the rows synth wrote, so the join holds in a workspace copied elsewhere until synth rewrites
    them."""
    urls = pc.unique(ws.read_table("synthetic_product_images", ["url"]).column("url")).to_pylist()
    ids = [u.rsplit("/", 1)[-1].rsplit(".", 1)[0] for u in urls]
    facts = ws.read_table("synthetic_images", ["image_id", "format", "bytes", "run_id"])
    at = {i: k for k, i in enumerate(facts.column("image_id").to_pylist())}
    keep = [k for k, i in enumerate(ids) if i in at]
    take = pa.array([at[ids[k]] for k in keep], pa.int64())
    return conform(pa.table({
        "url": pa.array([urls[k] for k in keep], pa.string()),
        "status": pa.array(["ok"] * len(keep), pa.string()),
        "image_id": pa.array([ids[k] for k in keep], pa.string()),
        "format": facts.column("format").take(take), "bytes": facts.column("bytes").take(take),
        "attempts": pa.array([0] * len(keep), pa.int32()),
        "reason": pa.array([SYNTHETIC_URL_REASON] * len(keep), pa.string()), "run_id": facts.column("run_id").take(take),
    }), URLS)


def all_latest_urls(ws: Workspace) -> pa.Table:
    """`Workspace.latest_urls` (one row per fetched URL, its newest result) and the URLs of synth's views."""
    return _union(ws.latest_urls(), synthetic_urls(ws), [])


def variant_sources(ws: Workspace) -> dict[str, str]:
    """Colour variant product id -> its source product id (`attributes.synthetic` of `synthetic_products`)."""
    syn = ws.read_table("synthetic_products", ["product_id", "attributes"])
    if syn.num_rows == 0:
        return {}
    rows = ws.sql("SELECT product_id, json_extract_string(attributes, '$.synthetic.source_product_id') AS src "
                  "FROM p", p=syn)
    return {pid: src for pid, src in zip(rows.column("product_id").to_pylist(), rows.column("src").to_pylist())
            if src}


def flagged_products(ws: Workspace) -> list[str]:
    """The products `quality.policy` applies to: those the label-noise check flagged (`label_issues`, real catalog
    products only) and the colour variants made from them, which carry their source's label."""
    if not ws.has_table("label_issues"):
        return []
    flagged = ws.read_table("label_issues", ["product_id"]).column("product_id").to_pylist()
    marked = set(flagged)
    return flagged + sorted(v for v, src in variant_sources(ws).items() if src in marked and v not in marked)


def all_splits(ws: Workspace, columns: list[str] | None = None) -> pa.Table:
    """`splits` (catalog products) and a row per colour variant with its source product's group and split."""
    splits = ws.read_table("splits")
    variants = variant_sources(ws)
    if variants:
        at = {pid: i for i, pid in enumerate(splits.column("product_id").to_pylist())}
        groups, names = splits.column("group_id").to_pylist(), splits.column("split").to_pylist()
        rows = [{"product_id": v, "group_id": groups[at[src]], "split": names[at[src]]}
                for v, src in sorted(variants.items()) if src in at]
        splits = _union(splits, pa.Table.from_pylist(rows, schema=splits.schema), ["product_id"])
    return splits.select(columns) if columns else splits
