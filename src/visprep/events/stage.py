"""The events stage: sources -> validated, deduplicated `events` (committed per batch) -> `interaction_pairs`.

Exactly-once: a batch (one file, or one run of Kafka messages) writes its event parts and its quarantine part,
then commits by one atomic rewrite of `tables/events.parquet/_checkpoint.json` that carries the file checkpoint
(path + sha256) or the Kafka offsets. Parts of uncommitted batches are deleted on the next start
(`EventLog.recover`). Duplicate event ids are dropped against every committed part, so they count once across
batches and runs. `interaction_pairs` is recomputed from the whole events table whenever the log moved on, so
incremental runs give exactly the table a single run over all the input would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from visprep.config import section_params
from visprep.events.checkpoint import BatchCommit, EventLog
from visprep.events.duck import connect, sql_list, to_arrow
from visprep.events.normalize import detail, fields_from_columns, fields_from_json_lines, validate_fields
from visprep.events.pairs import PairsReport, build_pairs
from visprep.events.readers import detect_format, iter_json_lines, iter_parquet_rows
from visprep.workspace import QuarantineRecord, RunRecord, Workspace, file_fingerprint

#: Named crash points for kill-and-resume tests (`_crash_at=`): the process kills itself with SIGKILL there.
CRASH_POINTS = ("after_output", "after_checkpoint")


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
    caught_up: bool | None = None


def _crash(point: str | None, here: str) -> None:
    if point is not None and point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; valid: {', '.join(CRASH_POINTS)}")
    if point == here:
        os.kill(os.getpid(), signal.SIGKILL)


class BatchWriter:
    """Validates chunks of one batch, drops duplicates against the committed table, writes parts; then commits."""

    def __init__(self, ws: Workspace, log: EventLog, con: Any, run: RunRecord, result: EventsResult) -> None:
        self.ws, self.log, self.con, self.run, self.result = ws, log, con, run, result
        cfg = ws.config.events
        self.known: pa.Table | None = None
        if cfg.unknown_product == "quarantine":
            products = ws.read_table("products", ["product_id"])
            if products.num_rows:
                self.known = products
            else:
                run.notes.append("unknown_product=quarantine but there is no products table: not checked")

    def write(self, batch: str, chunks: Iterable[tuple[str, pa.Table]], *, is_json: bool,
              file: dict[str, Any] | None = None, kafka: dict[str, dict[str, int]] | None = None,
              crash_at: str | None = None) -> None:
        """Ingest `chunks` (source, raw table) as batch `batch` and commit it with its checkpoint."""
        parts: list[str] = []
        refused: list[QuarantineRecord] = []
        new = dups = records = 0
        for i, (source, raw) in enumerate(chunks):
            records += raw.num_rows
            fields = fields_from_json_lines(self.con, raw) if is_json else fields_from_columns(self.con, raw)
            events, bad = validate_fields(self.con, fields, source=source, known_products=self.known)
            fresh = self._drop_duplicates(events)
            dups += events.num_rows - fresh.num_rows
            new += fresh.num_rows
            parts += self.log.write_parts(fresh, batch=batch, chunk=i)
            for r in bad.to_pylist():  # refused records only: few, and each needs its own explanation
                refused.append(QuarantineRecord(
                    reason=r["reason"], detail=detail(r["reason"], r["field"], r["value"], source, r["line"]),
                    source=source, line=r["line"], record_id=r["record_id"], field=r["field"], value=r["value"]))
        self.ws.quarantine(refused, stage="events", run_id=self.run.run_id, key=batch)
        _crash(crash_at, "after_output")
        self.log.commit(BatchCommit(batch=batch, parts=parts, events=new, duplicates=dups,
                                    quarantined=len(refused), file=file, kafka=kafka))
        res = self.result
        res.batches += 1
        res.records += records
        res.events_new += new
        res.duplicates += dups
        res.quarantined += len(refused)
        for r in refused:
            res.by_reason[r.reason] = res.by_reason.get(r.reason, 0) + 1

    def _drop_duplicates(self, events: pa.Table) -> pa.Table:
        """Keep the first record of each event id in `events` that no committed (or earlier-chunk) part has."""
        if events.num_rows == 0:
            return events
        self.con.register("_new", events)
        try:
            existing = self.log.part_files()
            anti = ""
            if existing:
                anti = (f"WHERE event_id NOT IN (SELECT event_id FROM "
                        f"read_parquet({sql_list(existing)}, union_by_name = false))")
            out = to_arrow(self.con.sql(f"""
                SELECT * FROM (SELECT * FROM _new QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY line) = 1)
                {anti} ORDER BY ts, event_id"""))
        finally:
            self.con.unregister("_new")
        return out.cast(events.schema)


def _open(ws: Workspace) -> tuple[EventLog, Any, int]:
    log = EventLog(ws)
    recovered = log.recover()
    cfg = ws.config.events
    con = connect(memory_limit=cfg.duckdb_memory_limit, temp_dir=ws.root / "tmp" / "duckdb")
    return log, con, recovered


def _file_chunks(path: Path, *, chunk_rows: int) -> tuple[bool, Iterator[tuple[str, pa.Table]]]:
    fmt = detect_format(path)
    src = str(path)
    if fmt == "jsonl":
        return True, ((src, t) for t in iter_json_lines(path))
    return False, ((src, t) for t in iter_parquet_rows(path, batch_rows=chunk_rows))


def ingest_event_files(ws: Workspace, files: Sequence[str | Path], *, rebuild_pairs: bool = True,
                       progress: Callable[[int, int], None] | None = None,
                       _crash_at: str | None = None) -> EventsResult:
    """Ingest event files (JSON lines or Parquet) into `events`, then rebuild `interaction_pairs` if needed.

    A file whose content (sha256) was committed before is skipped, so re-running over the same files changes
    nothing. `_crash_at` is a test hook (see `CRASH_POINTS`).
    """
    paths = [Path(f).expanduser().resolve() for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"event file not found: {p}")
        detect_format(p)
    result = EventsResult()
    log, con, result.recovered_parts = _open(ws)
    try:
        with ws.run("events", {**section_params(ws.config, "events"), "source": "files"}) as run:
            result.run_id = run.run_id
            fps = [file_fingerprint(p) for p in paths]
            run.inputs = {"files": fps}
            writer = BatchWriter(ws, log, con, run, result)
            for path, fp in zip(paths, fps):
                if log.file_committed(fp["sha256"]) is not None:
                    result.files_already += 1
                    continue
                is_json, chunks = _file_chunks(path, chunk_rows=ws.config.events.chunk_rows)
                writer.write("f" + fp["sha256"][:16], chunks, is_json=is_json, file=fp, crash_at=_crash_at)
                _crash(_crash_at, "after_checkpoint")
                result.files_read += 1
                if progress:
                    progress(1, len(paths))
            if rebuild_pairs:
                _maybe_rebuild_pairs(ws, log, con, run, result)
            _record(run, result)
    finally:
        con.close()
    return result


def ingest_kafka(ws: Workspace, *, bootstrap: str, topic: str, group: str = "visprep-events",
                 max_seconds: float | None = None, rebuild_pairs: bool = True,
                 _crash_at: str | None = None, _crash_after_batches: int = 1) -> EventsResult:
    """Consume `topic` into `events` exactly once (offsets live in the workspace), until caught up or
    `max_seconds`; then rebuild `interaction_pairs` if needed.

    `_crash_at` / `_crash_after_batches` are a test hook: kill this process at that point of that batch.
    """
    from visprep.events.kafka_source import KafkaBatches

    result = EventsResult()
    log, con, result.recovered_parts = _open(ws)
    cfg = ws.config.events
    try:
        params = {**section_params(ws.config, "events"), "source": "kafka", "bootstrap": bootstrap,
                  "topic": topic, "group": group, "max_seconds": max_seconds}
        with ws.run("events", params) as run:
            result.run_id = run.run_id
            start = log.kafka_offsets(topic)
            run.inputs = {"kafka": {"topic": topic, "group": group, "start_offsets": start}}
            writer = BatchWriter(ws, log, con, run, result)
            with KafkaBatches(bootstrap=bootstrap, topic=topic, group=group, start_offsets=start,
                              batch_size=cfg.kafka_batch, poll_s=cfg.kafka_poll_s,
                              max_seconds=max_seconds) as source:
                for n, batch in enumerate(source, start=1):
                    crash = _crash_at if n == _crash_after_batches else None
                    writer.write(f"k{log.generation + 1:010d}", batch.chunks(), is_json=True,
                                 kafka={topic: batch.next_offsets}, crash_at=crash)
                    _crash(crash, "after_checkpoint")
                    source.commit(batch)  # informational: the workspace offsets are the truth
                result.caught_up = source.caught_up
            run.inputs["kafka"]["end_offsets"] = log.kafka_offsets(topic)
            if rebuild_pairs:
                _maybe_rebuild_pairs(ws, log, con, run, result)
            _record(run, result)
    finally:
        con.close()
    return result


def build_interaction_pairs(ws: Workspace) -> PairsReport:
    """Recompute `interaction_pairs` from the committed events (whatever the log says)."""
    log, con, _ = _open(ws)
    try:
        report = build_pairs(con, log.part_files(), ws.table_path("interaction_pairs"), cfg=ws.config.events)
        log.mark_pairs()
        return report
    finally:
        con.close()


def _maybe_rebuild_pairs(ws: Workspace, log: EventLog, con: Any, run: RunRecord, result: EventsResult) -> None:
    if log.pairs_current():
        return
    report = build_pairs(con, log.part_files(), ws.table_path("interaction_pairs"), cfg=ws.config.events)
    log.mark_pairs()
    result.pairs_rebuilt = True
    result.pairs = report.by_kind
    result.concentration = report.concentration
    run.metrics = {"concentration": report.concentration,
                   "propensities": report.propensities.as_report() if report.propensities else None}


def _record(run: RunRecord, r: EventsResult) -> None:
    run.counts = {"files_read": r.files_read, "files_already": r.files_already, "batches": r.batches,
                  "records_in": r.records, "events_new": r.events_new, "duplicates": r.duplicates,
                  "quarantined": r.quarantined, "recovered_parts": r.recovered_parts,
                  **{f"pairs_{k}": v for k, v in r.pairs.items()}}
