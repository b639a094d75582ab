"""Images/s of visprep's fetcher + preprocessing against img2dataset 1.47, same URLs, same machine, same run.

Both download N URLs from a local threaded HTTP server (listen backlog 1024, in its own process) that cycles
~200 distinct ~800 px JPEGs, resize the shorter side to 224 and center crop 224x224, re-encode as JPEG
(quality 95), and write the results to tar shards, with 2 worker processes each.

    visprep:    Fetcher (threads) -> preprocess_uint8 (profile "clip-224": shorter side 224, crop 224)
                -> encode_jpeg(quality=95) -> sha256 -> tar, in 2 processes
    img2dataset: --resize_mode center_crop --image_size 224 --processes_count 2 --output_format webdataset

img2dataset runs from its own virtualenv as a subprocess, so it never touches the project's environment:

    python3 -m venv benchmarks/.work/i2d-venv
    NO_ALBUMENTATIONS_UPDATE=1 benchmarks/.work/i2d-venv/bin/pip install 'img2dataset==1.47.*'

Usage: PYTHONPATH=src python benchmarks/bench_fetch.py [--quick] [--urls N] [--threads T]

The tools alternate (visprep, img2dataset, visprep[, img2dataset, visprep]); the ratio is the median over
rounds. Load average is printed at start and end. Results: benchmarks/.work/bench_fetch.json.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
I2D_VENV = WORK / "i2d-venv"
sys.path.insert(0, str(ROOT / "tests"))  # the loopback fixture server lives with the tests
from bench_common import fmt_met, cpu_model  # noqa: E402 - the script folder is on sys.path when run as a script
sys.path.insert(0, str(ROOT / "src"))

PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
N_DISTINCT = 200
LONG_SIDE = 800
TARGET = 3.0  # x img2dataset images/s, wall clock


def make_images(count: int = N_DISTINCT, seed: int = 0) -> list[bytes]:
    """`count` distinct ~800 px JPEGs: random crops of the OpenCV sample photos (synthetic if absent)."""
    rng = np.random.default_rng(seed)
    photos = [cv2.imread(p) for p in sorted(glob.glob(str(PHOTO_DIR / "*.jpg")))]
    photos = [p for p in photos if p is not None and min(p.shape[:2]) >= 200]
    images = []
    for index in range(count):
        if photos:
            photo = photos[index % len(photos)]
            h, w = photo.shape[:2]
            ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = photo[top : top + ch, left : left + cw]
        else:
            crop = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
            crop = cv2.GaussianBlur(crop, (0, 0), 3)
        scale = LONG_SIDE / max(crop.shape[:2])
        resized = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                             interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        images.append(encoded.tobytes())
    return images


def _serve(images: list[bytes], port_queue: mp.Queue) -> None:
    from http_fixtures import LoopbackServer

    server = LoopbackServer(images=images).start()
    port_queue.put(server.port)
    while True:
        time.sleep(3600)


def _visprep_worker(urls: list[str], threads: int, out_path: str, result_queue: mp.Queue) -> None:
    from visprep.fetch import Fetcher, FetchSettings
    from visprep.images.preprocess import PROFILES, encode_jpeg, preprocess_uint8

    profile = PROFILES["clip-224"]  # shorter side -> 224, center crop 224: img2dataset's "center_crop"
    settings = FetchSettings(concurrency=threads, timeout_s=10.0, retries=0, allow_loopback=True)
    ok = failed = 0
    with Fetcher(settings) as fetcher, tarfile.open(out_path, "w") as tar:
        for result in fetcher.fetch_many(urls):
            if not result.ok:
                failed += 1
                continue
            key = hashlib.sha256(result.data).hexdigest()
            jpeg = encode_jpeg(preprocess_uint8(result.data, profile), quality=95)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(jpeg)
            tar.addfile(info, io.BytesIO(jpeg))
            ok += 1
    result_queue.put((ok, failed))


def _children_cpu_s() -> float:
    """User + system CPU seconds of reaped child processes so far (the server process is never reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_visprep(urls: list[str], *, processes: int, threads: int) -> tuple[float, int, int, float]:
    out_dir = WORK / "visprep-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    context = mp.get_context("spawn")
    queue: mp.Queue = context.Queue()
    start, cpu_start = time.perf_counter(), _children_cpu_s()
    workers = [
        context.Process(target=_visprep_worker,
                        args=(urls[i::processes], threads, str(out_dir / f"{i:05d}.tar"), queue))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    counts = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    return elapsed, sum(c[0] for c in counts), sum(c[1] for c in counts), _children_cpu_s() - cpu_start


def run_img2dataset(urls: list[str], *, processes: int, threads: int) -> tuple[float, int, int, float] | None:
    executable = I2D_VENV / "bin" / "img2dataset"
    if not executable.exists():
        print(f"img2dataset skipped: {executable} not found. Create it with:\n"
              f"  python3 -m venv {I2D_VENV}\n"
              f"  NO_ALBUMENTATIONS_UPDATE=1 {I2D_VENV}/bin/pip install 'img2dataset==1.47.*'")
        return None
    url_file = WORK / "urls.txt"
    url_file.write_text("\n".join(urls) + "\n")
    out_dir = WORK / "i2d-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    shard = -(-len(urls) // (2 * processes))
    command = [
        str(executable), "--url_list", str(url_file), "--input_format", "txt", "--output_folder", str(out_dir),
        "--output_format", "webdataset", "--processes_count", str(processes), "--thread_count", str(threads),
        "--image_size", "224", "--resize_mode", "center_crop", "--encode_quality", "95",
        "--number_sample_per_shard", str(shard), "--timeout", "10", "--retries", "0",
        "--enable_wandb", "False", "--distributor", "multiprocessing",
    ]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    start, cpu_start = time.perf_counter(), _children_cpu_s()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed, cpu_s = time.perf_counter() - start, _children_cpu_s() - cpu_start
    if completed.returncode != 0:
        print(completed.stderr[-3000:])
        raise SystemExit(f"img2dataset failed with exit code {completed.returncode}")
    ok = failed = 0
    for stats_file in out_dir.glob("*_stats.json"):
        stats = json.loads(stats_file.read_text())
        ok += stats["successes"]
        failed += stats["count"] - stats["successes"]
    return elapsed, ok, failed, cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer URLs (about a minute in all)")
    parser.add_argument("--urls", type=int, default=None, help="URLs per run (default 1500, quick 600)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16, help="fetch threads per process, both tools")
    args = parser.parse_args()
    n_urls = args.urls or (600 if args.quick else 1500)
    rounds = 1 if args.quick else 2

    WORK.mkdir(parents=True, exist_ok=True)
    images = make_images()
    sizes = [len(b) for b in images]
    context = mp.get_context("spawn")
    port_queue: mp.Queue = context.Queue()
    server = context.Process(target=_serve, args=(images, port_queue), daemon=True)
    server.start()
    try:
        port = port_queue.get(timeout=30)
        urls = [f"http://127.0.0.1:{port}/image/{i % N_DISTINCT}.jpg?n={i}" for i in range(n_urls)]
        load_start = os.getloadavg() if hasattr(os, "getloadavg") else ()
        print(f"{time.strftime('%Y-%m-%d %H:%M')}  nproc={os.cpu_count()}  cpu={cpu_model()}  "
              f"load={[round(x, 2) for x in load_start]}")
        print(f"{n_urls} URLs over {N_DISTINCT} distinct JPEGs (~{LONG_SIDE} px, mean {np.mean(sizes)/1e3:.0f} kB); "
              f"{args.processes} processes x {args.threads} threads each; {rounds} interleaved rounds")
        # The tools alternate (visprep, img2dataset, visprep, ...), so drifting load from other processes hits
        # both; each ratio compares one img2dataset run with the mean of the visprep runs either side of it,
        # and the reported ratio is the median of those.
        runs = [("visprep", run_visprep(urls, processes=args.processes, threads=args.threads))]
        for _ in range(rounds):
            i2d = run_img2dataset(urls, processes=args.processes, threads=args.threads)
            if i2d is None:
                break
            runs.append(("img2dataset 1.47", i2d))
            runs.append(("visprep", run_visprep(urls, processes=args.processes, threads=args.threads)))
        for name, (elapsed, ok, failed, cpu_s) in runs:
            print(f"  {name:<18} {ok / elapsed:8.1f} img/s  {ok / cpu_s:8.1f} img/CPU-s   "
                  f"({ok} ok, {failed} failed, {elapsed:.1f} s wall, {cpu_s:.1f} CPU-s)")
        wall_ratios, cpu_ratios = [], []
        for index in range(1, len(runs) - 1, 2):
            (_, before), (_, i2d), (_, after) = runs[index - 1], runs[index], runs[index + 1]
            if i2d[1] == 0:
                continue
            vis_rate = (before[1] / before[0] + after[1] / after[0]) / 2
            vis_per_cpu = (before[1] + after[1]) / (before[3] + after[3])
            wall_ratios.append(vis_rate / (i2d[1] / i2d[0]))
            cpu_ratios.append(vis_per_cpu / (i2d[1] / i2d[3]))
        result = {
            "benchmark": "fetch", "date": time.strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(),
            "cpu": cpu_model(), "load_start": [round(x, 2) for x in load_start], "quick": args.quick,
            "urls": n_urls, "processes": args.processes, "threads": args.threads, "target": TARGET,
            "runs": [{"tool": name, "wall_s": r[0], "ok": r[1], "failed": r[2], "cpu_s": r[3],
                      "img_per_s": r[1] / r[0], "img_per_cpu_s": r[1] / r[3] if r[3] else None}
                     for name, r in runs],
            "wall_ratios": wall_ratios, "cpu_ratios": cpu_ratios,
            "command": "PYTHONPATH=src python benchmarks/bench_fetch.py" + (" --quick" if args.quick else ""),
        }
        if wall_ratios:
            result["wall_ratio_median"] = statistics.median(wall_ratios)
            result["cpu_ratio_median"] = statistics.median(cpu_ratios)
            result["met"] = result["wall_ratio_median"] >= TARGET
            print(f"  ratio visprep / img2dataset (median of {len(wall_ratios)}): "
                  f"{result['wall_ratio_median']:.2f}x wall-clock img/s {wall_ratios}, "
                  f"{result['cpu_ratio_median']:.2f}x img per CPU-second (server excluded); target >= {TARGET}x "
                  + ("met" if result["met"] else "MISSED"))
        load_end = os.getloadavg() if hasattr(os, "getloadavg") else ()
        result["load_end"] = [round(x, 2) for x in load_end]
        print(f"# load average at end: {result['load_end']}")
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "bench_fetch.json").write_text(json.dumps(result, indent=1))
    finally:
        server.terminate()
        server.join(timeout=5)


TITLE = "Fetch"


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
    lines = [f"`{result['command']}` — {result['urls']} URLs per run from a loopback server, 800 px JPEGs → "
             f"224 center crop → JPEG q95 → tar, {result['processes']} processes × {result['threads']} threads, "
             f"tools alternating; load {result['load_start']} → {result['load_end']}.", "",
             "| run | tool | img/s (wall) | img per CPU-s | ok | failed |", "|---|---|---|---|---|---|"]
    for index, run_ in enumerate(result["runs"], 1):
        per_cpu = f"{run_['img_per_cpu_s']:.1f}" if run_["img_per_cpu_s"] else "—"
        lines.append(f"| {index} | {run_['tool']} | {run_['img_per_s']:.1f} | {per_cpu} | {run_['ok']} | "
                     f"{run_['failed']} |")
    if "wall_ratio_median" in result:
        lines += ["", f"Ratio visprep / img2dataset, median over rounds: **{result['wall_ratio_median']:.2f}×** "
                  f"wall-clock img/s (rounds: {', '.join(f'{r:.2f}' for r in result['wall_ratios'])}), "
                  f"{result['cpu_ratio_median']:.2f}× images per CPU-second. Target ≥ {result['target']}× "
                  f"wall-clock: {fmt_met(result['met'])}."]
    else:
        lines += ["", "img2dataset did not run (see the script's message); no ratio."]
    return lines


if __name__ == "__main__":
    main()
