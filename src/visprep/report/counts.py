"""The numbers `visprep status` and the report share: rows per table and quarantine by stage and reason.

Both read them from here, so the terminal and the page cannot disagree. Row counts come from the Parquet footers
(no column is read), so they stay cheap on a workspace with millions of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visprep.workspace import Workspace


@dataclass(frozen=True)
class WorkspaceCounts:
    """Rows per table and quarantined records per (stage, reason).

    Attributes:
        tables: table name -> rows, for every table present, by name.
        quarantine: (stage, reason, count), largest count first, then by stage and reason.
    """

    tables: dict[str, int]
    quarantine: list[tuple[str, str | None, int]]

    @property
    def quarantined(self) -> int:
        """Total quarantined records."""
        return sum(n for _, _, n in self.quarantine)

    def quarantine_json(self) -> list[dict[str, Any]]:
        """The quarantine counts as `{"stage", "reason", "count"}` objects (what `visprep status --json` prints)."""
        return [{"stage": s, "reason": r, "count": n} for s, r, n in self.quarantine]


def table_rows(ws: Workspace, name: str) -> int:
    """Rows of table `name` (0 when absent), summed from its part files' Parquet footers."""
    return sum(pq.read_metadata(p).num_rows for p in ws.part_paths(name))


def quarantine_counts(ws: Workspace) -> list[tuple[str, str | None, int]]:
    """Quarantined records per (stage, reason), largest first, then by stage and reason."""
    # Every quarantine part is written through the schema, so each has both columns: read only those.
    parts = [pq.read_table(p, columns=["stage", "reason"]) for p in ws.part_paths("quarantine")]
    q = pa.concat_tables(parts, promote_options="permissive") if parts else None
    if q is None or q.num_rows == 0:
        return []
    grouped = q.group_by(["stage", "reason"]).aggregate([([], "count_all")]).to_pylist()
    rows = [(g["stage"], g["reason"], int(g["count_all"])) for g in grouped]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1] or ""))


def workspace_counts(ws: Workspace) -> WorkspaceCounts:
    """Rows per table present and quarantine counts by stage and reason: the one source of both numbers."""
    return WorkspaceCounts(tables={name: table_rows(ws, name) for name in ws.table_names()},
                           quarantine=quarantine_counts(ws))
