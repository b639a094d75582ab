"""Tables read lazily by DuckDB: a view over a table's Parquet parts, only the columns a query names, instead of
the whole table read into Arrow first (`Workspace.read_table`). What the table stages' memory grows with is then
the query's result, not its inputs."""

from __future__ import annotations

from typing import Any

from visprep.schema import schema_for
from visprep.workspace import Workspace


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def scan_view(con: Any, ws: Workspace, table: str, columns: list[str], *, name: str | None = None) -> str:
    """Create view `name` (default: the table's name) on `con` of `columns` of `table`'s Parquet parts; an empty
    view of the table's types when it was never written. Returns the view's name."""
    name = name or table
    schema = schema_for(table)
    paths = ws.part_paths(table)
    if not paths:
        con.register(name, schema.empty_table().select(columns))
        return name
    files = "[" + ", ".join(_quote(str(p)) for p in paths) + "]"
    # Each column cast to the table's own type, as `conform` casts a part (an older part may hold another width).
    con.register(f"{name}__types", schema.empty_table().select(columns))
    types = {row[0]: row[1] for row in con.execute(f'DESCRIBE "{name}__types"').fetchall()}
    con.unregister(f"{name}__types")
    # union_by_name: a part written before a column existed reads it as NULL, as `conform` fills it.
    cols = ", ".join(f'CAST("{c}" AS {types[c]}) AS "{c}"' for c in columns)
    con.execute(f'CREATE VIEW "{name}" AS SELECT {cols} FROM read_parquet({files}, union_by_name = true)')
    return name


def union_view(con: Any, ws: Workspace, tables: tuple[str, ...], columns: list[str], *, name: str) -> str:
    """View `name` of `columns` of every table in `tables` (the same columns in each), one after another."""
    parts = [scan_view(con, ws, t, columns, name=f"{name}__{k}") for k, t in enumerate(tables)]
    con.execute(f'CREATE VIEW "{name}" AS ' + " UNION ALL ".join(f'SELECT * FROM "{p}"' for p in parts))
    return name


def query_arrow(con: Any, query: str) -> Any:
    """The Arrow table of `query` on `con`."""
    rel = con.sql(query)
    # DuckDB 2 renamed `arrow()` (which now returns a reader) to `to_arrow_table()`.
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def read_columns(ws: Workspace, table: str, columns: list[str]) -> Any:
    """`columns` of `table` as an Arrow table, read from its Parquet parts column by column (`Workspace.read_table`
    reads every column, then selects); a column a part lacks reads as nulls, as `conform` fills it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([schema_for(table).field(c) for c in columns])
    parts = []
    for path in ws.part_paths(table):
        have = set(pq.read_schema(path).names)
        part = pq.read_table(path, columns=[c for c in columns if c in have])
        parts.append(pa.table({c: part.column(c).cast(schema.field(c).type) if c in have
                               else pa.nulls(part.num_rows, schema.field(c).type) for c in columns}, schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()
