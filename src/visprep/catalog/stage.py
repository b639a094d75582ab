"""The catalog stage: ingest catalog files into `products` and `product_images`, refusing bad rows."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from visprep.catalog.readers import read_catalog_file
from visprep.catalog.validate import Product, validate_row
from visprep.config import section_params
from visprep.schema import PRODUCT_IMAGES, PRODUCTS
from visprep.views.catalog import is_synth_view_row, is_synthetic_product
from visprep.workspace import QuarantineRecord, Workspace, file_fingerprint

_COMPARED = ("title", "category", "description", "brand", "color", "material", "size", "price", "seller",
             "inventory", "attributes", "image_urls")


@dataclass
class CatalogResult:
    """Counts of one catalog ingest."""

    rows_read: int = 0
    products_valid: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    duplicate_identical: int = 0
    quarantined: int = 0
    synthetic_dropped: int = 0  # legacy synthetic rows (an older synth stage's) dropped from products/product_images
    by_reason: dict[str, int] = field(default_factory=dict)
    run_id: str = ""


_VERSIONED_IMAGES = PRODUCT_IMAGES.append(pa.field("version", pa.int64()))
_BATCH_ROWS = 8192


class _Batches:
    """Rows collected into Arrow record batches of `_BATCH_ROWS` as they come (a Python dict per row costs KiBs)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []
        self.pending: list[dict] = []
        self.rows = 0

    def add(self, row: dict) -> None:
        """Append one row."""
        self.pending.append(row)
        self.rows += 1
        if len(self.pending) >= _BATCH_ROWS:
            self.batches.append(pa.RecordBatch.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def table(self) -> pa.Table:
        """Every row added, in order, as one table."""
        if self.pending:
            self.batches.append(pa.RecordBatch.from_pylist(self.pending, schema=self.schema))
            self.pending = []
        return pa.Table.from_batches(self.batches, schema=self.schema)


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    """`table` sorted by `keys` (ascending; unique together): as it is when it is in that order already (a catalog
    file in product order, the usual case, and a first ingest), else a sorted copy. The check costs a few boolean
    arrays; the sort a second copy of the table."""
    n = table.num_rows
    if n > 1:
        ordered = None
        for key in reversed(keys):  # lexicographic: a key decides where the keys before it are equal
            a, b = table.column(key).slice(0, n - 1), table.column(key).slice(1)
            less = pc.fill_null(pc.less(a, b), False)
            ordered = less if ordered is None else pc.or_(less, pc.and_(pc.fill_null(pc.equal(a, b), False),
                                                                         ordered))
        if not pc.all(ordered).as_py():
            return table.sort_by([(k, "ascending") for k in keys])
    return table


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    """value -> how many times it occurs (nulls left out)."""
    vc = pc.value_counts(values)
    return {v: n for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()) if v is not None}


def _accepted_versions(read: pa.Table, images: pa.Table, refused: dict[str, list[QuarantineRecord]],
                       result: CatalogResult) -> tuple[list[int], list[str]]:
    """The version (row of `read`) taken for each product id, in reading order, and the ids refused as conflicting
    duplicates (quarantined in `refused`); identical repeats count in `result.duplicate_identical`."""
    import numpy as np

    n = read.num_rows
    ids = read.select(["product_id", "row_hash"]).append_column("v", pa.array(np.arange(n, dtype=np.int64)))
    by_id = ids.group_by("product_id", use_threads=False).aggregate(
        [("v", "min"), ("v", "count"), ("row_hash", "count_distinct")])
    first = by_id.column("v_min").to_numpy()
    count = by_id.column("v_count").to_numpy()
    distinct = by_id.column("row_hash_count_distinct").to_numpy()
    result.duplicate_identical = int((count - 1)[distinct == 1].sum())
    accepted = np.sort(first[distinct == 1]).tolist()
    clash = distinct > 1
    if not clash.any():
        return accepted, []
    # Conflicting duplicates are rare: their versions come back as Python rows to name what differs.
    conflicted = by_id.column("product_id").filter(pa.array(clash)).to_pylist()
    order = np.argsort(first[clash], kind="stable")
    conflicted = [conflicted[k] for k in order]  # first-seen order, as the rows were read
    mask = pc.is_in(ids.column("product_id"), value_set=pa.array(conflicted, pa.string()))
    picked = pc.indices_nonzero(mask)
    versions: dict[str, list[tuple[dict, list[dict]]]] = {pid: [] for pid in conflicted}
    img_of: dict[int, list[dict]] = {}
    for im in images.filter(pc.is_in(images.column("version"), value_set=picked)).to_pylist():
        img_of.setdefault(im.pop("version"), []).append(im)
    for v, row in zip(picked.to_pylist(), read.take(picked).to_pylist()):
        versions[row["product_id"]].append((row, img_of.get(v, [])))
    for pid in conflicted:
        vs = versions[pid]
        diff = [k for k in _COMPARED if len({json.dumps(r[k], sort_keys=True, default=str) for r, _ in vs}) > 1]
        diff = diff or ["image_sources"]
        where = ", ".join(f"{r['source_file']}:{r['source_line']}" for r, _ in vs)
        for r, imgs in vs:
            source, line = r["source_file"], r["source_line"]
            shown = r.get(diff[0]) if diff[0] in r else [i["source"] for i in imgs]
            refused[source].append(QuarantineRecord(
                reason="conflicting_duplicate_sku",
                detail=f"{source}:{line}: product_id {pid!r} appears {len(vs)} times with different "
                       f"{', '.join(diff)} ({where}); none is taken",
                source=source, line=line, record_id=pid, field=diff[0], value=str(shown)))
    return accepted, conflicted


