"""The events table's commit log: which ingest batches are committed, with their file checkpoints or Kafka offsets.

Layout (beside the output it describes):

    tables/events.parquet/part-<YYYY-MM-DD>-<batch>-<chunk>.parquet   event parts, one or more per (day, batch)
    tables/events.parquet/_checkpoint.json                             the commit log (atomic rewrite)
    tables/quarantine.parquet/part-events-<batch>.parquet              refused records of a batch

A batch becomes visible by one atomic rename of `_checkpoint.json` that lists it with its file checkpoint (path,
sha256) or its Kafka offsets. Parts of batches the log does not list are leftovers of a killed run: `recover()`
deletes them before anything else reads the table, so a crash between writing output and committing leaves exactly
the previous committed state.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from visprep.workspace import Workspace, atomic_write_bytes, atomic_write_parquet, utcnow

CHECKPOINT_NAME = "_checkpoint.json"


@dataclass
class BatchCommit:
    """What one committed batch produced."""

    batch: str
    parts: list[str]
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
        self.path = self.dir / CHECKPOINT_NAME
        self.state: dict[str, Any] = {"generation": 0, "pairs_generation": 0, "batches": {}, "files": {},
                                      "kafka": {}}
        if self.path.exists():
            self.state = json.loads(self.path.read_text())

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
        """The committed event parts (after `recover()`, every part on disk)."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("part-*.parquet"))

    # --- writing --------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Delete parts (events and events quarantine) of batches that never committed; return how many."""
        committed = set(self.state["batches"])
        n = 0
        for p in self.dir.glob("part-*.parquet") if self.dir.is_dir() else []:
            if _batch_of_event_part(p.name) not in committed:
                p.unlink()
                n += 1
        qdir = self.ws.table_path("quarantine")
        for p in qdir.glob("part-events-*.parquet") if qdir.is_dir() else []:
            if p.name[len("part-events-"):-len(".parquet")] not in committed:
                p.unlink()
                n += 1
        for tmp in self.dir.glob(".*.tmp") if self.dir.is_dir() else []:
            tmp.unlink(missing_ok=True)
        return n

    def write_parts(self, events: pa.Table, *, batch: str, chunk: int) -> list[str]:
        """Write `events` (one chunk of `batch`) as one part per UTC day; return the part file names."""
        names = []
        if events.num_rows == 0:
            return names
        self.dir.mkdir(parents=True, exist_ok=True)
        days = pc.unique(events.column("day")).to_pylist()
        for day in sorted(days):
            part = events.filter(pc.equal(events.column("day"), pa.scalar(day, pa.date32())))
            name = f"part-{day:%Y-%m-%d}-{batch}-{chunk:05d}.parquet"
            atomic_write_parquet(self.dir / name, part)
            names.append(name)
        return names

    def commit(self, c: BatchCommit) -> None:
        """Make batch `c` visible: one atomic rewrite of the checkpoint (with its file checkpoint / offsets)."""
        s = self.state
        s["generation"] = int(s["generation"]) + 1
        s["batches"][c.batch] = {"parts": c.parts, "events": c.events, "duplicates": c.duplicates,
                                 "quarantined": c.quarantined, "committed_at": utcnow().isoformat()}
        if c.file is not None:
            s["files"][c.file["sha256"]] = {**c.file, "batch": c.batch}
        if c.kafka is not None:
            for topic, offsets in c.kafka.items():
                s["kafka"].setdefault(topic, {}).update({str(p): int(o) for p, o in offsets.items()})
        self._save()

    def mark_pairs(self) -> None:
        """Record that `interaction_pairs` was rebuilt from the current generation."""
        self.state["pairs_generation"] = self.generation
        self._save()

    def pairs_current(self) -> bool:
        """Tell whether `interaction_pairs` reflects every committed batch."""
        return int(self.state["pairs_generation"]) == self.generation and self.ws.has_table("interaction_pairs")

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(self.state, indent=1, sort_keys=True, default=str).encode())


def _batch_of_event_part(name: str) -> str:
    # part-YYYY-MM-DD-<batch>-<chunk>.parquet
    stem = name[len("part-"):-len(".parquet")]
    bits = stem.split("-")
    return bits[3] if len(bits) == 5 else ""


def day_of(value: dt.date) -> str:
    """The partition label of a day."""
    return f"{value:%Y-%m-%d}"
