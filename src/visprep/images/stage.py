"""The inspect stage: decode each stored image once and record size, format, EXIF, pHash, blur and the
crop/border-tolerant signature; back-fill the signature of images inspected before it existed."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visprep.config import InspectConfig, section_params
from visprep.engines import before_parallel_parts, get_engine, map_parts, workspace_location
from visprep.engines.local import WorkerPlan, plan_workers
from visprep.images.decode import ImageDecodeError, decode_worker_bytes
from visprep.images.facts import facts_row, inspect_image
from visprep.images.signature import CODE_COLUMNS, COLOR_COLUMNS
from visprep.images.sniff import extension_for
from visprep.schema import IMAGES
from visprep.workspace import QuarantineRecord, Workspace, atomic_write_parquet, image_file

SIGNATURE_COLUMNS = CODE_COLUMNS + COLOR_COLUMNS
SIGNATURE_SCHEMA = pa.schema([IMAGES.field("image_id"), *(IMAGES.field(c) for c in SIGNATURE_COLUMNS)])
"""Rows of the back-fill's staging parts."""
BACKFILL_DIR = ".images-signatures"
"""Staging folder (under tables/, hidden: not a table) of back-filled signatures until they are merged."""

log = logging.getLogger(__name__)


@dataclass
class InspectStageResult:
    """Counts of one inspect run."""

    stored: int = 0
    already: int = 0
    inspected: int = 0
    ok: int = 0
    refused: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    backfilled: int = 0  # signatures computed for images inspected before the signature columns existed
    backfill_failed: int = 0  # of those, images that no longer read or decode (left null, retried next run)
    dropped: int = 0  # rows of images no urls row names (an older synth stage's views)
    run_id: str = ""


def decode_workers(workers: int, cfg: InspectConfig, *, setting: str = "inspect.workers") -> WorkerPlan:
    """Worker processes for a decoding stage (inspect, export): `workers` (0 = one per core), lowered so that each
    worker's worst decode (`cfg.max_decoded_bytes`) fits `cfg.memory_budget_mb` together; a lowered count is logged."""
    plan = plan_workers(workers, per_worker_bytes=decode_worker_bytes(cfg.max_decoded_bytes),
                        budget_bytes=cfg.memory_budget_mb << 20,
                        budget_name=f"inspect.memory_budget_mb={cfg.memory_budget_mb} (with inspect.max_decoded_bytes="
                                    f"{cfg.max_decoded_bytes})")
    if plan.limited:
        log.warning("%s: %s", setting, plan.note())
    return plan


def inspect_batch(items: Sequence[tuple[str, str, str, int, int]]) -> list[dict]:
    """Inspect `(image_id, path, format, max_pixels, max_decoded_bytes)` items; one row each, failures as rows with
    a reason."""
    rows = []
    for image_id, path, fmt, max_pixels, max_decoded_bytes in items:
        try:
            with open(image_file(path), "rb") as fh:
                data = fh.read()
        except OSError as exc:
            rows.append({"image_id": image_id, "format": fmt, "status": "unreadable",
                         "reason": f"{image_id}: {path}: {exc}"})
            continue
        rows.append(facts_row(image_id, data, fmt=fmt, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes))
    return rows


def inspect_part(seq: int, batch: Sequence[tuple[str, str, str, int, int]], *, root: str, run_id: str,
                 inspect: Callable[[Sequence[tuple]], list[dict]] = inspect_batch) -> dict[str, object]:
    """Inspect batch `seq` of run `run_id` and write its rows as part `<run_id>-<seq>` of `images` in the workspace
    at `root`, from whichever process or node runs it; return only the counts the driver needs.

    The part name is a function of the run and the batch number, so a batch Ray reruns after its worker died
    replaces the part its first attempt may have written.

    Returns:
        {"rows": rows written, "status": {status: count}}.
    """
    rows = inspect(batch)
    for r in rows:
        r["run_id"] = run_id
    Workspace(root).write_part("images", pa.Table.from_pylist(rows, schema=IMAGES), f"{run_id}-{seq:06d}")
    return {"rows": len(rows), "status": dict(Counter(r["status"] for r in rows))}


