"""DuckDB helpers of the events stage: Arrow results and SQL literals (connections: `visprep.views.db`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa


def to_arrow(rel: Any) -> pa.Table:
    """Materialise a DuckDB relation as an Arrow table (DuckDB 2 renamed `arrow()` to `to_arrow_table()`)."""
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def sql_str(value: str) -> str:
    """Quote `value` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(paths: list[Path]) -> str:
    """A SQL list literal of file paths, for `read_parquet([...])`."""
    return "[" + ", ".join(sql_str(str(p)) for p in paths) + "]"


def copy_to(con: Any, select_sql: str, path: Path) -> None:
    """Write the result of `select_sql` to the Parquet file `path` atomically (DuckDB COPY to a temp name, rename)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        con.execute(f"COPY ({select_sql}) TO {sql_str(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def scalar(con: Any, sql: str) -> Any:
    """The single value of a one-row, one-column query (fetched to the end, so the connection is free again)."""
    return con.execute(sql).fetchall()[0][0]
