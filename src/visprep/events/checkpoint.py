"""The events table's commit log: the live part files, the event-id index, file checkpoints and Kafka offsets.

Layout (beside the output it describes):

    tables/events.parquet/part-<YYYY-MM-DD>-<batch>-<n>.parquet   event parts, one or more per (day, batch)
    tables/events.parquet/_ids/<batch>.parquet                      event-id index: (event_id, c = content hash,
                                                                    h = hash(event_id))
    tables/events.parquet/_checkpoint.json                          the commit log (atomic rewrite)
    tables/quarantine.parquet/part-events-<batch>.parquet           refused records of a batch

The log lists the live event parts and id files by name. A batch, or a compaction, becomes visible by one atomic
rename of `_checkpoint.json`; files on disk the log does not list are leftovers of a killed run (output written,
never committed; or parts a committed compaction replaced) and `recover()` deletes them before anything reads the
table. So a crash at any point leaves exactly the previous committed state. (`_ids` and names starting with `_` or
`.` are skipped by `pyarrow.parquet.read_table(folder)` and by `Workspace.read_table`.)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visprep.events.duck import copy_to, scalar, sql_list, to_arrow
from visprep.workspace import Workspace, atomic_write_bytes, utcnow

CHECKPOINT_NAME = "_checkpoint.json"
IDS_DIR = "_ids"
#: The partial sums of the incremental pairs build (`visprep.events.incremental`), listed in the checkpoint.
PAIRS_DIR = "_pairs"
#: Batches whose record (parts, counts, commit time) the checkpoint keeps: the most recent ones.
BATCH_HISTORY = 200
#: Layout of the id-index files: 2 added the id hash `h`. A log whose index is older is re-indexed on open.
ID_INDEX_VERSION = 2


@dataclass
class BatchCommit:
    """What one committed batch produced."""

    batch: str
    parts: list[str]
    ids: list[str]
    events: int
    duplicates: int
    quarantined: int
    file: dict[str, Any] | None = None  # {path, bytes, sha256} for a file batch
    kafka: dict[str, dict[str, int]] | None = None  # {topic: {partition: next offset}} after a Kafka batch


class EventLog:
    """The committed state of the `events` table in a workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.dir = ws.table_path("events")
        self.ids_dir = self.dir / IDS_DIR
        self.pairs_dir = self.dir / PAIRS_DIR
        self.path = self.dir / CHECKPOINT_NAME
        self.state: dict[str, Any] = {"generation": 0, "pairs_generation": 0, "batches": {}, "files": {},
                                      "kafka": {}, "parts": [], "ids": [], "merges": 0, "hash_canary": None,
                                      "events": 0, "quarantined_batches": [], "id_index_version": ID_INDEX_VERSION,
                                      "pairs_pending": [], "pairs_state": None}
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            self.state.update(saved)
            if "parts" not in saved:  # a log written before parts were listed
                self.state["parts"] = sorted(p for b in self.state["batches"].values() for p in b["parts"])
                self.state["ids"] = []
                self.state["hash_canary"] = None
            if "id_index_version" not in saved:  # an index written before it had a layout version
                self.state["id_index_version"] = 1 if self.state["ids"] else ID_INDEX_VERSION
            if "quarantined_batches" not in saved:  # a log that kept every batch's record
                batches = self.state["batches"].values()
                self.state["events"] = sum(int(b["events"]) for b in batches)
                self.state["quarantined_batches"] = sorted(n for n, b in self.state["batches"].items()
                                                           if b.get("quarantined"))

    # --- reading --------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """How many batches have been committed (pairs are current when `pairs_generation` equals it)."""
        return int(self.state["generation"])

    def file_committed(self, sha256: str) -> dict[str, Any] | None:
        """The checkpoint of an already ingested file content, or None."""
        return self.state["files"].get(sha256)

    def kafka_offsets(self, topic: str) -> dict[int, int]:
        """Committed next offsets of `topic` by partition."""
        return {int(p): int(o) for p, o in self.state["kafka"].get(topic, {}).items()}

    def part_files(self) -> list[Path]:
        """The committed event parts."""
        return [self.dir / n for n in sorted(self.state["parts"])]

    def id_files(self) -> list[Path]:
        """The committed files of the event-id index."""
        return [self.ids_dir / n for n in sorted(self.state["ids"])]

    # --- writing --------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Delete files (event parts, id files, events quarantine parts) no commit lists; return how many."""
        live = set(self.state["parts"])
        live_ids = set(self.state["ids"])
        committed = set(self.state["quarantined_batches"])
        n = 0
        if self.dir.is_dir():
            for p in self.dir.glob("part-*.parquet"):
                if p.name not in live:
                    p.unlink()
                    n += 1
            for tmp in self.dir.glob(".*"):
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if self.ids_dir.is_dir():
            for p in self.ids_dir.iterdir():
                if p.name not in live_ids:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    n += p.suffix == ".parquet"
        live_pairs = {p.name for p in self._pairs_files()}
        if self.pairs_dir.is_dir():
            for p in self.pairs_dir.iterdir():
                if p.name not in live_pairs:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    n += p.suffix == ".parquet"
        qdir = self.ws.table_path("quarantine")
        for p in qdir.glob("part-events-*.parquet") if qdir.is_dir() else []:
            if p.name[len("part-events-"):-len(".parquet")] not in committed:
                p.unlink()
                n += 1
        return n

    def check_id_index(self, con: Any) -> bool:
        """Rebuild the id index from the event parts when it is missing, was hashed by another DuckDB build
        (DuckDB's `hash()` is not promised stable across versions) or has an older layout; return whether it
        was rebuilt."""
        canary = content_hash_canary(con)
        # Parts named for a user bucket were bucketed with `hash(user_id)` of the DuckDB build that wrote them.
        self.state.setdefault("bucket_canary", canary)
        if (self.state.get("hash_canary") == canary and self.state["id_index_version"] == ID_INDEX_VERSION
                and (self.state["ids"] or not self.state["parts"])):
            return False
        old = self.id_files()
        name = f"r{self.generation:010d}-{int(self.state.get('merges', 0)) + 1}.parquet"
        if self.state["parts"]:
            copy_to(con, f"SELECT event_id, {content_hash_sql()} AS c, hash(event_id) AS h "
                         f"FROM read_parquet({sql_list(self.part_files())})", self.ids_dir / name)
            self.state["ids"] = [name]
        else:
            self.state["ids"] = []
        self.state["merges"] = int(self.state.get("merges", 0)) + 1
        self.state["hash_canary"] = canary
        self.state["id_index_version"] = ID_INDEX_VERSION
        self._save()
        for p in old:
            if p.name not in self.state["ids"]:
                p.unlink(missing_ok=True)
        return True

    def commit(self, c: BatchCommit) -> None:
        """Make batch `c` visible: one atomic rewrite of the checkpoint (with its file checkpoint / offsets)."""
        s = self.state
        s["generation"] = int(s["generation"]) + 1
        s["events"] = int(s["events"]) + c.events
        if c.quarantined:
            s["quarantined_batches"] = sorted(set(s["quarantined_batches"]) | {c.batch})
        s["batches"][c.batch] = {"parts": c.parts, "events": c.events, "duplicates": c.duplicates,
                                 "quarantined": c.quarantined, "committed_at": utcnow().isoformat(),
                                 "generation": s["generation"]}
        if len(s["batches"]) > BATCH_HISTORY:
            # The checkpoint is rewritten on every commit: a record of every batch made a long Kafka stream's
            # commits O(batches so far) (76 ms per commit after 5,000 polls). Totals and the batches that own a
            # quarantine part are kept separately; the run records keep each run's counts.
            keep = sorted(s["batches"].items(), key=lambda kv: int(kv[1].get("generation", 0)))[-BATCH_HISTORY:]
            s["batches"] = dict(keep)
        s["parts"] = sorted(set(s["parts"]) | set(c.parts))
        # The parts whose users the partial sums of the pairs do not reflect yet (`visprep.events.incremental`).
        s["pairs_pending"] = sorted(set(s.get("pairs_pending", [])) | set(c.parts))
        s["ids"] = sorted(set(s["ids"]) | set(c.ids))
        if c.file is not None:
            s["files"][c.file["sha256"]] = {**c.file, "batch": c.batch}
        if c.kafka is not None:
            for topic, offsets in c.kafka.items():
                s["kafka"].setdefault(topic, {}).update({str(p): int(o) for p, o in offsets.items()})
        self._save()

    def compact(self, con: Any, *, small_rows: int, buckets: int = 1, crash: Any = None) -> int:
        """Merge the small parts of each day (fewer than `small_rows` rows) into one, and the small id files into
        one; return how many small files were merged.

        Small parts of one user bucket merge into one part of that bucket. Small parts that hold every user
        (Kafka polls and small files are not cut, see `BatchWriter.buckets_for`) are merged into one part per
        user bucket when `buckets` > 1, so the pairs build of a log fed by Kafka reads only its groups' parts too.

        Output first, then one atomic checkpoint rewrite that swaps the file lists, then the old files go: a kill
        before the swap leaves the merged file unlisted (deleted by `recover`), after it the old ones. The
        generation does not move: the table's content is unchanged, so `interaction_pairs` stays current.
        """
        # Small parts merge per (day, user bucket), so a merged part keeps the bucket its inputs declared; and
        # parts whose users the pair partials do not reflect yet merge only with each other, so an incremental
        # pairs build recomputes the new batches' users, not every user of an old part they were merged into.
        pending = set(self.state.get("pairs_pending", []))
        by_day: dict[tuple[str, tuple[int, int], bool], list[str]] = defaultdict(list)
        for name in self.state["parts"]:
            if _rows(self.dir / name) < small_rows:
                by_day[(name[5:15], part_bucket(name), name in pending)].append(name)
        small_ids = [n for n in self.state["ids"] if _rows(self.ids_dir / n) < small_rows]
        plan = {day: names for day, names in by_day.items() if len(names) > 1}
        if not plan and len(small_ids) < 2:
            return 0
        m = int(self.state.get("merges", 0)) + 1
        added, removed, added_pending = [], [], []
        # Each merge gets its own segment number: two merges of one day (a settled and a pending group, or a
        # bucketed group and the split of unbucketed parts into that bucket) must not write one file name.
        for seg, ((day, bucket, is_pending), names) in enumerate(sorted(plan.items())):
            date = dt.date.fromisoformat(day)
            if bucket == (0, 1) and buckets > 1:
                outs = {g: self.dir / part_name(date, f"m{m:09d}", seg, (g, buckets)) for g in range(buckets)}
                written = [p.name for p in _merge_bucketed(con, [self.dir / n for n in names], outs)]
            else:
                written = [part_name(date, f"m{m:09d}", seg, bucket)]
                _merge([self.dir / n for n in names], self.dir / written[0])
            added += written
            added_pending += written if is_pending else []
            removed += names
        new_ids: list[str] = []
        if len(small_ids) > 1:
            out = f"m{m:09d}.parquet"
            _merge([self.ids_dir / n for n in small_ids], self.ids_dir / out)
            new_ids = [out]
        if crash is not None:
            crash("compact_after_output")
        s = self.state
        s["merges"] = m
        s["parts"] = sorted((set(s["parts"]) - set(removed)) | set(added))
        s["pairs_pending"] = sorted((pending - set(removed)) | set(added_pending))
        if new_ids:
            s["ids"] = sorted((set(s["ids"]) - set(small_ids)) | set(new_ids))
        self._save()
        if crash is not None:
            crash("compact_after_checkpoint")
        for n in removed:
            (self.dir / n).unlink(missing_ok=True)
        for n in small_ids if new_ids else []:
            (self.ids_dir / n).unlink(missing_ok=True)
        return len(removed) + (len(small_ids) if new_ids else 0)

    def buckets_trusted(self, con: Any) -> bool:
        """Tell whether the user buckets in part names hold under this DuckDB build's `hash()` (a log whose
        canary moved is read whole by the pairs build, which is slower but exact)."""
        canary = content_hash_canary(con)
        return self.state.get("bucket_canary", canary) == canary

    def events_committed(self) -> int:
        """How many events the committed batches hold."""
        return int(self.state["events"])

    def mark_pairs(self) -> None:
        """Record that `interaction_pairs` was rebuilt from the current generation (by the whole-log build, so
        the partial sums, if any, no longer follow the log: the next incremental build starts over)."""
        self.state["pairs_generation"] = self.generation
        self.state["pairs_pending"] = []
        old = self._pairs_files()
        self.state["pairs_state"] = None
        self._save()
        for p in old:
            p.unlink(missing_ok=True)

    def pairs_pending(self) -> list[Path]:
        """The committed parts holding users whose events the partial sums of the pairs do not reflect yet."""
        live = set(self.state["parts"])
        return [self.dir / n for n in sorted(self.state.get("pairs_pending", [])) if n in live]

    def pairs_state(self) -> dict[str, Any] | None:
        """The committed partial sums of the pairs: {"files": {name: [base file, delta files...]}, "key": what they
        depend on, "seq": n} (a log written before deltas lists one file per sum: read as [file])."""
        state = self.state.get("pairs_state")
        if state is None:
            return None
        files = {k: [v] if isinstance(v, str) else list(v) for k, v in (state.get("files") or {}).items()}
        return {**state, "files": files}

    def commit_pairs(self, files: dict[str, list[str]], key: dict[str, Any], seq: int) -> None:
        """Make new partial sums of the pairs (already written under `pairs_dir`) and the `interaction_pairs` built
        from them current: one atomic checkpoint rewrite, then the replaced partials go."""
        old = self._pairs_files()
        self.state["pairs_state"] = {"files": files, "key": key, "seq": seq}
        self.state["pairs_pending"] = []
        self.state["pairs_generation"] = self.generation
        self._save()
        live = {n for names in files.values() for n in names}
        for p in old:
            if p.name not in live:
                p.unlink(missing_ok=True)

    def _pairs_files(self) -> list[Path]:
        state = self.pairs_state() or {}
        return [self.pairs_dir / n for names in (state.get("files") or {}).values() for n in names]

    def pairs_current(self) -> bool:
        """Tell whether `interaction_pairs` reflects every committed batch."""
        return int(self.state["pairs_generation"]) == self.generation and self.ws.has_table("interaction_pairs")

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(self.state, indent=1, sort_keys=True, default=str).encode())


