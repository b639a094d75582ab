"""The runner: run stages in the order their declared reads and writes give (`visprep.stages.plan`), skipping a
table stage that is up to date.

A table stage is up to date when its last good run read exactly what its declared reads hold now (their
fingerprints, recorded by `Workspace.run` in the run record's `reads`), with the same config sections, and its
declared writes are still as that run left them (`writes`): a deleted or replaced output reruns it. An incremental
stage (fetch, inspect, embed, synth, embed_views) is always called and does only the missing work. There is no
special case and no pass loop: every stage runs at most once per `visprep run`, after the writers of what it reads,
so a second run does no work and changing one option reruns exactly the stages downstream of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visprep import stages
from visprep.config import section_params
from visprep.workspace import RunRecord, Workspace

ProgressFactory = Callable[[str], Callable[[int, int], None]]
UP_TO_DATE = "up to date"
NOTHING_TO_DO = "nothing to do"


def stale_reason(ws: Workspace, stage: str) -> str | None:
    """Why table stage `stage` must run (a sentence naming the changed input, section or output), or None when
    it is up to date."""
    spec = stages.get(stage)
    if spec.incremental:
        raise ValueError(f"stage {stage!r} is incremental (always run, does only missing work); it has no freshness")
    ws.pull((*spec.all_reads(ws.config), *spec.writes))  # on an object store: fingerprint what is there now
    last = ws.last_run(stage)
    if last is None:
        return "it never ran"
    params = last.get("params") or {}
    if params.get("overrides"):
        return f"its last run used command-line overrides {params['overrides']}"
    for section in spec.sections:
        if params.get(section) != section_params(ws.config, section)[section]:
            return f"config section [{section}] changed"
    recorded_reads, recorded_writes = last.get("reads") or {}, last.get("writes") or {}
    for name in spec.all_reads(ws.config):
        if name not in recorded_reads:
            return f"its last run did not record reading {name}"
        if recorded_reads[name] != stages.fingerprint(ws, name):
            return f"{name} changed"
    for name in spec.writes:
        now = stages.fingerprint(ws, name)
        if now is None or recorded_writes.get(name) != now:
            return f"its output {name} is missing or was changed"
    return None


def is_up_to_date(ws: Workspace, stage: str) -> bool:
    """Tell whether table stage `stage`'s last good run read exactly the current inputs with the current parameters
    and its outputs are as it left them (`stale_reason` says why not)."""
    return stale_reason(ws, stage) is None


def run_stage(ws: Workspace, stage: str, *, force: bool = False, progress: Callable[[int, int], None] | None = None,
              explicit: bool = False, **options: Any) -> Any:
    """Run one stage under the writer lock: a table stage only when stale (or `force`), an incremental one always.

    Returns the stage's result, `UP_TO_DATE`, or `NOTHING_TO_DO` when the stage has nothing to work on (its
    `applies` condition; an `explicit` run - the stage's own command - skips that check and lets the stage say what
    it lacks, e.g. `visprep popularity` before any events were ingested). Options are
    the stage's declared keyword options (`visprep.stages.Option`); a run with any option set records them as
    overrides, so the next `visprep run` does not take its output for its own.
    """
    spec = stages.get(stage)
    with ws.writer(stage):
        # A workspace on an object store: its local copy of what the stage reads and writes is brought up to date
        # first (a no-op for a local folder), and what the stage wrote is published after it, failed or not (an
        # incremental stage's finished work then resumes from the store on another machine).
        ws.pull((*spec.all_reads(ws.config), *spec.writes))
        if not explicit and not spec.has_work(ws):
            return NOTHING_TO_DO
        given = {k: v for k, v in options.items() if v is not None}
        if not spec.incremental and not force and not given and is_up_to_date(ws, stage):
            return UP_TO_DATE
        try:
            with ws.overrides(given), ws.acting_as(stage):
                return spec.run(ws, progress, **options)
        finally:
            ws.publish(spec.writes)


def execute(ws: Workspace, stage: str, compute: Callable[[Workspace, RunRecord], stages.StageOutput],
            *, params: dict[str, Any] | None = None) -> Any:
    """Run table stage `stage`'s `compute(ws, run)` under a run record the runner opens (its declared sections and
    `params` as parameters), then write what it returns: each table (only a declared write; not rewritten when
    equal to the stored one, run ids aside), each quarantine part, the run's counts, metrics and notes. Returns the
    output's `result`. The stage's library function (`dedup_stage(ws)`, ...) is this call: it always runs."""
    spec = stages.get(stage)
    with ws.run(stage, params or {}) as run:  # `Workspace.run` records the declared sections itself
        out = compute(ws, run)
        undeclared = (set(out.tables) | set(out.parts)) - set(spec.writes)
        if undeclared:
            raise PermissionError(f"stage {stage!r} returned {sorted(undeclared)}, which it does not declare among "
                                  f"its writes {list(spec.writes)}")
        written = [name for name, table in out.tables.items() if ws.write_table_if_changed(name, table)]
        for name, parts in out.parts.items():
            for part, table in parts.items():
                ws.write_part(name, table, part)
                written.append(f"{name}/{part}")
        for key, records in out.quarantine.items():
            ws.quarantine(records, stage=stage, run_id=run.run_id, key=key)
        run.counts.update(out.counts)
        run.metrics.update(out.metrics)
        run.metrics["tables_rewritten"] = written
        run.notes.extend(out.notes)
    return out.result


def run_pipeline(ws: Workspace, catalog_files: Sequence[str | Path] = (), *, force: bool = False,
                 progress: ProgressFactory | None = None, allow_removals: bool = False) -> dict[str, Any]:
    """Run every configured stage once, in dependency order; return each stage's result.

    A table stage that did not need to run reports "up to date", one with nothing to work on "nothing to do";
    `report["seconds"]` holds seconds per stage and `report["order"]` the order run. `allow_removals` lets a catalog
    snapshot remove more than `catalog.max_removal_share` of a file's products (see `ingest_catalog`).
    """
    # One writer for the whole run, not per stage: another writer slipping in between two stages would leave this
    # run's later stages reading a mix of both.
    with ws.writer("run"):
        report: dict[str, Any] = {}
        timings: dict[str, float] = {}
        if catalog_files:
            t = time.perf_counter()
            with ws.acting_as("catalog"):
                report["catalog"] = stages.get("catalog").run(ws, progress("catalog") if progress else None,
                                                              files=catalog_files, allow_removals=allow_removals)
            timings["catalog"] = time.perf_counter() - t
        planned = stages.plan(ws.config)
        for spec in planned:
            t = time.perf_counter()
            report[spec.name] = run_stage(ws, spec.name, force=force,
                                          progress=progress(spec.name) if progress else None)
            timings[spec.name] = time.perf_counter() - t
        report["order"] = [s.name for s in planned]
        report["seconds"] = timings
        return report
