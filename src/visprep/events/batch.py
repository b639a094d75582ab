"""One ingest batch: validate records in DuckDB, deduplicate by event id (within the batch and against the
committed id index), quarantine refused records and conflicting duplicates, write day / user-bucket parts, commit.

Duplicates: the first version of an event id (the committed one, else the earliest in the batch) is the event.
Later records with the same content are duplicates (counted, dropped); later records with different content are
`conflicting_duplicate`s, quarantined with the fields that differ. Content is compared by a 64-bit hash of the
content fields (`checkpoint.content_hash_sql`). Committed ids are looked up by their 64-bit hash in the id index
(`checkpoint.id_hits`: two fixed-width columns, no id strings); a replay is recognised by equal id and content
hashes, and only an id hash committed with other content is settled on the id strings (`BatchWriter._old`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visprep.engines.local import prefetch
from visprep.events.checkpoint import (
    BatchCommit,
    EventLog,
    day_number_sql,
    id_hits,
    part_name,
    user_bucket_sql,
)
from visprep.events.duck import scalar, sql_list, sql_str, to_arrow
from visprep.events.interactions import pair_groups
from visprep.events.normalize import (
    CONTENT_FIELDS,
    STAGED_COLUMNS,
    STAGED_DDL,
    detail,
    parquet_source,
    parse_json_lines,
    product_check,
    stage_json_lines,
    stream_select,
)
from visprep.events.readers import iter_json_lines
from visprep.schema import EVENTS
from visprep.workspace import QuarantineRecord, RunRecord, Workspace, conform

#: The columns of a streamed batch that event parts are made of (`dayn` becomes `day`).
_PART_INPUT = ("event_id", "ts", "dayn", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id",
               "position", "source", "line")
#: Id hashes held in memory at once when finding repeated ids (8 bytes each; more are done in hash ranges).
_HASHES_IN_MEMORY = 1 << 25
_STREAM_ROWS = 1 << 20  # rows per Arrow batch streamed out of DuckDB (bounds Python-side memory, ~150 MB)
#: Columns dictionary-encoded in the Parquet parts: only the few-valued ones. Dictionary-encoding ids (thousands of
#: distinct values) made the whole write about twice as slow for files ~12 % smaller (zstd already finds the
#: repeats): measured in docs/events.md.
_DICT_COLUMNS = ["day", "type", "source"]
#: Columns with min/max statistics in the parts: only those whose values cluster (time, few-valued columns). Ids
#: are spread over every part (random ids, user buckets by hash), so their min/max prune nothing, and computing
#: them was about a quarter of the write.
_STATS_COLUMNS = ["ts", "day", "type", "position"]


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
        self._buckets = 0  # user buckets of this batch's parts; 0 = not decided yet
        self._committed_hits: pa.Table | None = None  # committed (h, c) index rows a streamed file can meet
        self._out = BatchCounts(refused=[])
        self._parts: list[str] = []
        self._ids: list[str] = []
        self._group = 0
        self._pending = False

    def add_json_lines(self, lines: pa.Table, *, source: str) -> None:
        """Stage a `(line, text[, seq])` chunk of JSON lines."""
        stage_json_lines(self.con, lines, source=source, has_known=self.has_known)
        self._pending = True

    def buckets_for(self, rows: int) -> int:
        """How many user buckets a batch of `rows` records cuts its parts into: the number of groups the pairs
        build will use once it is committed (`pairs.pair_groups`), so each group reads only its own parts.

        A small batch (under `compact_rows`, e.g. a Kafka poll) is not cut: a file per day and bucket of a
        10k-event poll cost more to write than its groups save, and compaction merges its parts anyway.
        """
        return 1 if rows < self.ws.config.events.compact_rows else self.groups_after(rows)

    def groups_after(self, rows: int) -> int:
        """How many user groups the pairs build uses once `rows` more events are committed (`pairs.pair_groups`)."""
        return pair_groups(self.log.events_committed() + rows, self.ws.config.events.pairs_group_events)

    def add_json_file(self, path: Path, batch: str) -> None:
        """Ingest a JSON-lines file through the streaming path: its lines are parsed by DuckDB chunk by chunk into
        a temporary Parquet file of text fields (the next chunk cut by a thread meanwhile), which `add_parquet`
        then streams like any Parquet file. Memory is bounded by a chunk, whatever the file's size; a staged
        table of every record (what Kafka polls still use) reached 2 GB of RSS at 10M events."""
        tmp = self.log.dir / f".parsed-{batch}-{os.getpid()}.parquet"
        self.log.dir.mkdir(parents=True, exist_ok=True)
        writer: pq.ParquetWriter | None = None
        try:
            for lines in prefetch(iter_json_lines(path)):
                t = parse_json_lines(self.con, lines)
                writer = writer or pq.ParquetWriter(tmp, t.schema, compression="lz4")
                writer.write_table(t)
            if writer is None:
                return  # no lines at all: nothing to stage
            writer.close()
            writer = None
            self.add_parquet(tmp, batch, source=str(path), parsed=True)
        finally:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)

    def add_parquet(self, path: Path, batch: str, *, source: str | None = None, parsed: bool = False) -> None:
        """Ingest a Parquet file in two streaming passes over it, with no staging copy of its records.

        Pass 1 finds the candidate id hashes: those occurring more than once among the file's ids and the
        committed id index. Pass 2 streams every record (validated in DuckDB) into Python: a valid record whose id
        hash is not a candidate is new and unique, so it goes straight to the day / user-bucket parts; the rest
        (invalid records, and every version of a possibly repeated id: about the duplicate rate) go through a stash
        file into `staged`, where `end_group` settles them exactly. Memory is DuckDB's (its aggregate spills) plus
        one streamed batch; the file is read twice whatever its size.
        """
        con = self.con
        buckets = self._buckets = self.buckets_for(pq.ParquetFile(path).metadata.num_rows)
        src, kinds, id_sql = parquet_source(path, parsed=parsed)
        cand, self._committed_hits = repeated_hashes(con, path, id_sql, self.log)
        con.register("cand", cand)
        sel = stream_select(src, kinds, product_check=product_check(self.has_known), candidates="cand",
                            buckets=buckets)
        parts = PartWriter(self.log, batch, self._group, buckets)
        stash = self.log.dir / f".stash-{batch}-{os.getpid()}.parquet"
        stash_writer: pq.ParquetWriter | None = None
        source = source or str(path)
        records = 0
        try:
            for rb in con.sql(sel).to_arrow_reader(_STREAM_ROWS):
                records += rb.num_rows
                t = pa.Table.from_batches([rb])
                rest = parts.add(t, source=source)
                if rest is not None and rest.num_rows:
                    rest = rest.append_column("source", pa.repeat(pa.scalar(source), rest.num_rows))
                    rest = rest.select(list(STAGED_COLUMNS))
                    stash_writer = stash_writer or pq.ParquetWriter(stash, rest.schema)
                    stash_writer.write_table(rest)
            if stash_writer is not None:
                stash_writer.close()
                stash_writer = None
                con.execute(f"INSERT INTO staged SELECT {', '.join(STAGED_COLUMNS)} "
                            f"FROM read_parquet({sql_str(str(stash))})")
            names, new, id_name = parts.close()
        finally:
            parts.abort()
            if stash_writer is not None:
                stash_writer.close()
            stash.unlink(missing_ok=True)
            con.unregister("cand")
        fast = records - int(scalar(con, "SELECT count(*) FROM staged"))
        self._parts += names
        self._ids += [id_name] if id_name else []
        self._out.records += fast
        self._out.new += new
        assert new == fast, (new, fast)
        self._group += 1
        self._pending = True

    def end_group(self, batch: str) -> None:
        """Settle what is staged exactly (refused records, every version of a repeated id, ids already committed)
        and write its parts (not committed yet); stage the next group afresh.

        Kafka polls are staged whole; of a file (Parquet, or JSON lines parsed into Parquet) only the records
        `add_parquet` could not write straight away are (about the duplicate rate).
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
            # `add_parquet` already found the committed rows this batch can meet; else look its ids up.
            hits = self._committed_hits
            if hits is None:
                hits = id_hits(con, ids, "(SELECT hash(event_id) AS h FROM staged WHERE problem IS NULL)")
            self._old(hits, ids)
        else:
            con.execute("CREATE OR REPLACE TEMP TABLE old (event_id VARCHAR, c UBIGINT)")
        refused += self._conflicts()
        # Plain hash joins against the small `dups` / `old` tables (a correlated NOT EXISTS with an inequality
        # was several times slower).
        not_old = "LEFT JOIN old o ON o.event_id = s.event_id" if ids else ""
        buckets = self._buckets or self.buckets_for(records)
        fresh = con.sql(f"""
            SELECT s.event_id, s.ts, {day_number_sql('s.ts')} AS dayn, s.user_id, s.session_id,
                   s.type, s.query_id, s.query_image_id, s.product_id, s.position, s.source, s.line, s.c,
                   hash(s.event_id) AS h, CAST({user_bucket_sql('s.user_id', buckets)} AS INTEGER) AS ub
            FROM staged s LEFT JOIN dups d ON d.event_id = s.event_id {not_old}
            WHERE s.problem IS NULL AND (d.seq0 IS NULL OR d.seq0 = s.seq) {'AND o.event_id IS NULL' if ids else ''}""")
        writer = PartWriter(self.log, batch, self._group, buckets)
        try:
            for rb in fresh.to_arrow_reader(_STREAM_ROWS):
                writer.add(pa.Table.from_batches([rb]))
            parts, new, id_name = writer.close()
        finally:
            writer.abort()
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

    def _old(self, hits: pa.Table, ids: list[Path]) -> None:
        """Temp table `old`: the committed (event_id, c) of every valid staged id that is committed, from `hits`,
        the index's (h, c) rows whose id hash occurs among the staged ids (`checkpoint.id_hits`).

        A staged record whose id hash and content hash both equal a committed row's is a replay of it: wrongly
        so only if two different ids collide in 64 bits and their events also have equal content hashes. The
        rare staged id whose hash is committed with another content hash (a conflicting version, or a hash
        collision between different ids) is settled on the id strings, read from the index for those hashes
        only.
        """
        con = self.con
        con.register("_hits", hits)
        try:
            con.execute("""CREATE OR REPLACE TEMP TABLE old AS
                           SELECT DISTINCT s.event_id, s.c FROM staged s JOIN _hits x
                             ON x.h = hash(s.event_id) AND x.c = s.c
                           WHERE s.problem IS NULL""")
            con.execute("""CREATE OR REPLACE TEMP TABLE unsure AS
                           SELECT DISTINCT x.h FROM staged s JOIN _hits x ON x.h = hash(s.event_id)
                           WHERE s.problem IS NULL AND s.event_id NOT IN (SELECT event_id FROM old)""")
        finally:
            con.unregister("_hits")
        if scalar(con, "SELECT count(*) FROM unsure"):
            con.execute(f"""INSERT INTO old SELECT i.event_id, i.c FROM read_parquet({sql_list(ids)}) i
                            WHERE i.h IN (SELECT h FROM unsure)
                              AND i.event_id IN (SELECT event_id FROM staged WHERE problem IS NULL)""")
        con.execute("DROP TABLE unsure")

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


