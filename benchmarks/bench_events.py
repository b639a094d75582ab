"""Events stage vs bare DuckDB over the same Parquet: events/s and peak RSS.

    python benchmarks/bench_events.py            # 10M simulated events
    python benchmarks/bench_events.py --quick    # 1M
    python benchmarks/bench_events.py --events 30000000

Each measurement runs in its own process (peak RSS = that process's ru_maxrss). Baselines: a dedup by event_id
(DISTINCT ON, then a group-by) and a skip-above join. Target (issue 3): the whole stage within 2x the sum of the two
baselines, peak RSS under 2 GiB and flat in input size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEDUP = """SELECT type, count(*) FROM (SELECT DISTINCT ON (event_id) * FROM read_parquet('{f}')) GROUP BY type"""
SKIP = """
WITH imp AS (SELECT user_id, session_id, query_id, product_id, position FROM read_parquet('{f}')
             WHERE type = 'impression'),
clk AS (SELECT user_id, session_id, query_id, product_id, position FROM read_parquet('{f}') WHERE type = 'click')
SELECT i.query_id, i.product_id, count(*) FROM imp i JOIN clk c
  ON c.user_id = i.user_id AND c.session_id = i.session_id AND c.query_id = i.query_id AND i.position < c.position
WHERE NOT EXISTS (SELECT 1 FROM clk k WHERE k.user_id = i.user_id AND k.session_id = i.session_id
                  AND k.query_id = i.query_id AND k.product_id = i.product_id)
GROUP BY ALL"""


def _generate(path: Path, n_events: int) -> int:
    import pyarrow.parquet as pq

    from visprep.events.simulate import SimConfig, iter_event_chunks

    cfg = SimConfig(seed=0, products=50_000, queries=5_000, users=200_000, searches=max(1, n_events // 13),
                    duplicate_rate=0.01, days=7)
    n = 0
    writer = None
    for chunk in iter_event_chunks(cfg, searches_per_chunk=50_000):
        writer = writer or pq.ParquetWriter(path, chunk.schema, compression="zstd")
        writer.write_table(chunk)
        n += chunk.num_rows
    writer.close()
    return n


def _phase(name: str, data: Path, work: Path) -> float:
    t0 = time.perf_counter()
    if name == "stage":
        from visprep.events.stage import ingest_event_files
        from visprep.workspace import Workspace

        ingest_event_files(Workspace(work / "ws"), [data])
    else:
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET temp_directory = '{work / 'duck-tmp'}'")
        con.execute((DEDUP if name == "dedup" else SKIP).format(f=data)).fetchall()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true", help="1M events")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        s = _phase(a.phase, Path(a.data), Path(a.work))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": s, "peak_rss_mb": rss}))
        return
    n_target = 1_000_000 if a.quick else a.events
    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    try:
        data = work / "events.parquet"
        t0 = time.perf_counter()
        n = _generate(data, n_target)
        print(f"simulated {n:,} events in {time.perf_counter() - t0:.1f} s ({data.stat().st_size / 1e6:.0f} MB)")
        res = {}
        for phase in ("dedup", "skip_above", "stage"):
            out = subprocess.run([sys.executable, __file__, "--phase", phase, "--data", str(data), "--work",
                                  str(work)], capture_output=True, text=True, check=True)
            res[phase] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[phase]
            print(f"{phase:<11} {r['seconds']:7.2f} s  {n / r['seconds'] / 1e6:6.2f} M events/s  "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB")
        base = res["dedup"]["seconds"] + res["skip_above"]["seconds"]
        print(f"stage / (dedup + skip_above) = {res['stage']['seconds'] / base:.2f}x (target <= 2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