def _merge(files: list[Path], out: Path) -> None:
    """Concatenate small Parquet files into `out` atomically, one input in memory at a time (pyarrow's writer:
    about 3x DuckDB's COPY here)."""
    import os

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    schema = pq.read_schema(files[0])
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for f in files:
                w.write_table(pq.read_table(f, schema=schema))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _merge_bucketed(con: Any, files: list[Path], outs: dict[int, Path]) -> list[Path]:
    """Concatenate event parts into one file per user bucket (`hash(user_id) % len(outs)`), atomically, one input
    in memory at a time; return the files written (buckets without events get none)."""
    import os

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    buckets = len(outs)
    schema = pq.read_schema(files[0])
    writers: dict[int, tuple[pq.ParquetWriter, Path]] = {}
    try:
        for f in files:
            t = pq.read_table(f, schema=schema)
            users = pc.unique(t.column("user_id"))
            con.register("_users", pa.table({"u": users}))
            try:  # one bucket per distinct user, mapped back by value: the rows' order never depends on DuckDB
                ub = con.sql(f"SELECT u, {user_bucket_sql('u', buckets)} AS b FROM _users").to_arrow_table()
            finally:
                con.unregister("_users")
            where = pc.index_in(t.column("user_id"), value_set=ub.column("u")).to_numpy()
            k = ub.column("b").to_numpy().astype(np.int64)[where]
            for g in np.unique(k).tolist():
                if g not in writers:
                    tmp = outs[g].with_name(f".{outs[g].name}.{os.getpid()}.tmp")
                    writers[g] = (pq.ParquetWriter(tmp, schema, compression="zstd"), tmp)
                writers[g][0].write_table(t.take(np.flatnonzero(k == g)))
        for w, _ in writers.values():
            w.close()
        for g, (_, tmp) in writers.items():
            os.replace(tmp, outs[g])
    except BaseException:
        for w, tmp in writers.values():
            w.close()
            tmp.unlink(missing_ok=True)
        raise
    return [outs[g] for g in sorted(writers)]


