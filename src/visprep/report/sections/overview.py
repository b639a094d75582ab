"""Overview: rows per table, the same numbers `visprep status` prints."""

from __future__ import annotations

from visprep.report.context import ReportContext
from visprep.report.page import empty, figure, table


def render(ctx: ReportContext) -> str:
    """Rows per table and the quarantine total."""
    counts = ctx.counts
    if not counts.tables:
        return empty(f"The workspace {ctx.ws.root} has no tables yet: run `visprep demo` or `visprep run FILE`.")
    rows = [(name, n) for name, n in counts.tables.items()]
    return figure(table(["table", "rows"], rows, numeric=[1]),
                  f"Rows per table ({counts.quarantined:,} records quarantined): the numbers `visprep status` "
                  "prints; a table missing here is a stage that has not run.")
