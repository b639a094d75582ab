"""Composition of the stages: run them in order, skipping a stage whose inputs and parameters did not change."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visprep.config import section_params
from visprep.workspace import Workspace

ProgressFactory = Callable[[str], Callable[[int, int], None]]
STAGES = ("catalog", "fetch", "inspect", "split", "pairs", "export")

# What each table-level stage reads and which config sections it depends on: its freshness key.
_DEPENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pairs": (("products", "product_images", "urls", "images", "splits"), ("pairs",)),
    "export": (("pairs", "images", "products", "splits"), ("preprocess", "export")),
}


def is_up_to_date(ws: Workspace, stage: str) -> bool:
    """Tell whether `stage`'s last good run read exactly the current inputs with the current parameters."""
    from visprep.split.stage import SPLIT_PARAMS, split_inputs

    last = ws.last_run(stage)
    if last is None:
        return False
    if stage == "export" and not ws.shards_dir.exists():
        return False
    if stage == "split":
        current, sections = split_inputs(ws), SPLIT_PARAMS
    else:
        tables, sections = _DEPENDS[stage]
        current = {t: ws.table_fingerprint(t) for t in tables}
    return last["inputs"] == current and last["params"] == section_params(ws.config, *sections)


def run_pipeline(ws: Workspace, catalog_files: Sequence[str | Path] = (), *, force: bool = False,
                 progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run every stage in order; fetch and inspect only do missing work, the others rerun when inputs changed."""
    from visprep.catalog.stage import ingest_catalog
    from visprep.export.stage import export_stage
    from visprep.fetch.stage import fetch_stage
    from visprep.images.stage import inspect_stage
    from visprep.pairs.stage import pairs_stage
    from visprep.split.stage import split_stage

    def bar(name: str) -> Callable[[int, int], None] | None:
        return progress(name) if progress else None

    report: dict[str, Any] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if catalog_files:
        report["catalog"] = ingest_catalog(ws, catalog_files, progress=bar("catalog"))
        timings["catalog"] = time.perf_counter() - t0
    for name, fn in (("fetch", fetch_stage), ("inspect", inspect_stage)):
        t = time.perf_counter()
        report[name] = fn(ws, progress=bar(name))
        timings[name] = time.perf_counter() - t
    for name, fn in (("split", split_stage), ("pairs", pairs_stage), ("export", export_stage)):
        t = time.perf_counter()
        if not force and is_up_to_date(ws, name):
            report[name] = "up to date"
        else:
            report[name] = fn(ws, progress=bar(name)) if name == "export" else fn(ws)
        timings[name] = time.perf_counter() - t
    report["seconds"] = timings
    return report
