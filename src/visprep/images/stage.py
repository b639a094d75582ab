"""The inspect stage: decode each stored image once and record size, format, EXIF, pHash and blur."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.engines.local import map_batches
from visprep.images.decode import ImageDecodeError
from visprep.images.inspect import inspect_image
from visprep.images.sniff import extension_for
from visprep.schema import IMAGES
from visprep.workspace import QuarantineRecord, Workspace


@dataclass
class InspectStageResult:
    """Counts of one inspect run."""

    stored: int = 0
    already: int = 0
    inspected: int = 0
    ok: int = 0
    refused: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    run_id: str = ""


def inspect_batch(items: Sequence[tuple[str, str, str, int]]) -> list[dict]:
    """Inspect `(image_id, path, format, max_pixels)` items; one row each, failures as rows with a reason."""
    rows = []
    for image_id, path, fmt, max_pixels in items:
        row: dict = {"image_id": image_id, "format": fmt}
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            row["bytes"] = len(data)
            info = inspect_image(data, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            row.update(status=exc.reason, reason=f"{image_id}: {exc}")
        except OSError as exc:
            row.update(status="unreadable", reason=f"{image_id}: {path}: {exc}")
        else:
            row.update(status="ok", reason=None, format=info.format, width=info.width, height=info.height,
                       exif_orientation=info.exif_orientation, phash=info.phash, blur=info.blur,
                       progressive=info.progressive, mode=info.mode)
        rows.append(row)
    return rows


def inspect_stage(ws: Workspace, *, progress: Callable[[int, int], None] | None = None) -> InspectStageResult:
    """Inspect every stored image not inspected yet; corrupt, truncated and oversized images are quarantined."""
    cfg = ws.config.inspect
    result = InspectStageResult()
    latest = ws.latest_urls()
    ok = latest.filter(pc.equal(latest.column("status"), "ok"))
    stored = dict(zip(ok.column("image_id").to_pylist(), ok.column("format").to_pylist()))
    done = set(ws.read_table("images", ["image_id"]).column("image_id").to_pylist())
    todo = sorted(i for i in stored if i not in done)
    result.stored, result.already = len(stored), len(stored) - len(todo)
    with ws.run("inspect", section_params(ws.config, "inspect")) as run:
        run.inputs = {"urls": ws.table_fingerprint("urls"), "pending": len(todo)}
        result.run_id = run.run_id
        items = [(i, str(ws.store.path(i, extension_for(stored[i]))), stored[i], cfg.max_pixels) for i in todo]
        if progress:
            progress(0, len(items))
        for seq, (batch, rows) in enumerate(map_batches(inspect_batch, items, batch_size=cfg.batch_size,
                                                        workers=cfg.workers)):
            for r in rows:
                r["run_id"] = run.run_id
                result.inspected += 1
                if r["status"] == "ok":
                    result.ok += 1
                else:
                    result.refused += 1
                    result.by_reason[r["status"]] = result.by_reason.get(r["status"], 0) + 1
            ws.write_part("images", pa.Table.from_pylist(rows, schema=IMAGES), f"{run.run_id}-{seq:06d}")
            if progress:
                progress(len(batch), len(items))
        if todo:
            ws.write_table("images", ws.read_table("images"))
        quarantined = refresh_inspect_quarantine(ws, run.run_id)
        run.counts = {"images_in": result.stored, "already": result.already, "inspected": result.inspected,
                      "ok": result.ok, "quarantined": quarantined}
    return result


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
