"""Incremental interaction pairs: a new hour of events onto a 30-day log, against a full rebuild of the pairs.

    python benchmarks/bench_events_incremental.py                  # 1M, 2M and 10M-event logs + 1% new events
    python benchmarks/bench_events_incremental.py --quick          # 1M + 10k (1%)
    python benchmarks/bench_events_incremental.py --sizes 1M,2M    # each log + 1% of it as new events

The log is simulated (seeded, 30 days, 200k users, 1% duplicate records); the new events are another simulation
from the same user pool squeezed into the hour after the log (new event ids; a user's new session may reuse an
old session id, so sessions can span the boundary). Each size runs in its own process, in order:
1. ingest the log into a workspace (pairs not built), then the full rebuild of the pairs with `[events]
   incremental = true` (every user's partials summed, then the combine): `full_partials`;
2. ingest the new hour with `rebuild_pairs=True`: the pairs update is incremental (its phases come from the run
   record: `touched_users` (finding the touched sessions), `recompute` (the touched sessions, over the settled
   parts and over all), `write_sums` (the delta files), `combine` (`combine_load` of the sums,
   `combine_propensities`, `combine_write` of the weighted table, `combine_report`));
3. check: the updated table equals a full rebuild over log + hour, row for row;
4. baseline: the same log + hour in a workspace with `incremental = false`, pairs rebuilt from the whole log
   (`build_pairs`): `full_whole_log`.
Target: incremental update <= 5% of the full rebuild (the whole-log build, the faster of the two).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, WORK, count_label, parse_count

DATA = WORK / "events-incremental"
RESULT = WORK / "bench_events_incremental.json"
GEN_VERSION = 1
DAYS = 30
TARGET = 0.05


def _simulate(path: Path, n_events: int, *, seed: int, days: int, start: dt.datetime, squeeze_to_s: float | None,
              id_prefix: str) -> int:
    """Write about `n_events` simulated events to `path`; return the rows written."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from visprep.events.simulate import SimConfig, iter_event_chunks

    cfg = SimConfig(seed=seed, products=50_000, queries=5_000, users=200_000, searches=max(1, n_events // 13),
                    duplicate_rate=0.01, days=days, start=start)
    t0_ms = int(start.timestamp() * 1000)
    span_ms = days * 86_400_000
    tmp = path.with_suffix(".tmp")
    writer = None
    n = 0
    for chunk in iter_event_chunks(cfg, searches_per_chunk=50_000):
        if squeeze_to_s is not None:  # the simulated days into one hour, order kept
            ts = chunk.column("ts").cast(pa.int64()).to_numpy() - t0_ms
            ts = (ts * (squeeze_to_s * 1000 / span_ms)).astype("int64") + t0_ms
            chunk = chunk.set_column(chunk.schema.get_field_index("ts"), "ts",
                                     pa.array(ts).cast(chunk.schema.field("ts").type))
        chunk = chunk.set_column(0, "event_id", pc.binary_join_element_wise(id_prefix, chunk.column(0), ""))
        writer = writer or pq.ParquetWriter(tmp, chunk.schema, compression="zstd")
        writer.write_table(chunk)
        n += chunk.num_rows
    writer.close()
    os.replace(tmp, path)
    return n


def dataset(n_events: int, n_new: int) -> tuple[Path, Path, int, int]:
    """The cached log of about `n_events` events and the new hour of about `n_new` (paths and rows)."""
    import pyarrow.parquet as pq

    DATA.mkdir(parents=True, exist_ok=True)
    base = DATA / f"log-v{GEN_VERSION}-{count_label(n_events)}.parquet"
    hour = DATA / f"hour-v{GEN_VERSION}-{count_label(n_events)}-{count_label(n_new)}.parquet"
    start = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    if not base.exists():
        _simulate(base, n_events, seed=0, days=DAYS, start=start, squeeze_to_s=None, id_prefix="")
    if not hour.exists():
        _simulate(hour, n_new, seed=1, days=1, start=start + dt.timedelta(days=DAYS), squeeze_to_s=3600.0,
                  id_prefix="h")
    return base, hour, pq.ParquetFile(base).metadata.num_rows, pq.ParquetFile(hour).metadata.num_rows


def _ws(path: Path, incremental: bool) -> object:
    from visprep.workspace import Workspace

    ws = Workspace(path)
    ws.root.mkdir(parents=True)
    ws.config_path.write_text(f"[events]\nincremental = {'true' if incremental else 'false'}\n")
    return Workspace(path)


def _measure(base: Path, hour: Path, work: Path) -> dict:
    """Steps 1-4 of the module docstring in this process; return the timings."""
    from visprep.events.stage import build_interaction_pairs, ingest_event_files

    out: dict = {}
    ws = _ws(work / "inc", True)
    t = time.perf_counter()
    ingest_event_files(ws, [base], rebuild_pairs=False)
    out["ingest_log_s"] = time.perf_counter() - t
    t = time.perf_counter()
    build_interaction_pairs(ws)
    out["full_partials_s"] = time.perf_counter() - t
    t = time.perf_counter()
    r = ingest_event_files(ws, [hour])
    out["ingest_hour_and_update_s"] = time.perf_counter() - t
    build = json.loads((ws.runs_dir / f"{r.run_id}.json").read_text())["metrics"]["pairs_build"]
    assert build["mode"] == "incremental", build
    out["update"] = build
    out["update_s"] = build["phases_s"]["total"]
    out["events_new"] = r.events_new
    updated = ws.read_table("interaction_pairs")
    out["pair_rows"] = updated.num_rows
    out["sums_mb"] = round(sum(p.stat().st_size for p in (ws.tables_dir / "events.parquet" / "_pairs").iterdir())
                           / 1e6, 1)
    t = time.perf_counter()
    build_interaction_pairs(ws)
    out["full_partials_after_s"] = time.perf_counter() - t
    out["identical"] = ws.read_table("interaction_pairs").equals(updated)
    whole = _ws(work / "whole", False)
    ingest_event_files(whole, [base, hour], rebuild_pairs=False)
    t = time.perf_counter()
    build_interaction_pairs(whole)
    out["full_whole_log_s"] = time.perf_counter() - t
    return out


def main() -> None:
    """Run the sizes (each in its own process) and write the JSON result."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=None, help="log sizes; the new events are 1%% of each (default 1M,2M,10M)")
    ap.add_argument("--quick", action="store_true", help="1M + 10k")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--hour", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        res = _measure(Path(a.base), Path(a.hour), Path(a.work))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_common import run_phase

    sizes = [1_000_000] if a.quick else [parse_count(s) for s in (a.sizes or "1M,2M,10M").split(",")]
    command = "python benchmarks/bench_events_incremental.py" + (
        " --quick" if a.quick else (f" --sizes {a.sizes}" if a.sizes else ""))
    rows = []
    for n_target in sizes:
        base, hour, n, n_new = dataset(n_target, n_target // 100)
        print(f"{count_label(n_target)}: log {n:,} events + {n_new:,} new", flush=True)
        work = Path(tempfile.mkdtemp(prefix="bench-events-inc-", dir=WORK))
        load_start = [round(x, 2) for x in os.getloadavg()]
        try:
            r = run_phase([__file__, "--phase", "measure", "--base", str(base), "--hour", str(hour),
                           "--work", str(work)], "measure")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        r.update(size=count_label(n_target), events=n, new_events=n_new, load_start=load_start,
                 load_end=[round(x, 2) for x in os.getloadavg()])
        r["ratio"] = r["update_s"] / r["full_whole_log_s"]
        r["ratio_partials"] = r["update_s"] / r["full_partials_s"]
        print(f"  full rebuild: whole-log {r['full_whole_log_s']:.2f} s, partial sums {r['full_partials_s']:.2f}"
              f" s; incremental update {r['update_s']:.2f} s ({r['update']['touched_users']:,} users, "
              f"{r['update'].get('touched_sessions', 0):,} sessions, {r['update']['touched_events']:,} events; "
              f"phases {r['update']['phases_s']}) = {r['ratio']:.1%} of the whole-log rebuild; identical: "
              f"{r['identical']}; load {r['load_start']} -> {r['load_end']}", flush=True)
        rows.append(r)
    result = {"command": command, "rows": rows, "target_ratio": TARGET, "cpus": os.cpu_count(),
              "ratio_met": all(r["ratio"] <= TARGET for r in rows), "identical": all(r["identical"] for r in rows)}
    WORK.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    print("\n".join(section(result)))


TITLE = "Events: incremental interaction pairs"


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark for docs/benchmarks.md."""
    lines = [(f"`{result['command']}` — a simulated {DAYS}-day log (seeded, 200k users, 50k products, 1% duplicate "
              f"records) plus 1% new events in the hour after it (same user pool), {result.get('cpus', '?')} cores. "
              "Full rebuild: the pairs from the whole log (`incremental = false`), and the partial sums rebuilt "
              "from the whole log (`incremental = true`, `build_interaction_pairs`); incremental: the pairs "
              "update of the ingest of the new hour, by phase (finding the touched sessions, recomputing them, "
              "writing the change of the partial sums, the combine that reweighs every pair: loading the sums, "
              "the propensities, writing the table, its report). Measured in the same process, one after the "
              "other; identical = the updated table equals a full rebuild, row for row."), "",
             ("| log events | new | touched users / sessions / their events | full rebuild s: whole log / "
              "partial sums | update s (touched + recompute + sums + combine) | combine s (load + propensities "
              "+ write + report) | update / full (whole log) | pairs rows | identical | peak RSS MB | "
              "load avg start → end |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        u, ph = r["update"], r["update"]["phases_s"]
        lines.append(f"| {r['events']:,} | {r['new_events']:,} | {u['touched_users']:,} / "
                     f"{u.get('touched_sessions', 0):,} / {u['touched_events']:,} | "
                     f"{r['full_whole_log_s']:.2f} / {r['full_partials_s']:.2f} | "
                     f"{r['update_s']:.2f} ({ph.get('touched_users', 0):.2f} + "
                     f"{ph['recompute']:.2f} + {ph['write_sums']:.2f} + {ph['combine']:.2f}) | "
                     f"{ph.get('combine_load', 0):.2f} + {ph.get('combine_propensities', 0):.2f} + "
                     f"{ph.get('combine_write', 0):.2f} + {ph.get('combine_report', 0):.2f} | "
                     f"{r['ratio']:.1%} | "
                     f"{r['pair_rows']:,} | {'yes' if r['identical'] else '**no**'} | {r['peak_rss_mb']:.0f} | "
                     f"{r.get('load_start', ['?'])[0]} → {r.get('load_end', ['?'])[0]} |")
    met = "**met**" if result["ratio_met"] else "**missed**"
    lines += ["", f"Target update <= {result['target_ratio']:.0%} of the full rebuild: {met}."]
    return lines

if __name__ == "__main__":
    main()
