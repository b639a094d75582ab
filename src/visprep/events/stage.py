"""The events stage: sources -> validated, deduplicated `events` (committed per batch) -> `interaction_pairs`.

Exactly-once: a batch (one file, or one poll of Kafka messages) is validated and deduplicated in DuckDB (files
streamed, Kafka polls staged; `visprep.events.batch`), writes its event parts, id-index file and quarantine part,
then commits by one atomic rewrite of `tables/events.parquet/_checkpoint.json` that lists the live files and
carries the file checkpoint (path + sha256) or the Kafka offsets. Files no commit lists are deleted on the next
start (`EventLog.recover`). Duplicate event ids are dropped against the committed id index, so they count once
across batches and runs. Kafka's small parts are compacted (same commit protocol). `interaction_pairs` is
brought up to date whenever the log moved on: with `[events] incremental` (the default) only the users of the new
batches are recomputed (`visprep.events.incremental`), else the whole events table is; either way incremental runs
give exactly the table a single run over all the input would.
One writer at a time: every entry point holds the workspace lock `events`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visprep.config import section_params
from visprep.events.batch import BatchCounts, BatchWriter
from visprep.events.checkpoint import EventLog
from visprep.events.incremental import update_pairs
from visprep.events.interactions import PairsReport, build_pairs
from visprep.events.readers import detect_format
from visprep.views.db import connect
from visprep.workspace import RunRecord, Workspace, file_fingerprint

#: Named crash points for kill-and-resume tests (`_crash_at=`): the process kills itself with SIGKILL there.
CRASH_POINTS = ("after_output", "after_checkpoint", "compact_after_output", "compact_after_checkpoint",
                "pairs_after_partials", "pairs_after_table")


@dataclass
class EventsResult:
    """Counts of one events run."""

    run_id: str = ""
    files_read: int = 0
    files_already: int = 0
    batches: int = 0
    records: int = 0
    events_new: int = 0
    duplicates: int = 0
    quarantined: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    pairs_rebuilt: bool = False
    pairs: dict[str, int] = field(default_factory=dict)
    concentration: dict[str, float] = field(default_factory=dict)
    recovered_parts: int = 0
    compacted: int = 0
    caught_up: bool | None = None

    def add(self, c: BatchCounts) -> None:
        """Add one committed batch's counts."""
        self.batches += 1
        self.records += c.records
        self.events_new += c.new
        self.duplicates += c.duplicates
        refused = c.refused or []
        self.quarantined += len(refused)
        for r in refused:
            self.by_reason[r.reason] = self.by_reason.get(r.reason, 0) + 1


def _crasher(point: str | None) -> Callable[[str], None] | None:
    if point is None:
        return None
    if point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; valid: {', '.join(CRASH_POINTS)}")

    def crash(here: str) -> None:
        if here == point:
            os.kill(os.getpid(), signal.SIGKILL)
    return crash


@contextmanager
def _session(ws: Workspace, params: dict[str, Any]) -> Iterator[tuple[EventLog, Any, RunRecord, EventsResult]]:
    """Hold the workspace's writer lock, recover the log, open DuckDB and a run record."""
    with ws.writer("events"):
        result = EventsResult()
        log = EventLog(ws)
        result.recovered_parts = log.recover()
        cfg = ws.config.events
        con = connect(memory_limit=cfg.duckdb_memory_limit, temp_dir=ws.root / "tmp" / "duckdb",
                      threads=cfg.threads or None, preserve_insertion_order=False)
        try:
            log.check_id_index(con)
            with ws.run("events", params) as run:
                result.run_id = run.run_id
                yield log, con, run, result
        finally:
            con.close()


def ingest_event_files(ws: Workspace, files: Sequence[str | Path], *, rebuild_pairs: bool = True,
                       progress: Callable[[int, int], None] | None = None,
                       _crash_at: str | None = None) -> EventsResult:
    """Ingest event files (JSON lines or Parquet) into `events`, then rebuild `interaction_pairs` if needed.

    One file is one batch. A file whose content (sha256) was committed before is skipped, so re-running over the
    same files changes nothing. Parquet files are read by DuckDB itself; JSON lines in 32 MB chunks parsed by
    DuckDB. `_crash_at` is a test hook (see `CRASH_POINTS`).
    """
    paths = [Path(f).expanduser().resolve() for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"event file not found: {p}")
        detect_format(p)
    crash = _crasher(_crash_at)
    with _session(ws, {**section_params(ws.config, "events"), "source": "files"}) as (log, con, run, result):
        fps = [file_fingerprint(p) for p in paths]
        run.inputs = {"files": fps}
        writer = BatchWriter(ws, log, con, run)
        for path, fp in zip(paths, fps):
            if log.file_committed(fp["sha256"]) is not None:
                result.files_already += 1
                continue
            writer.begin()
            batch = "f" + fp["sha256"][:16]
            if detect_format(path) == "jsonl":
                writer.add_json_file(path, batch)
            else:
                writer.add_parquet(path, batch)
            result.add(writer.finish(batch, file=fp, crash=crash))
            if crash:
                crash("after_checkpoint")
            result.files_read += 1
            if progress:
                progress(1, len(paths))
        # Many small files leave many small day parts: merge them (content unchanged, pairs stay current).
        result.compacted += log.compact(con, small_rows=ws.config.events.compact_rows, buckets=writer.groups_after(0),
                                        crash=crash)
        if rebuild_pairs:
            _maybe_rebuild_pairs(ws, log, con, run, result, crash=crash)
        _record(run, result)
    return result


