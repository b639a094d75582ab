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
        seen: dict[str, list[tuple[Product, str, int]]] = {}
        refused: dict[str, list[QuarantineRecord]] = {str(p): [] for p in paths}
        for path in paths:
            for raw in read_catalog_file(path, max_field_chars=cfg.max_field_chars):
                result.rows_read += 1
                if progress and result.rows_read % 1000 == 0:
                    progress(1000, 0)  # total unknown until the files are read
                checked = validate_row(raw, separator=cfg.category_separator,
                                       require_category=cfg.require_category, max_images=cfg.max_images_per_product,
                                       max_field_chars=cfg.max_field_chars)
                if isinstance(checked, Product):
                    seen.setdefault(checked.row["product_id"], []).append((checked, raw.source, raw.line))
                else:
                    # One refused row counts once, under its first reason; all problems are recorded.
                    refused[str(path)].extend(checked)

        accepted: dict[str, tuple[Product, str, int]] = {}
        for pid, versions in seen.items():
            hashes = {v[0].row["row_hash"] for v in versions}
            if len(hashes) == 1:
                accepted[pid] = versions[0]
                result.duplicate_identical += len(versions) - 1
                continue
            diff = [k for k in _COMPARED
                    if len({json.dumps(v[0].row[k], sort_keys=True, default=str) for v in versions}) > 1]
            diff = diff or ["image_sources"]
            where = ", ".join(f"{s}:{ln}" for _, s, ln in versions)
            for prod, source, line in versions:
                shown = prod.row.get(diff[0]) if diff[0] in prod.row else [i["source"] for i in prod.images]
                refused[source].append(QuarantineRecord(
                    reason="conflicting_duplicate_sku",
                    detail=f"{source}:{line}: product_id {pid!r} appears {len(versions)} times with different "
                           f"{', '.join(diff)} ({where}); none is taken",
                    source=source, line=line, record_id=pid, field=diff[0], value=str(shown)))
        result.products_valid = len(accepted)

        old = ws.read_table("products")
        old_hash = dict(zip(old.column("product_id").to_pylist(), old.column("row_hash").to_pylist()))
        old_source = dict(zip(old.column("product_id").to_pylist(), old.column("source_file").to_pylist()))
        old_run = dict(zip(old.column("product_id").to_pylist(), old.column("updated_run").to_pylist()))
        ingested = {str(p) for p in paths}
        conflicted = {pid for pid, v in seen.items() if pid not in accepted}
        removed = {pid for pid, src in old_source.items()
                   if src in ingested and pid not in accepted and pid not in conflicted}
        for pid, (prod, _, _) in accepted.items():
            if pid not in old_hash:
                result.new += 1
            elif old_hash[pid] != prod.row["row_hash"]:
                result.changed += 1
            else:
                result.unchanged += 1
        result.removed = len(removed)
        _check_removals(old_source, removed, paths, refused, max_share=cfg.max_removal_share,
                        allow=allow_removals, notes=run.notes)

        replaced = pa.array(sorted(set(accepted) | removed), pa.string())
        keep_old = old.filter(pc.invert(pc.is_in(old.column("product_id"), value_set=replaced)))
        new_rows = []
        new_images = []
        for pid, (prod, source, line) in accepted.items():
            row = dict(prod.row)
            row["source_file"] = source
            row["source_line"] = line
            unchanged = old_hash.get(pid) == row["row_hash"]
            row["updated_run"] = old_run[pid] if unchanged else run.run_id
            new_rows.append(row)
            new_images.extend(prod.images)
        products = pa.concat_tables([keep_old, pa.Table.from_pylist(new_rows, schema=PRODUCTS)])
        products = products.sort_by("product_id")

        old_images = ws.read_table("product_images")
        keep_images = old_images.filter(pc.invert(pc.is_in(old_images.column("product_id"), value_set=replaced)))
        # An older synth stage wrote its colour variants and views into these tables; synth now has its own
        # (synthetic_products, synthetic_product_images), so this writer drops them from its tables.
        legacy = is_synthetic_product(products)
        result.synthetic_dropped = pc.sum(legacy).as_py() or 0
        products = products.filter(pc.invert(legacy))
        legacy_images = is_synth_view_row(keep_images, ws.store.root_uri)
        result.synthetic_dropped += pc.sum(legacy_images).as_py() or 0
        keep_images = keep_images.filter(pc.invert(legacy_images))
        images = pa.concat_tables([keep_images, pa.Table.from_pylist(new_images, schema=PRODUCT_IMAGES)])
        images = images.sort_by([("product_id", "ascending"), ("position", "ascending")])

        if (result.new or result.changed or result.removed or result.synthetic_dropped
                or not ws.has_table("products")):
            # Unchanged products are not rewritten, so downstream stages see the same fingerprint and skip.
            ws.write_table("product_images", images)
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


def _check_removals(old_source: dict[str, str], removed: set[str], paths: Sequence[Path],
                    refused: dict[str, list[QuarantineRecord]], *, max_share: float, allow: bool,
                    notes: list[str]) -> None:
    """Raise before anything is written when a file's snapshot would remove over `max_share` of its products."""
    had: dict[str, int] = {}
    for src in old_source.values():
        had[src] = had.get(src, 0) + 1
    gone: dict[str, int] = {}
    for pid in removed:
        gone[old_source[pid]] = gone.get(old_source[pid], 0) + 1
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