def repeated_hashes(con: Any, path: Path, id_sql: str, log: EventLog) -> tuple[pa.Table, pa.Table | None]:
    """The 64-bit hashes (column `h`) that a Parquet file's event ids repeat, within the file or against the
    committed id index: every id that may be a duplicate has one (plus, rarely, distinct ids whose hashes collide);
    and the committed (h, c) rows whose id hash occurs in the file (None when nothing is committed), which is all
    `end_group` needs of the index, so the index is read once per batch.

    Within the file: sorting its hashes in numpy costs about a third of DuckDB's grouped count. Against the log:
    the same hashes probe the index's hash column (`checkpoint.id_hits`), so a small file onto a large log reads
    16 bytes per committed event and no id strings. Memory stays bounded: a file of more than
    `_HASHES_IN_MEMORY` ids is done in hash ranges, each re-reading the ids.
    """
    ids = log.id_files()
    ranges = max(1, -(-pq.ParquetFile(path).metadata.num_rows // _HASHES_IN_MEMORY))
    found, hits = [], []
    for r in range(ranges):
        where = f" AND h % {ranges} = {r}" if ranges > 1 else ""
        h = con.sql(f"""SELECT h FROM (
                            SELECT hash(i) AS h FROM (SELECT {id_sql} AS i FROM read_parquet({sql_str(str(path))}))
                            WHERE i IS NOT NULL) WHERE true{where}""").fetchnumpy()["h"]
        h = np.sort(np.asarray(h, dtype=np.uint64))
        found.append(np.unique(h[1:][h[1:] == h[:-1]]))
        if ids:
            con.register("_probe", pa.table({"h": pa.array(h, pa.uint64())}))
            try:
                hit = id_hits(con, ids, "_probe")
            finally:
                con.unregister("_probe")
            hits.append(hit)
            found.append(np.asarray(hit.column("h").to_numpy(), dtype=np.uint64))
    cand = pa.table({"h": pa.array(np.unique(np.concatenate(found)), pa.uint64())})
    return cand, (pa.concat_tables(hits) if ids else None)


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



class PartWriter:
    """Writes new events as Parquet parts, one per (UTC day, user bucket), plus the batch's id-index file.

    `add` takes Arrow tables with the `events` columns (`dayn`, days since 1970, instead of `day`), the content
    hash `c`, the id hash `h` (both for the id index) and the user bucket `ub`; rows whose `ub` is null (and, on
    the fast path, rows with `ok` false or `cand` true) are not events yet and are handed back. Parts are written
    by a small thread pool (pyarrow's writer releases the GIL; one write at a time per file). Files get temporary names, renamed into place by
    `close` (the commit comes later); `abort` removes whatever `close` did not finish.
    """

    def __init__(self, log: EventLog, batch: str, seg: int, buckets: int) -> None:
        self.log, self.batch, self.seg, self.buckets = log, batch, seg, buckets
        log.dir.mkdir(parents=True, exist_ok=True)
        log.ids_dir.mkdir(parents=True, exist_ok=True)
        self.writers: dict[int, tuple[pq.ParquetWriter, Path, str]] = {}
        self.pending: dict[int, Future[None]] = {}
        self.ids_name = f"{batch}-{seg:05d}.parquet"
        self.ids_tmp = log.ids_dir / f".{self.ids_name}.{os.getpid()}.tmp"
        self.ids_writer: pq.ParquetWriter | None = None
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
        self.rows = 0
        self.closed = False

    def add(self, t: pa.Table, *, source: str | None = None) -> pa.Table | None:
        """Write the new events of `t` (with `source` as their source when given); return the other rows."""
        ok = t.column("ub").is_valid()
        if "ok" in t.column_names:
            ok = pc.and_(pc.and_(ok, t.column("ok")), pc.invert(t.column("cand")))
        key = pc.add(pc.multiply(pc.cast(t.column("dayn"), pa.int64()), self.buckets),
                     pc.cast(t.column("ub"), pa.int64()))
        k = pc.if_else(ok, key, -1).to_numpy(zero_copy_only=False)
        if not len(k):
            return None
        lo, hi = int(k.min()), int(k.max())
        if lo == hi:  # one day and bucket (a time-ordered log): no copy
            if lo < 0:
                return t
            self._part(lo, t, None, source)
            self._ids(t)
            return None
        rest = None
        # One gather per (day, bucket), in the writer threads: gathering each key's rows in order is cheaper than
        # one sort of the batch, and runs beside the next batch's DuckDB work.
        events = t.select([c for c in _PART_INPUT if c in t.column_names])  # gather only what parts keep
        for v in np.unique(k).tolist():
            idx = np.flatnonzero(k == v)
            if v < 0:
                rest = t.take(idx)
            else:
                self._part(v, events, idx, source)
        ids = t.select(["event_id", "c", "h"])
        self._ids(ids if rest is None else ids.filter(ok))
        return rest

    def _part(self, key: int, t: pa.Table, idx: np.ndarray | None, source: str | None) -> None:
        if key not in self.writers:
            dayn, ub = divmod(key, self.buckets)
            name = part_name(_day(dayn), self.batch, self.seg, (ub, self.buckets))
            tmp = self.log.dir / f".{name}.{os.getpid()}.tmp"
            self.writers[key] = (pq.ParquetWriter(tmp, EVENTS, compression="zstd", use_dictionary=_DICT_COLUMNS,
                                                   write_statistics=_STATS_COLUMNS),
                                 tmp, name)
        self.rows += t.num_rows if idx is None else len(idx)
        writer = self.writers[key][0]

        def write() -> None:
            part = t if idx is None else t.take(idx)
            day = part.column("dayn").cast(pa.int32()).cast(pa.date32())
            src = pa.repeat(pa.scalar(source), part.num_rows) if source is not None else part.column("source")
            rest = part.drop_columns(["source"]) if "source" in part.column_names else part
            writer.write_table(conform(rest.append_column("day", day).append_column("source", src), EVENTS))
        self._submit(key, write)

    def _ids(self, t: pa.Table) -> None:
        ids = t.select(["event_id", "c", "h"])  # copies nothing
        if self.ids_writer is None:
            self.ids_writer = pq.ParquetWriter(self.ids_tmp, ids.schema, compression="zstd", use_dictionary=False,
                                              write_statistics=False)
        writer = self.ids_writer
        self._submit(-1, lambda: writer.write_table(ids))

    def _submit(self, key: int, job: Callable[[], None]) -> None:
        prev = self.pending.get(key)
        if prev is not None:
            prev.result()  # one write at a time per file, in order
        self.pending[key] = self.pool.submit(job)

    def close(self) -> tuple[list[str], int, str | None]:
        """Finish every file and rename it into place: (part names, rows written, id-index file name or None)."""
        for f in self.pending.values():
            f.result()
        self.pool.shutdown()
        for w, _, _ in self.writers.values():
            w.close()
        if self.ids_writer is not None:
            self.ids_writer.close()
        names = []
        for _, tmp, name in sorted(self.writers.values(), key=lambda x: x[2]):
            os.replace(tmp, self.log.dir / name)
            names.append(name)
        id_name = None
        if self.ids_writer is not None:
            os.replace(self.ids_tmp, self.log.ids_dir / self.ids_name)
            id_name = self.ids_name
        self.closed = True
        return names, self.rows, id_name

    def abort(self) -> None:
        """Remove the temporary files of a writer that did not close (an error on the way)."""
        if self.closed:
            return
        self.closed = True
        for f in self.pending.values():
            f.exception()
        self.pool.shutdown()
        for w, tmp, _ in self.writers.values():
            w.close()
            tmp.unlink(missing_ok=True)
        if self.ids_writer is not None:
            self.ids_writer.close()
            self.ids_tmp.unlink(missing_ok=True)


def _day(dayn: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=dayn)