def ingest_kafka(ws: Workspace, *, bootstrap: str, topic: str, group: str = "visprep-events",
                 max_seconds: float | None = None, rebuild_pairs: bool = True,
                 _crash_at: str | None = None, _crash_after_batches: int = 1) -> EventsResult:
    """Consume `topic` into `events` exactly once (offsets live in the workspace), until caught up or
    `max_seconds`; compact the small parts it wrote; then rebuild `interaction_pairs` if needed.

    `_crash_at` / `_crash_after_batches` are a test hook: kill this process at that point of that batch (the
    compaction points: of the compaction that follows that batch).
    """
    from visprep.events.kafka_source import KafkaBatches

    cfg = ws.config.events
    params = {**section_params(ws.config, "events"), "source": "kafka", "bootstrap": bootstrap,
              "topic": topic, "group": group, "max_seconds": max_seconds}
    with _session(ws, params) as (log, con, run, result):
        start = log.kafka_offsets(topic)
        run.inputs = {"kafka": {"topic": topic, "group": group, "start_offsets": start}}
        writer = BatchWriter(ws, log, con, run)
        with KafkaBatches(bootstrap=bootstrap, topic=topic, group=group, start_offsets=start,
                          batch_size=cfg.kafka_batch, poll_s=cfg.kafka_poll_s,
                          max_seconds=max_seconds, session_timeout_ms=cfg.kafka_session_timeout_ms) as source:
            for n, batch in enumerate(source, start=1):
                crash = _crasher(_crash_at) if n == _crash_after_batches else None
                writer.begin()
                for src, lines in batch.chunks():
                    writer.add_json_lines(lines, source=src)
                result.add(writer.finish(f"k{log.generation + 1:010d}", kafka={topic: batch.next_offsets},
                                         crash=crash))
                if crash:
                    crash("after_checkpoint")
                source.commit(batch)  # informational: the workspace offsets are the truth
                if n % cfg.compact_every == 0:
                    result.compacted += log.compact(con, small_rows=cfg.compact_rows, buckets=writer.groups_after(0),
                                                    crash=crash)
            result.caught_up = source.caught_up
        result.compacted += log.compact(con, small_rows=cfg.compact_rows, buckets=writer.groups_after(0))
        run.inputs["kafka"]["end_offsets"] = log.kafka_offsets(topic)
        if rebuild_pairs:
            _maybe_rebuild_pairs(ws, log, con, run, result)
        _record(run, result)
    return result


def build_interaction_pairs(ws: Workspace) -> PairsReport:
    """Recompute `interaction_pairs` from the committed events (whatever the log says); with `[events]
    incremental`, the partial sums are rebuilt from the whole log too."""
    with ws.writer("events"):
        log = EventLog(ws)
        log.recover()
        cfg = ws.config.events
        con = connect(memory_limit=cfg.duckdb_memory_limit, temp_dir=ws.root / "tmp" / "duckdb",
                      threads=cfg.threads or None, preserve_insertion_order=False)
        try:
            return _pairs(ws, log, con, force_full=True)[0]
        finally:
            con.close()


def _pairs(ws: Workspace, log: EventLog, con: Any, *, force_full: bool = False,
           crash: Callable[[str], None] | None = None) -> tuple[PairsReport, dict[str, Any] | None]:
    """Build `interaction_pairs` the configured way and commit it; return the report and the incremental
    build's metrics (None for the whole-log build)."""
    cfg = ws.config.events
    out = ws.table_path("interaction_pairs")
    if cfg.incremental:
        inc = update_pairs(con, log, out, cfg=cfg, trust_buckets=log.buckets_trusted(con), force_full=force_full,
                           crash=crash, engine=ws.config.engine, temp_dir=ws.root / "tmp" / "duckdb")
        return inc.pairs, inc.as_metrics()
    report = build_pairs(con, log.part_files(), out, cfg=cfg, trust_buckets=log.buckets_trusted(con),
                         engine=ws.config.engine, temp_dir=ws.root / "tmp" / "duckdb")
    log.mark_pairs()
    return report, None


def _maybe_rebuild_pairs(ws: Workspace, log: EventLog, con: Any, run: RunRecord, result: EventsResult,
                         crash: Callable[[str], None] | None = None) -> None:
    if log.pairs_current():
        return
    report, incremental = _pairs(ws, log, con, crash=crash)
    result.pairs_rebuilt = True
    result.pairs = report.by_kind
    result.concentration = report.concentration
    run.metrics = {"concentration": report.concentration,
                   "propensities": report.propensities.as_report() if report.propensities else None,
                   "signals": report.signals,
                   "pairs_build": incremental or {"mode": "whole_log", "groups": report.groups,
                                                  "engine": report.engine}}


def _record(run: RunRecord, r: EventsResult) -> None:
    run.counts = {"files_read": r.files_read, "files_already": r.files_already, "batches": r.batches,
                  "records_in": r.records, "events_new": r.events_new, "duplicates": r.duplicates,
                  "quarantined": r.quarantined, "recovered_parts": r.recovered_parts, "compacted": r.compacted,
                  **{f"pairs_{k}": v for k, v in r.pairs.items()}}