def ingest_catalog(ws: Workspace, files: Sequence[str | Path], *,
                   progress: Callable[[int, int], None] | None = None, allow_removals: bool = False) -> CatalogResult:
    """Ingest `files` as the new snapshot of each file: rows no longer in a file remove their products.

    Raises ValueError, writing nothing, when a file's snapshot would remove more than
    `catalog.max_removal_share` of the products it had (an emptied, header-only or wholly refused file), unless
    `allow_removals` is True.
    """
    if not isinstance(allow_removals, bool):
        raise TypeError(f"allow_removals must be True or False, got {allow_removals!r}")
    cfg = ws.config.catalog
    paths = [Path(f).expanduser().resolve() for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"catalog file not found: {p}")
    result = CatalogResult()
    with ws.run("catalog", section_params(ws.config, "catalog")) as run:
        run.inputs = {"files": [file_fingerprint(p) for p in paths]}
        result.run_id = run.run_id
        refused: dict[str, list[QuarantineRecord]] = {str(p): [] for p in paths}
        # Valid rows go into Arrow batches as they are read, not Python objects: at 1M products the dicts held
        # several KiB each. A row's place in `read` is its version number; its images carry that number.
        rows = _Batches(PRODUCTS)
        images = _Batches(_VERSIONED_IMAGES)
        for path in paths:
            for raw in read_catalog_file(path, max_field_chars=cfg.max_field_chars):
                result.rows_read += 1
                if progress and result.rows_read % 1000 == 0:
                    progress(1000, 0)  # total unknown until the files are read
                checked = validate_row(raw, separator=cfg.category_separator,
                                       require_category=cfg.require_category, max_images=cfg.max_images_per_product,
                                       max_field_chars=cfg.max_field_chars)
                if isinstance(checked, Product):
                    version = rows.rows
                    rows.add({**checked.row, "source_file": raw.source, "source_line": raw.line})
                    for image in checked.images:
                        images.add({**image, "version": version})
                else:
                    # One refused row counts once, under its first reason; all problems are recorded.
                    refused[str(path)].extend(checked)
        read = rows.table()
        accepted, conflicted = _accepted_versions(read, images.table(), refused, result)
        result.products_valid = len(accepted)
        # Copies of the whole table are what this stage's memory grows with: take only when a row is left out.
        new = read if len(accepted) == read.num_rows else read.take(pa.array(accepted, pa.int64()))
        del read

        old = ws.read_table("products")
        at_old = pc.index_in(new.column("product_id"), value_set=old.column("product_id").combine_chunks())
        old_hash = old.column("row_hash").take(at_old)
        same = pc.fill_null(pc.equal(old_hash, new.column("row_hash")), False)
        result.unchanged = pc.sum(same).as_py() or 0
        result.new = at_old.null_count
        result.changed = len(new) - result.new - result.unchanged
        new = new.set_column(new.schema.get_field_index("updated_run"), "updated_run",
                             pc.if_else(same, old.column("updated_run").take(at_old), run.run_id))
        ingested = pa.array(sorted({str(p) for p in paths}), pa.string())
        gone = pc.and_(pc.fill_null(pc.is_in(old.column("source_file"), value_set=ingested), False),
                       pc.invert(pc.is_in(old.column("product_id"),
                                          value_set=pa.concat_arrays([new.column("product_id").combine_chunks(),
                                                                      pa.array(conflicted, pa.string())]))))
        removed = old.filter(gone).column("product_id")
        result.removed = len(removed)
        _check_removals(_counts(old.column("source_file")), _counts(old.filter(gone).column("source_file")), paths,
                        refused, max_share=cfg.max_removal_share, allow=allow_removals, notes=run.notes)

        replaced = pa.concat_arrays([new.column("product_id").combine_chunks(), removed.combine_chunks()])
        keep_old = old.filter(pc.invert(pc.is_in(old.column("product_id"), value_set=replaced)))
        del old
        products = _sorted(pa.concat_tables([keep_old, new]), ["product_id"])
        del keep_old
        new_images = images.table()
        if len(accepted) < rows.rows:
            new_images = new_images.filter(pc.is_in(new_images.column("version"),
                                                    value_set=pa.array(accepted, pa.int64())))
        new_images = new_images.drop_columns(["version"])
        del images

        old_images = ws.read_table("product_images")
        keep_images = old_images.filter(pc.invert(pc.is_in(old_images.column("product_id"), value_set=replaced)))
        # An older synth stage wrote its colour variants and views into these tables; synth now has its own
        # (synthetic_products, synthetic_product_images), so this writer drops them from its tables.
        legacy = is_synthetic_product(products)
        result.synthetic_dropped = pc.sum(legacy).as_py() or 0
        if result.synthetic_dropped:
            products = products.filter(pc.invert(legacy))
        legacy_images = is_synth_view_row(keep_images, ws.store.root_uri)
        dropped_images = pc.sum(legacy_images).as_py() or 0
        if dropped_images:
            keep_images = keep_images.filter(pc.invert(legacy_images))
        result.synthetic_dropped += dropped_images
        all_images = _sorted(pa.concat_tables([keep_images, new_images]), ["product_id", "position"])

        if (result.new or result.changed or result.removed or result.synthetic_dropped
                or not ws.has_table("products")):
            # Unchanged products are not rewritten, so downstream stages see the same fingerprint and skip.
            ws.write_table("product_images", all_images)
            ws.write_table("products", products)
        for source, records in refused.items():
            ws.quarantine(records, stage="catalog", run_id=run.run_id, key=source)
            result.quarantined += len({r.line for r in records})
            for r in records:
                result.by_reason[r.reason] = result.by_reason.get(r.reason, 0) + 1
        run.counts = {
            "rows_in": result.rows_read, "products_out": products.num_rows, "new": result.new,
            "changed": result.changed, "unchanged": result.unchanged, "removed": result.removed,
            "duplicate_identical": result.duplicate_identical, "quarantined": result.quarantined,
        }
    return result