def signature_batch(items: Sequence[tuple[str, str, int, int]]) -> list[dict]:
    """Signature rows of `(image_id, path, max_pixels, max_decoded_bytes)` items that read and decode; the others
    are left out."""
    rows = []
    for image_id, path, max_pixels, max_decoded_bytes in items:
        try:
            with open(image_file(path), "rb") as fh:
                info = inspect_image(fh.read(), max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
        except (ImageDecodeError, OSError):
            continue
        rows.append({"image_id": image_id, **dict(zip(CODE_COLUMNS, info.signature_codes)),
                     **dict(zip(COLOR_COLUMNS, info.fg_color))})
    return rows


def inspect_stage(ws: Workspace, *, progress: Callable[[int, int], None] | None = None) -> InspectStageResult:
    """Inspect every stored image not inspected yet, and back-fill the signature of images inspected before it
    existed; corrupt, truncated and oversized images (too many pixels, or a decode over `max_decoded_bytes`) are
    quarantined. Fewer workers than configured are used when `memory_budget_mb` cannot hold them (run metrics
    "workers", and a note)."""
    cfg = ws.config.inspect
    result = InspectStageResult()
    latest = ws.latest_urls()
    ok = latest.filter(pc.equal(latest.column("status"), "ok"))
    stored = dict(zip(ok.column("image_id").to_pylist(), ok.column("format").to_pylist()))
    images = ws.read_table("images", ["image_id", "status", *SIGNATURE_COLUMNS])
    # Rows of images no `urls` row names: what an older synth stage had inspect decode for its views (synth now
    # records their facts in synthetic_images, and fetch has dropped their URL rows); this writer drops them.
    named = pc.unique(ws.read_table("urls", ["image_id"]).column("image_id").drop_null())
    result.dropped = pc.sum(pc.invert(pc.is_in(images.column("image_id"), value_set=named))).as_py() or 0
    done = set(images.column("image_id").to_pylist())
    todo = sorted(i for i in stored if i not in done)
    staging = ws.tables_dir / BACKFILL_DIR
    staged = _read_staging(staging)
    backfill = sorted(set(_missing_signature(images)) & stored.keys() - set(staged.column("image_id").to_pylist()))
    result.stored, result.already = len(stored), len(stored) - len(todo)
    with ws.run("inspect", section_params(ws.config, "inspect")) as run:
        run.inputs = {"urls": ws.table_fingerprint("urls"), "pending": len(todo), "backfill_pending": len(backfill)}
        result.run_id = run.run_id
        plan = decode_workers(cfg.workers, cfg)
        run.metrics["workers"] = plan.to_dict()
        if plan.limited:
            run.notes.append(f"inspect.workers: {plan.note()}")
        items = [(i, ws.store.ref(i, extension_for(stored[i])), stored[i], cfg.max_pixels,
                  cfg.max_decoded_bytes) for i in todo]
        if progress:
            progress(0, len(items) + len(backfill))
        engine = get_engine(ws.config)
        run.metrics["engine"] = engine.name
        if items:
            before_parallel_parts(ws, "images", f"{run.run_id}-{0:06d}")
        # Each batch's worker writes its own part (`inspect_part`): the rows never travel back to this process.
        write = partial(inspect_part, root=workspace_location(ws), run_id=run.run_id, inspect=inspect_batch)
        for batch, summary in map_parts(engine, write, items, batch_size=cfg.batch_size, workers=plan.used):
            result.inspected += summary["rows"]
            for status, n in summary["status"].items():
                if status == "ok":
                    result.ok += n
                else:
                    result.refused += n
                    result.by_reason[status] = result.by_reason.get(status, 0) + n
            if progress:
                progress(len(batch), len(items) + len(backfill))
        # Back-fill: each batch's signatures go to a staging part first (a killed run keeps them and the next one
        # skips them), and are merged into `images` in one rewrite below, so no reader ever sees an image twice.
        fill = [(i, ws.store.ref(i, extension_for(stored[i])), cfg.max_pixels, cfg.max_decoded_bytes)
                for i in backfill]
        for seq, (batch, rows) in enumerate(engine.map_batches(signature_batch, fill, batch_size=cfg.batch_size,
                                                               workers=plan.used)):
            atomic_write_parquet(staging / f"part-{run.run_id}-{seq:06d}.parquet",
                                 pa.Table.from_pylist(rows, schema=SIGNATURE_SCHEMA))
            result.backfilled += len(rows)
            result.backfill_failed += len(batch) - len(rows)
            if progress:
                progress(len(batch), len(items) + len(backfill))
        staged = _read_staging(staging)
        if todo or staged.num_rows or result.dropped:
            kept = ws.read_table("images")
            kept = first_of_each(kept.filter(pc.is_in(kept.column("image_id"), value_set=named)))
            ws.write_table("images", merge_signatures(kept, staged))
        shutil.rmtree(staging, ignore_errors=True)  # merged (or empty): a rerun would only rewrite the same values
        quarantined = refresh_inspect_quarantine(ws, run.run_id)
        run.counts = {"images_in": result.stored, "already": result.already, "inspected": result.inspected,
                      "ok": result.ok, "quarantined": quarantined, "signatures_backfilled": result.backfilled,
                      "signature_backfill_failed": result.backfill_failed,
                      "dropped": result.dropped}
    return result


def first_of_each(images: pa.Table) -> pa.Table:
    """`images` with only the first row of each image id. Two rows of one image come only from a batch written
    twice under two names: a worker of a killed driver that finished its part while the rerun inspected the same
    images (a retried batch replaces its own part)."""
    ids = images.column("image_id")
    if pc.count_distinct(ids).as_py() == images.num_rows:
        return images
    _, first = np.unique(np.asarray(ids.to_pylist(), dtype=object), return_index=True)
    return images.take(pa.array(np.sort(first)))


def _missing_signature(images: pa.Table) -> list[str]:
    """Image ids of decodable rows (status ok) with any signature column null."""
    missing = pc.equal(images.column("status"), "ok")
    nulls = None
    for c in SIGNATURE_COLUMNS:
        nulls = images.column(c).is_null() if nulls is None else pc.or_(nulls, images.column(c).is_null())
    return images.filter(pc.and_(missing, nulls)).column("image_id").to_pylist() if images.num_rows else []


def _read_staging(staging: Path) -> pa.Table:
    parts = sorted(p for p in staging.glob("part-*.parquet")) if staging.is_dir() else []
    if not parts:
        return SIGNATURE_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p).select(SIGNATURE_SCHEMA.names).cast(SIGNATURE_SCHEMA) for p in parts])