def id_hits(con: Any, ids: list[Path], hashes: str) -> pa.Table:
    """The (h, c) rows of the id-index files `ids` whose id hash `h` is in `hashes` (a SQL relation with a UBIGINT
    column `h`): the content hash of every committed id that has one of those hashes.

    Only the two fixed-width columns are read, not the id strings: a small batch onto a large log costs 16 bytes
    per committed event (`BatchWriter._old` settles the rare hash-equal, content-different rows on the strings).
    """
    return to_arrow(con.sql(f"SELECT h, c FROM read_parquet({sql_list(ids)}) WHERE h IN (SELECT h FROM {hashes})"))


def _rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def content_hash_sql(alias: str = "") -> str:
    """DuckDB expression of an event's content hash (every field but the id and where it came from)."""
    from visprep.events.normalize import CONTENT_FIELDS

    return "hash(" + ", ".join(f"{alias}{f}" for f in CONTENT_FIELDS) + ")"


def content_hash_canary(con: Any) -> int:
    """The content hash of a fixed record: it changes when DuckDB's `hash()` does."""
    return int(scalar(con, "SELECT hash(TIMESTAMPTZ '2024-01-01 00:00:00+00', 'u', 's', 'click', 'q', NULL::VARCHAR, "
                       "'p', 3::INTEGER)"))


