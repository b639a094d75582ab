"""The one DuckDB connection factory: every connection in visprep is made here, with the same session settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visprep.workspace import Workspace


def connect(*, memory_limit: str | None = None, temp_dir: Path | None = None, threads: int | None = None,
            preserve_insertion_order: bool = True) -> Any:
    """Return an in-memory DuckDB connection in UTC.

    Args:
        memory_limit: DuckDB's `memory_limit` (e.g. "2GB"); None keeps DuckDB's default.
        temp_dir: where DuckDB spills beyond the memory limit (created when missing).
        threads: DuckDB's worker threads; None or 0 keeps DuckDB's default.
        preserve_insertion_order: False lets DuckDB stream large unordered results in less memory (only for
            queries whose output order is fixed by an ORDER BY, or does not matter).
    """
    try:
        import duckdb
    except ImportError as exc:  # pragma: no cover - duckdb is a core dependency
        raise ImportError("visprep needs duckdb: pip install duckdb") from exc
    con = duckdb.connect()
    # Timestamps are stored in UTC; a session in the machine's zone would shift anything cast to text or date.
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = '" + str(temp_dir).replace("'", "''") + "'")
    if not preserve_insertion_order:
        con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def connect_for(ws: Workspace, *, preserve_insertion_order: bool = True) -> Any:
    """A `connect()` for queries over workspace `ws`'s tables: DuckDB's memory limit is `events.duckdb_memory_limit`
    and it spills under the workspace (`tmp/duckdb`), as the events stages' queries do, not DuckDB's default of
    80 % of the machine's memory with nowhere to spill (a view's joins grow with the catalog)."""
    return connect(memory_limit=ws.config.events.duckdb_memory_limit, temp_dir=ws.root / "tmp" / "duckdb",
                   preserve_insertion_order=preserve_insertion_order)