def merge_signatures(images: pa.Table, staged: pa.Table) -> pa.Table:
    """`images` with the signature columns of its rows found in `staged` (image_id + signature columns) filled in;
    row order and every other column unchanged."""
    if not staged.num_rows:
        return images
    at = pc.index_in(images.column("image_id"), value_set=staged.column("image_id"))
    found = at.is_valid()
    for name in SIGNATURE_COLUMNS:
        filled = pc.if_else(found, pc.take(staged.column(name), at), images.column(name))
        images = images.set_column(images.schema.get_field_index(name), name, filled.cast(IMAGES.field(name).type))
    return images


def refresh_inspect_quarantine(ws: Workspace, run_id: str) -> int:
    """Make the inspect quarantine list exactly the stored images that failed to decode."""
    images = ws.read_table("images", ["image_id", "status", "reason"])
    bad = images.filter(pc.not_equal(images.column("status"), "ok"))
    if bad.num_rows:
        owners = ws.sql(
            "SELECT u.image_id, min(u.url) AS url, min(p.product_id) AS product_id FROM u "
            "JOIN p ON p.url = u.url GROUP BY u.image_id",
            u=ws.latest_urls().select(["url", "image_id"]), p=ws.read_table("product_images", ["url", "product_id"]),
        )
        who = {r["image_id"]: r for r in owners.to_pylist()}
    else:
        who = {}
    records = [
        QuarantineRecord(reason=r["status"], detail=r["reason"] or r["status"], source=who.get(r["image_id"], {}).get("url"),
                         record_id=who.get(r["image_id"], {}).get("product_id"), field="image", value=r["image_id"])
        for r in bad.to_pylist()
    ]
    return ws.quarantine(records, stage="inspect", run_id=run_id, key="current")
