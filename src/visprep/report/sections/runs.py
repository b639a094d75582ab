"""Runs: a timeline of stage runs with their durations and the counts they read and wrote."""

from __future__ import annotations

import datetime as dt
from typing import Any

from visprep.report.charts import new_figure
from visprep.report.charts import render as render_chart
from visprep.report.context import ReportContext
from visprep.report.page import figure, table

STATUS_COLOURS = {"ok": "#3b8a4a", "failed": "#b5543b", "interrupted": "#d19a2a", "running": "#7a7a7a"}


def run_records(ctx: ReportContext) -> list[dict[str, Any]]:
    """The newest `limits.runs` run records that have a start time, oldest first."""
    return [r for r in ctx.run_records if _start(r) is not None][-ctx.limits.runs:]


def _start(r: dict[str, Any]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(r.get("started_at")))
    except ValueError:
        return None


def render(ctx: ReportContext) -> str:
    """The runs section's body."""
    runs = run_records(ctx)
    return _timeline(runs) + _by_stage(runs) + _table(runs, ctx.limits.table_rows)


def _timeline(runs: list[dict[str, Any]]) -> str:
    t0 = min(_start(r) for r in runs)  # type: ignore[type-var]
    stages = list(dict.fromkeys(r["stage"] for r in runs))
    offsets = [(_start(r) - t0).total_seconds() for r in runs]  # type: ignore[operator]
    span = max(max(o + (r.get("seconds") or 0.0) for o, r in zip(offsets, runs)), 1e-3)
    fig = new_figure(7.5, 0.9 + 0.22 * len(stages))
    ax = fig.add_subplot()
    for o, r in zip(offsets, runs):
        # A sub-second run is still drawn a visible sliver wide on a timeline of minutes.
        ax.barh(stages.index(r["stage"]), max(r.get("seconds") or 0.0, span / 400), left=o, height=0.6,
                color=STATUS_COLOURS.get(r.get("status"), "#7a7a7a"))
    ax.set_yticks(range(len(stages)), stages, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds since {t0:%Y-%m-%d %H:%M:%S} UTC")
    return figure(render_chart(fig), f"The last {len(runs)} stage runs on a time axis (green ok, red failed, "
                                     "orange interrupted, grey still running): long bars are where the time goes, "
                                     "red ones need a look.")


def _by_stage(runs: list[dict[str, Any]]) -> str:
    agg: dict[str, dict[str, Any]] = {}
    for r in runs:
        a = agg.setdefault(r["stage"], {"runs": 0, "seconds": 0.0, "failed": 0, "last": ""})
        a["runs"] += 1
        a["seconds"] += r.get("seconds") or 0.0
        a["failed"] += r.get("status") not in ("ok", "running")
        a["last"] = r.get("status", "")
    rows = sorted(agg.items(), key=lambda kv: -kv[1]["seconds"])
    return figure(table(["stage", "runs", "total seconds", "not ok", "last status"],
                        [(s, a["runs"], round(a["seconds"], 2), a["failed"], a["last"]) for s, a in rows],
                        numeric=[1, 2, 3]),
                  "Time per stage over these runs, slowest first: the top rows are what to optimise or to stop "
                  "re-running.")


def _in_out(counts: dict[str, Any]) -> tuple[str, str, str]:
    """(counts in, counts out, the other counts) as short text."""
    def show(items: list[tuple[str, Any]]) -> str:
        return ", ".join(f"{k} {v}" for k, v in items)

    ins = [(k, v) for k, v in counts.items() if k.endswith("_in") or k.startswith("rows_in")]
    outs = [(k, v) for k, v in counts.items() if k.endswith(("_out", ".rows")) or k == "rows"]
    rest = [(k, v) for k, v in counts.items() if (k, v) not in ins and (k, v) not in outs and v]
    return show(ins), show(outs), show(rest)


def _table(runs: list[dict[str, Any]], n: int) -> str:
    rows = []
    for r in reversed(runs[-n:]):
        c_in, c_out, rest = _in_out(r.get("counts") or {})
        notes = "; ".join(r.get("notes") or [])
        rows.append((str(r.get("started_at", ""))[:19].replace("T", " "), r["stage"], r.get("status"),
                     r.get("seconds"), c_in, c_out, rest, notes))
    return figure(table(["started (UTC)", "stage", "status", "seconds", "in", "out", "other counts", "notes"],
                        rows, numeric=[3]),
                  f"The newest {len(rows)} runs with the counts they read (in) and wrote (out): a stage whose out "
                  "is far below its in dropped records; the quarantine section says why.")
