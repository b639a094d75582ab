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
           [--window-only] [--products N] [--baseline-src DIR]

The tools alternate (visprep, img2dataset, visprep[, img2dataset, visprep]); the ratio is the median over
rounds. Load average is printed at start and end. Results: benchmarks/.work/bench_fetch.json.

Window part (`window` in the result; `--window-only` runs just it): the fetch stage against the window it is
given. bench_scale's loopback server (20 ms per request, `fetch.concurrency = 32`, N products of two ~3 KB JPEGs)
serves, once with Nagle's algorithm on (as bench_scale's server was) and once with it off. Per server: a plain
keep-alive http.client with as many threads (the server's own capacity), then the fetch stage in its own process
(catalog stage first, untimed), with every request's start and end time, the checkpoints' time and the CPU
seconds. `--baseline-src DIR` (e.g. `git archive <commit> src | tar -x -C DIR`) runs the stage from those sources
too, alternating with this checkout's, so before and after are measured in the same run.
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
from bench_common import cpu_model, fmt_met, load_average, run_phase  # noqa: E402 - the script folder is on sys.path
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
    parser.add_argument("--window-only", action="store_true", help="run only the window part")
    parser.add_argument("--no-window", action="store_true", help="skip the window part")
    parser.add_argument("--products", type=int, default=None, help="window part: products (default 10000, quick 3000)")
    parser.add_argument("--baseline-src", nargs="*", default=[], metavar="DIR",
                        help="window part: also run the stage from these source trees (before/after in one run)")
    parser.add_argument("--window-phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ws", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--catalog", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.window_phase:
        print(json.dumps(window_phase(args.window_phase, args.ws, args.catalog, args.threads)))
        return
    if args.window_only:
        window = run_window(args.products or (3000 if args.quick else 10_000), WINDOW_CONCURRENCY, args.baseline_src)
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "bench_fetch.json").write_text(json.dumps({"benchmark": "fetch", "window": window}, indent=1))
        return
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
        if not args.no_window:
            result["window"] = run_window(args.products or (3000 if args.quick else 10_000), WINDOW_CONCURRENCY,
                                          args.baseline_src)
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "bench_fetch.json").write_text(json.dumps(result, indent=1))
    finally:
        server.terminate()
        server.join(timeout=5)


# ------------------------------------------------------------------------------------------------ window part

WINDOW_LATENCY_MS = 20.0
WINDOW_CONCURRENCY = 32
BIN_S = 0.1  # occupancy is averaged over bins of this many seconds


def _window_server(blob: str, latency_s: float, nagle: bool, port_queue: mp.Queue) -> None:
    import bench_scale

    server, port = bench_scale.start_server(Path(blob), latency_s)
    # bench_scale's handler turns Nagle off; "on" is the server as it was before that fix.
    server.RequestHandlerClass.disable_nagle_algorithm = not nagle
    port_queue.put(port)
    while True:
        time.sleep(3600)


def plain_client(port: int, n: int, threads: int) -> dict:
    """Images/s of `threads` keep-alive http.client connections fetching /img/0..n-1: what the server allows."""
    import http.client
    import threading

    counter = iter(range(n))
    lock = threading.Lock()

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                conn.close()
                return
            conn.request("GET", f"/img/{index}.jpg")
            conn.getresponse().read()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    return {"img_per_s": round(n / wall, 1), "cpu_us_per_img": round((time.process_time() - cpu) / n * 1e6),
            "load": load_average()}


