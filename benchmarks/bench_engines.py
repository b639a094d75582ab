"""Local engine vs Ray engine on one machine: fetch, inspect (both from scratch) and export over a demo workspace,
in one process, alternating engines for `rounds` rounds (docs/scaling.md, "Measured"). Also prints the run's
load average after each round (the machine is shared).

Usage: python benchmarks/bench_engines.py WORKDIR [N_PRODUCTS [ROUNDS]]
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from visprep.config import EngineConfig
from visprep.demo.sources import write_demo_sources
from visprep.engines.ray_engine import connect
from visprep.export.stage import export_stage
from visprep.fetch.stage import fetch_stage
from visprep.images.stage import inspect_stage
from visprep.pipeline import run_pipeline
from visprep.workspace import Workspace

CONFIG = '[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n'


def main(root: Path, n_products: int, rounds: int) -> None:
    """Build the workspace under `root` (emptied first), then print each round's seconds per stage and engine."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    src = write_demo_sources(root / "src", n_products=n_products, seed=5)
    t = time.perf_counter()
    run_pipeline(ws, src.catalog_files)
    print(f"pipeline (local) {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    connect(EngineConfig(kind="ray"))  # started once, outside the timings: a visprep run pays it once
    print(f"ray start {time.perf_counter() - t:.1f}s", flush=True)
    for rnd in range(rounds):
        for kind in ("local", "ray"):
            ws.config_path.write_text(CONFIG + f'[engine]\nkind = "{kind}"\n')
            w = Workspace(ws.root)
            for table in ("urls", "images"):  # fetch and inspect from scratch: the image store emptied too
                path = w.table_path(table)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            shutil.rmtree(w.store.root)
            t = time.perf_counter()
            f = fetch_stage(w)
            t_fetch = time.perf_counter() - t
            t = time.perf_counter()
            r = inspect_stage(w)
            t_inspect = time.perf_counter() - t
            t = time.perf_counter()
            export_stage(w)
            t_export = time.perf_counter() - t
            print(f"round {rnd + 1} {kind}: fetch {f.attempted} urls {t_fetch:.2f}s, inspect {r.inspected} images "
                  f"{t_inspect:.2f}s, export {t_export:.2f}s; load {' '.join(map(str, os.getloadavg()))}",
                  flush=True)


if __name__ == "__main__":  # the local engine's forkserver workers import this module: no work at import
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2400,
         int(sys.argv[3]) if len(sys.argv) > 3 else 2)
