"""`visprep embed` throughput (images/s, default EfficientNet-Lite0 on torch CPU) and the incremental no-op run time.

Builds a throwaway workspace of N product-like JPEGs, runs the embed stage twice (the second is the hourly no-op)
and once more after adding 10% new images.

    python benchmarks/bench_embed.py --quick      # 64 images
    python benchmarks/bench_embed.py --n 2000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, write_result

from visprep.embed.stage import embed_stage
from visprep.images.preprocess import encode_jpeg
from visprep.schema import IMAGES
from visprep.workspace import Workspace

TITLE = "Embed (feature store)"


def _add(ws: Workspace, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    old = ws.read_table("images")
    rows = []
    for _ in range(n):
        img = np.full((480, 480, 3), 245, np.uint8)
        y, x, r = rng.integers(100, 380, 3)
        img[max(0, y - r // 2): y + r // 2, max(0, x - r // 2): x + r // 2] = rng.integers(0, 255, 3)
        rows.append({"image_id": ws.store.put(encode_jpeg(img), "jpg"), "status": "ok", "format": "jpeg"})
    ws.write_table("images", pa.concat_tables([old, pa.Table.from_pylist(rows, schema=IMAGES)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    n = 64 if args.quick else args.n
    root = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        ws = Workspace(root)
        _add(ws, n, 0)
        t0 = time.perf_counter()
        first = embed_stage(ws)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        noop = embed_stage(ws)
        t_noop = time.perf_counter() - t0
        _add(ws, max(1, n // 10), 1)
        t0 = time.perf_counter()
        inc = embed_stage(ws)
        t_inc = time.perf_counter() - t0
        out = {"n": n, "model_id": first.model_id, "first_run_s": round(t_first, 2),
               "images_per_s_incl_model_load": round(first.embedded / t_first, 1), "noop_s": round(t_noop, 3),
               "noop_skipped": noop.skipped, "incremental_new": inc.embedded, "incremental_s": round(t_inc, 2),
               "machine": machine(), "command": "python benchmarks/bench_embed.py " + " ".join(sys.argv[1:])}
        print(out)
        write_result("bench_embed", out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def section(result: dict) -> list[str]:
    """Markdown lines of the embed benchmark for docs/benchmarks.md."""
    intro = (f"`{result.get('command', 'python benchmarks/bench_embed.py')}` — {result['n']} product-like 480x480 "
             f"JPEGs, {result['model_id']} on torch CPU (224 px input), a throwaway workspace.")
    header = "| images | first run s | images/s (incl. model load) | no-op run s | +10% new: images | +10% new: s |"
    row = (f"| {result['n']} | {result['first_run_s']} | {result['images_per_s_incl_model_load']} | "
           f"{result['noop_s']} (skipped {result['noop_skipped']}) | {result['incremental_new']} | "
           f"{result['incremental_s']} |")
    note = ("No baseline: the model's forward pass is the cost; the no-op run (the hourly job with nothing new) is "
            "the number to watch.")
    return [intro, "", header, "|---|---|---|---|---|---|", row, "", note]


if __name__ == "__main__":
    main()