def window_phase(src: str, ws_root: Path, catalog: Path, concurrency: int) -> dict:
    """Run the catalog stage, then the fetch stage timed, in this process with `src` first on the path."""
    sys.path.insert(0, src)
    import threading

    import bench_scale

    from visprep import stages
    from visprep.fetch import client
    from visprep.pipeline import run_stage
    from visprep.workspace import Workspace

    shutil.rmtree(ws_root, ignore_errors=True)
    ws_root.mkdir(parents=True)
    config = bench_scale.CONFIG.format(engine="local").replace("concurrency = 32", f"concurrency = {concurrency}")
    (ws_root / "visprep.toml").write_text(config)
    ws = Workspace(ws_root)
    with ws.writer("catalog"), ws.acting_as("catalog"):
        stages.get("catalog").run(ws, None, files=[str(catalog)], allow_removals=False)

    spans: list[tuple[float, float]] = []  # (start, end) of every Fetcher.fetch, in any worker thread
    original_fetch = client.Fetcher.fetch

    def timed_fetch(self: object, url: str, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return original_fetch(self, url, **kwargs)
        finally:
            spans.append((t0, time.perf_counter()))

    client.Fetcher.fetch = timed_fetch
    checkpoint = {"s": 0.0, "n": 0}
    original_write_part = Workspace.write_part

    def timed_write_part(self: Workspace, name: str, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return original_write_part(self, name, *args, **kwargs)
        finally:
            if name == "urls" and threading.current_thread() is threading.main_thread():
                checkpoint["s"] += time.perf_counter() - t0
                checkpoint["n"] += 1

    Workspace.write_part = timed_write_part
    # The previous phase's 20k small files are still being written back (and its workspace deleted): flush that
    # here, or whichever phase runs second pays for the first (measured: up to 30 % slower, in either order).
    os.sync()
    start, cpu = time.perf_counter(), time.process_time()
    run_stage(ws, "fetch", force=True, explicit=True)
    wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    ok = ws.read_table("urls", ["status"]).column("status").to_pylist().count("ok")

    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    loop = last - first
    busy = np.zeros(int(loop / BIN_S) + 1)
    for s, e in spans:  # seconds in flight per bin; / BIN_S = mean requests in flight in that bin
        s, e = s - first, e - first
        b = int(s / BIN_S)
        while s < e:
            edge = min(e, (b + 1) * BIN_S)
            busy[b] += edge - s
            s, b = edge, b + 1
    occupancy = busy[:-1] / BIN_S if len(busy) > 1 else busy / max(loop, 1e-9)
    latencies = np.array([e - s for s, e in spans])
    return {"src": src, "requests": len(spans), "ok": ok, "wall_s": round(wall, 2), "loop_s": round(loop, 2),
            "img_per_s": round(len(spans) / loop, 1), "stage_img_per_s": round(len(spans) / wall, 1),
            "cpu_us_per_img": round(cpu_s / len(spans) * 1e6),
            "occupancy_mean": round(float(latencies.sum() / loop), 1),
            "occupancy_p10": round(float(np.percentile(occupancy, 10)), 1),
            "occupancy_p50": round(float(np.percentile(occupancy, 50)), 1),
            "latency_ms_mean": round(float(latencies.mean() * 1e3), 1),
            "latency_ms_p50": round(float(np.percentile(latencies, 50) * 1e3), 1),
            "latency_ms_p90": round(float(np.percentile(latencies, 90) * 1e3), 1),
            "checkpoints": checkpoint["n"], "checkpoint_s": round(checkpoint["s"], 2),
            "checkpoint_share": round(checkpoint["s"] / loop, 3), "load": load_average()}


def run_window(n_products: int, concurrency: int, baseline_src: list[str]) -> dict:
    """The window part: per server (Nagle on, off), a plain client, then the stage from each source tree."""
    import bench_scale

    base = WORK / "fetch-window"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    blob = base / "images.bin"
    bench_scale.render_images(2 * n_products, blob)
    sources = [(("baseline" if len(baseline_src) == 1 else f"baseline {Path(src).name}"), src)
               for src in baseline_src] + [("this checkout", str(ROOT / "src"))]
    context = mp.get_context("spawn")
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "products": n_products, "images": 2 * n_products,
                 "latency_ms": WINDOW_LATENCY_MS, "concurrency": concurrency,
                 "window_img_per_s": round(concurrency / (WINDOW_LATENCY_MS / 1e3)), "load_start": load_average(),
                 "servers": []}
    print(f"window: {2 * n_products} images, {WINDOW_LATENCY_MS:.0f} ms per request, concurrency {concurrency} "
          f"(window {out['window_img_per_s']} img/s); load {out['load_start']}", flush=True)
    for nagle in (True, False):
        port_queue: mp.Queue = context.Queue()
        server = context.Process(target=_window_server, args=(str(blob), WINDOW_LATENCY_MS / 1e3, nagle, port_queue),
                                 daemon=True)
        server.start()
        try:
            port = port_queue.get(timeout=60)
            catalog = base / f"catalog-{port}.jsonl"
            bench_scale.write_catalog(catalog, n_products, port)
            name = "Nagle on (two writes wait for the delayed ACK)" if nagle else "Nagle off (TCP_NODELAY)"
            entry = {"server": name, "nagle": nagle, "plain": plain_client(port, 2 * n_products, concurrency),
                     "stage": []}
            print(f"  {name}: plain http.client {entry['plain']['img_per_s']} img/s, load {entry['plain']['load']}",
                  flush=True)
            for label, src in (sources if nagle else sources[::-1]):  # ABBA: neither source always runs first
                cmd = [str(Path(__file__).resolve()), "--window-phase", src, "--ws", str(base / "ws"),
                       "--catalog", str(catalog), "--threads", str(concurrency)]
                run_ = run_phase(cmd, "fetch window")
                run_["label"] = label
                entry["stage"].append(run_)
                print(f"    stage ({label}): {run_['img_per_s']} img/s in the loop ({run_['stage_img_per_s']} over "
                      f"the stage), {run_['cpu_us_per_img']} CPU-us/img, in flight {run_['occupancy_mean']} "
                      f"(p10 {run_['occupancy_p10']}), latency p50 {run_['latency_ms_p50']} ms, checkpoints "
                      f"{100 * run_['checkpoint_share']:.1f} %, load {run_['load']}", flush=True)
            out["servers"].append(entry)
        finally:
            server.terminate()
            server.join(timeout=5)
    out["load_end"] = load_average()
    shutil.rmtree(base, ignore_errors=True)
    return out


def window_lines(window: dict) -> list[str]:
    """Markdown lines of the window part."""
    lines = [(f"Window part (run {window['date']} UTC, load {window['load_start']} → {window['load_end']}): the fetch "
             f"stage on {window['products']:,} products ({window['images']:,} ~3 KB JPEGs) from bench_scale's loopback "
             f"server, {window['latency_ms']:.0f} ms per request, `fetch.concurrency = {window['concurrency']}`: the "
             f"window allows {window['window_img_per_s']:,} img/s. `plain` is a keep-alive http.client with as many "
             "threads (the server's own capacity); `in flight` is the mean number of requests open (p10 of 100 ms "
             "bins), `latency` the time of one `Fetcher.fetch`."
             + (f" Baseline: {window['baseline']}." if window.get("baseline") else "")), "",
             ("| server | client | img/s | CPU-µs per image | in flight mean (p10) | latency p50 / p90 ms | "
              "checkpoints' share | load |"), "|---|---|---|---|---|---|---|---|"]
    for entry in window["servers"]:
        plain = entry["plain"]
        lines.append(f"| {entry['server']} | plain http.client | {plain['img_per_s']:.0f} | "
                     f"{plain['cpu_us_per_img']} | — | — | — | {plain['load'][0]} |")
        for run_ in entry["stage"]:
            lines.append(f"| {entry['server']} | fetch stage ({run_['label']}) | {run_['img_per_s']:.0f} "
                         f"({run_['stage_img_per_s']:.0f} over the stage) | {run_['cpu_us_per_img']} | "
                         f"{run_['occupancy_mean']} ({run_['occupancy_p10']}) | {run_['latency_ms_p50']} / "
                         f"{run_['latency_ms_p90']} | {100 * run_['checkpoint_share']:.1f} % | {run_['load'][0]} |")
    return lines


TITLE = "Fetch"


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
    window = window_lines(result["window"]) if "window" in result else []
    if "runs" not in result:
        return window
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
    return lines + ([""] + window if window else [])


if __name__ == "__main__":
    main()
