"""One ingest batch, all in DuckDB: stage and validate records, deduplicate by event id (within the batch and
against the committed id index), quarantine refused records and conflicting duplicates, write day parts, commit.

Duplicates: the first version of an event id (the committed one, else the earliest in the batch) is the event.
Later records with the same content are duplicates (counted, dropped); later records with different content are
`conflicting_duplicate`s, quarantined with the fields that differ. Content is compared by a 64-bit hash of the
content fields (`checkpoint.content_hash_sql`), so the committed side costs one id column and one hash column.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visprep.events.checkpoint import BatchCommit, EventLog
from visprep.events.duck import scalar, sql_list, to_arrow
from visprep.events.normalize import CONTENT_FIELDS, STAGED_DDL, detail, stage_json_lines, stage_parquet
from visprep.schema import EVENTS
from visprep.workspace import QuarantineRecord, RunRecord, Workspace, conform

#: The `events` table's columns, in order, from the batch's candidate rows.
_EVENT_COLUMNS = ("s.event_id, s.ts, CAST(s.ts AS DATE) AS day, s.user_id, s.session_id, s.type, s.query_id, "
                  "s.query_image_id, s.product_id, s.position, s.source, s.line")
_STREAM_ROWS = 1 << 20  # rows per Arrow batch streamed out of DuckDB (bounds Python-side memory, ~150 MB)
#: Columns dictionary-encoded in the Parquet parts: only the few-valued ones. Dictionary-encoding ids (thousands of
#: distinct values) made the whole write about twice as slow for files ~12 % smaller (zstd already finds the
#: repeats): measured in docs/events.md.
_DICT_COLUMNS = ["day", "type", "source"]


@dataclass
class BatchCounts:
    """What one batch did."""

    records: int = 0
    new: int = 0
    duplicates: int = 0
    refused: list[QuarantineRecord] | None = None


class BatchWriter:
    """Ingests batches into the events log through one DuckDB connection."""

    def __init__(self, ws: Workspace, log: EventLog, con: Any, run: RunRecord) -> None:
        self.ws, self.log, self.con, self.run = ws, log, con, run
        self.has_known = False
        if ws.config.events.unknown_product == "quarantine":
            products = ws.read_table("products", ["product_id"])
            if products.num_rows:
                con.register("_known", products)
                self.has_known = True
            else:
                run.notes.append("unknown_product=quarantine but there is no products table: not checked")

    def begin(self) -> None:
        """Start a batch: an empty staging table and no output yet."""
        self.con.execute(STAGED_DDL)
        self._out = BatchCounts(refused=[])
        self._parts: list[str] = []
        self._ids: list[str] = []
        self._group = 0
        self._pending = False

    def add_json_lines(self, lines: pa.Table, *, source: str) -> None:
        """Stage a `(line, text[, seq])` chunk of JSON lines."""
        stage_json_lines(self.con, lines, source=source, has_known=self.has_known)
        self._pending = True

    def add_parquet(self, path: Path, *, group: tuple[int, int] = (0, 1)) -> None:
        """Stage a Parquet file, or the event-id hash group `group = (g, of)` of it (read by DuckDB)."""
        stage_parquet(self.con, path, has_known=self.has_known, group=group)
        self._pending = True

    def end_group(self, batch: str) -> None:
        """Deduplicate what is staged and write its parts (not committed yet); stage the next group afresh.

        A batch may be staged in several groups, each holding the records of a disjoint set of event ids (see
        `normalize.stage_parquet`): the dedup of one group never needs another's rows, so memory is bounded by
        the group, not the batch.
        """
        con, out = self.con, self._out
        records = int(scalar(con, "SELECT count(*) FROM staged"))
        refused = _refused(con)
        # Ids seen more than once in the group (few): their first version, and whether all versions agree.
        # Grouping by the ids' 64-bit hashes first and by the ids themselves only where a hash repeats gives the
        # same (exact) result for about half the cost of grouping millions of strings.
        con.execute("""CREATE OR REPLACE TEMP TABLE dups AS
                       WITH hh AS (SELECT hash(event_id) AS h FROM staged WHERE problem IS NULL
                                   GROUP BY 1 HAVING count(*) > 1)
                       SELECT event_id, min(seq) AS seq0, min(c) AS cmin, max(c) AS cmax FROM staged
                       WHERE problem IS NULL AND hash(event_id) IN (SELECT h FROM hh)
                       GROUP BY event_id HAVING count(*) > 1""")
        ids = self.log.id_files()
        if ids:
            con.execute(f"""CREATE OR REPLACE TEMP TABLE old AS
                            SELECT i.event_id, i.c FROM read_parquet({sql_list(ids)}) i
                            WHERE i.event_id IN (SELECT event_id FROM staged WHERE problem IS NULL)""")
        else:
            con.execute("CREATE OR REPLACE TEMP TABLE old (event_id VARCHAR, c UBIGINT)")
        refused += self._conflicts()
        # Plain hash joins against the small `dups` / `old` tables (a correlated NOT EXISTS with an inequality
        # was several times slower).
        not_old = "LEFT JOIN old o ON o.event_id = s.event_id" if ids else ""
        fresh = con.sql(f"""
            SELECT {_EVENT_COLUMNS}, s.c
            FROM staged s LEFT JOIN dups d ON d.event_id = s.event_id {not_old}
            WHERE s.problem IS NULL AND (d.seq0 IS NULL OR d.seq0 = s.seq) {'AND o.event_id IS NULL' if ids else ''}""")
        parts, new, id_name = self._write(fresh, batch, self._group)
        for t in ("dups", "old"):
            con.execute(f"DROP TABLE IF EXISTS {t}")
        con.execute(STAGED_DDL)
        self._parts += parts
        self._ids += [id_name] if id_name else []
        out.records += records
        out.new += new
        out.duplicates += records - len(refused) - new
        assert out.duplicates >= 0, (records, len(refused), new)
        out.refused = (out.refused or []) + refused
        self._group += 1
        self._pending = False

    def finish(self, batch: str, *, file: dict[str, Any] | None = None,
               kafka: dict[str, dict[str, int]] | None = None,
               crash: Callable[[str], None] | None = None) -> BatchCounts:
        """Write what is still staged, the batch's quarantine part, then commit the batch with its checkpoint."""
        if self._pending or self._group == 0:
            self.end_group(batch)
        self.con.execute("DROP TABLE IF EXISTS staged")
        out = self._out
        refused = out.refused or []
        self.ws.quarantine(refused, stage="events", run_id=self.run.run_id, key=batch)
        if crash:
            crash("after_output")
        self.log.commit(BatchCommit(batch=batch, parts=self._parts, ids=self._ids, events=out.new,
                                    duplicates=out.duplicates, quarantined=len(refused), file=file, kafka=kafka))
        return out

    def _write(self, fresh: Any, batch: str, group: int) -> tuple[list[str], int, str | None]:
        """Stream `fresh` out of DuckDB as Arrow batches into one Parquet part per UTC day and the id-index file.

        pyarrow's writer encodes columns in parallel (about 3x DuckDB's COPY here); batches bound the memory.
        Files get temporary names and are renamed into place once complete (the commit comes later).
        """
        self.log.dir.mkdir(parents=True, exist_ok=True)
        self.log.ids_dir.mkdir(parents=True, exist_ok=True)
        writers: dict[Any, tuple[pq.ParquetWriter, Path, str]] = {}
        ids_name = f"{batch}-{group:05d}.parquet"
        ids_tmp = self.log.ids_dir / f".{ids_name}.{os.getpid()}.tmp"
        ids_writer: pq.ParquetWriter | None = None
        n = 0
        try:
            for rb in fresh.to_arrow_reader(_STREAM_ROWS):
                if rb.num_rows == 0:
                    continue
                n += rb.num_rows
                t = pa.Table.from_batches([rb])
                ids = t.select(["event_id", "c"])
                ids_writer = ids_writer or pq.ParquetWriter(ids_tmp, ids.schema, compression="zstd", use_dictionary=False)
                ids_writer.write_table(ids)
                events = conform(t, EVENTS)
                day = events.column("day")
                lo, hi = pc.min_max(day).values()
                days = [lo] if lo == hi else pc.unique(day).to_pylist()
                for d in days:
                    part = events if lo == hi else events.filter(pc.equal(day, pa.scalar(d, pa.date32())))
                    key = d.as_py() if isinstance(d, pa.Scalar) else d
                    if key not in writers:
                        name = f"part-{key:%Y-%m-%d}-{batch}-{group:05d}.parquet"
                        tmp = self.log.dir / f".{name}.{os.getpid()}.tmp"
                        writers[key] = (pq.ParquetWriter(tmp, EVENTS, compression="zstd", use_dictionary=_DICT_COLUMNS),
                                        tmp, name)
                    writers[key][0].write_table(part)
        finally:
            for w, _, _ in writers.values():
                w.close()
            if ids_writer is not None:
                ids_writer.close()
        names = []
        for _, tmp, name in sorted(writers.values(), key=lambda x: x[2]):
            os.replace(tmp, self.log.dir / name)
            names.append(name)
        if ids_writer is None:
            return names, n, None
        os.replace(ids_tmp, self.log.ids_dir / ids_name)
        return names, n, ids_name

    def _conflicts(self) -> list[QuarantineRecord]:
        """Quarantine records of this batch whose content differs from their id's first version."""
        con = self.con
        n = scalar(con, """SELECT (SELECT count(*) FROM dups WHERE cmin <> cmax)
                                + (SELECT count(*) FROM old o JOIN staged s USING (event_id)
                                   WHERE s.problem IS NULL AND s.c <> o.c)""")
        if not n:
            return []
        # Rare path: the reference version of each conflicting id is the committed event, else the batch's first.
        con.execute("""CREATE OR REPLACE TEMP TABLE conflict_ids AS
                       SELECT event_id FROM dups WHERE cmin <> cmax
                       UNION SELECT o.event_id FROM old o JOIN staged s USING (event_id)
                       WHERE s.problem IS NULL AND s.c <> o.c""")
        fields = ", ".join(CONTENT_FIELDS)
        committed = ""
        parts = self.log.part_files()
        if parts:
            committed = f"""SELECT event_id, {fields}, source, line, 0 AS pri
                            FROM read_parquet({sql_list(parts)})
                            WHERE event_id IN (SELECT event_id FROM conflict_ids)
                              AND event_id IN (SELECT event_id FROM old) UNION ALL"""
        diff = ", ".join(f"CASE WHEN x.{f} IS DISTINCT FROM r.{f} THEN '{f}' END" for f in CONTENT_FIELDS)
        vals = ", ".join(f"CASE WHEN x.{f} IS DISTINCT FROM r.{f} THEN '{f}=' || coalesce(CAST(x.{f} AS VARCHAR), "
                         f"'null') || ' vs ' || coalesce(CAST(r.{f} AS VARCHAR), 'null') END" for f in CONTENT_FIELDS)
        rows = to_arrow(con.sql(f"""
            WITH x AS (SELECT * FROM staged WHERE problem IS NULL
                       AND event_id IN (SELECT event_id FROM conflict_ids)),
            ref AS (
                SELECT * FROM (
                    {committed}
                    SELECT event_id, {fields}, source, line, 1 + seq AS pri FROM x)
                QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY pri) = 1)
            SELECT x.event_id, x.source, x.line, concat_ws(',', {diff}) AS field, concat_ws('; ', {vals}) AS value,
                   r.source AS ref_source, r.line AS ref_line
            FROM x JOIN ref r USING (event_id)
            WHERE concat_ws(',', {diff}) <> ''
            ORDER BY x.seq""")).to_pylist()
        con.execute("DROP TABLE conflict_ids")
        out = []
        for r in rows:  # conflicting records only: few, each with its own explanation
            d = detail("conflicting_duplicate", r["field"], r["value"], r["source"], r["line"])
            out.append(QuarantineRecord(reason="conflicting_duplicate",
                                        detail=f"{d} (kept: {r['ref_source']}:{r['ref_line']})",
                                        source=r["source"], line=r["line"], record_id=r["event_id"],
                                        field=r["field"], value=r["value"]))
        return out


def _refused(con: Any) -> list[QuarantineRecord]:
    rows = to_arrow(con.sql("""
        SELECT source, line, event_id, split_part(problem, '|', 1) AS reason,
               nullif(split_part(problem, '|', 2), '') AS field, value
        FROM staged WHERE problem IS NOT NULL ORDER BY seq""")).to_pylist()
    return [QuarantineRecord(reason=r["reason"], detail=detail(r["reason"], r["field"], r["value"], r["source"],
                                                               r["line"]),
                             source=r["source"], line=r["line"],
                             record_id=None if r["field"] == "event_id" else r["event_id"],
                             field=r["field"], value=r["value"]) for r in rows]