def _check_removals(had: dict[str, int], gone: dict[str, int], paths: Sequence[Path],
                    refused: dict[str, list[QuarantineRecord]], *, max_share: float, allow: bool,
                    notes: list[str]) -> None:
    """Raise before anything is written when a file's snapshot would remove over `max_share` of its products
    (`had`: the stored products per source file; `gone`: those this snapshot removes)."""
    over = []
    for path in dict.fromkeys(paths):  # a file named twice is one snapshot
        n, m = had.get(str(path), 0), gone.get(str(path), 0)
        # A strict ">": with the default 0.5 a 2-product file may lose one, and a 1-product file may not lose it.
        if n and m / n > max_share:
            rows = len({r.line for r in refused[str(path)]})
            over.append(f"{path}: had {n} products, this snapshot would remove {m} ({m / n:.0%}; "
                        f"{rows} of its rows were quarantined)")
    if not over:
        return
    if allow:
        notes.extend(f"allowed removal: {o}" for o in over)
        return
    raise ValueError(
        f"refusing a catalog snapshot that removes more than catalog.max_removal_share={max_share:g} of a file's "
        f"products (an emptied, truncated or wholly refused file?); nothing was written. "
        + "; ".join(over) + ". Fix the file, or accept the removals with --allow-removals (allow_removals=True)."
    )