_BUCKET = re.compile(r"-b(\d+)of(\d+)\.parquet$")


def user_bucket_sql(column: str, buckets: int) -> str:
    """DuckDB expression of the user bucket of `column` among `buckets`: the one definition that part names, the
    streamed ingest, compaction and the pairs groups share."""
    return f"hash({column}) % {int(buckets)}"


def day_number_sql(ts: str) -> str:
    """DuckDB expression of the UTC day of timestamp `ts`, as days since 1970 (cheaper than a TIMESTAMPTZ cast)."""
    return f"CAST(epoch_ms({ts}) // 86400000 AS INTEGER)"


def part_name(day: dt.date, batch: str, seg: int, bucket: tuple[int, int] = (0, 1)) -> str:
    """The file name of an event part: `part-<day>-<batch>-<seg>[-b<g>of<G>].parquet`.

    A part written for user bucket (g, G) holds only events whose `hash(user_id) % G == g`, so the pairs build
    reads only the parts of the users it works on (`part_bucket`); G = 1 (no suffix) holds any users.
    """
    g, of = bucket
    suffix = f"-b{g:02d}of{of:02d}" if of > 1 else ""
    return f"part-{day:%Y-%m-%d}-{batch}-{seg:05d}{suffix}.parquet"


def part_bucket(name: str) -> tuple[int, int]:
    """The user bucket (g, G) a part file's name declares; (0, 1) when it holds any users."""
    m = _BUCKET.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 1)


def day_of(value: dt.date) -> str:
    """The partition label of a day."""
    return f"{value:%Y-%m-%d}"
