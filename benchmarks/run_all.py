"""Run every benchmark, collect their JSON results and write docs/benchmarks.md.

    python benchmarks/run_all.py [--quick]        # `make bench`; full run ~5 min on 2 cores, --quick ~2 min

Each bench script runs in its own process (PYTHONPATH=src) and writes benchmarks/.work/<name>.json; this
script only formats them. Every ratio is against a baseline measured in the same run. Misses are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, WORK, load_average, machine  # noqa: E402

BENCHES = ("bench_preprocess", "bench_inspect", "bench_fetch")
DOC = ROOT / "docs" / "benchmarks.md"


def run(name: str, quick: bool) -> tuple[dict | None, float, str]:
    result_file = WORK / f"{name}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py")] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    sys.stdout.write(completed.stdout)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:])
        return None, elapsed, f"exit code {completed.returncode}"
    return json.loads(result_file.read_text()), elapsed, ""


def fmt_met(met: bool | None) -> str:
    return "—" if met is None else ("**met**" if met else "**missed**")


def preprocess_section(result: dict) -> list[str]:
    lines = [f"`{result['command']}` — profile `{result['profile']}`, median of {result['repeats']} "
             f"interleaved runs × {result['seconds_per_run']} s per method; load {result['load_start']} → "
             f"{result['load_end']}.", "",
             "Images/s. *visprep* = `preprocess_float` (DCT-scaled decode + resize + crop + normalize); *Pillow* = "
             "full decode + `resize(BILINEAR)` + crop + numpy normalize; *floor* = bare `simplejpeg.decode_jpeg` at "
             "the DCT scale visprep uses. Targets apply to baseline JPEGs: ≥ 2.6× / ≥ 3.8× Pillow at 800 / 1600 px "
             "and ≥ 0.75× floor, on one core and on all cores.", "",
             "| set | image | kB | cores | visprep | Pillow | floor | vs Pillow | vs floor | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        rates = row["rates"]
        kind = "progressive" if row["progressive"] else "baseline"
        target = (f"≥ {row['target_vs_pillow']}× / ≥ {row['target_vs_floor']}×: {fmt_met(row['met'])}"
                  if "met" in row else "(none)")
        lines.append(f"| {row['set']} | {row['width']} px {kind} | {row['mean_kb']:.0f} | {row['cores']} | "
                     f"{rates['visprep']:.0f} | {rates['pillow']:.0f} | {rates['floor']:.0f} | "
                     f"{row['vs_pillow']:.2f}× | {row['vs_floor']:.2f}× | {target} |")
    judged = [r for r in result["rows"] if "met" in r]
    met = sum(r["met"] for r in judged)
    lines += ["", f"Targets met in {met} of {len(judged)} baseline rows."]
    lines += ["", "One-core breakdown, µs (median):", "", "| step | " + " | ".join(result["breakdown_us"]) + " |",
              "|---|" + "---|" * len(result["breakdown_us"])]
    steps = next(iter(result["breakdown_us"].values())).keys()
    for index, step in enumerate(steps):
        values = [list(b.values())[index] for b in result["breakdown_us"].values()]
        lines.append(f"| {step.strip()} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
    lines += ["", "Decode options: PSNR (dB) of the 256-px resized image against the path used / against an area "
              "resize of the full-size decode (∞ = bit-identical):", "",
              "| option | " + " | ".join(result["decode_options_psnr"]) + " |",
              "|---|" + "---|" * len(result["decode_options_psnr"])]
    options = next(iter(result["decode_options_psnr"].values())).keys()
    for option in options:
        cells = []
        for per_image in result["decode_options_psnr"].values():
            v = per_image[option]
            used = "∞" if v["vs_used_db"] == float("inf") else f"{v['vs_used_db']:.1f}"
            cells.append(f"{used} / {v['vs_full_area_db']:.1f}")
        lines.append(f"| {option} | " + " | ".join(cells) + " |")
    return lines


def inspect_section(result: dict) -> list[str]:
    lines = [f"`{result['command']}` — one core, median of {result['repeats']}; load {result['load_start']} → "
             f"{result['load_end']}. pHash and blur run on the gray image decoded once at the DCT scale for a "
             f"256-px shorter side (no second decode). Target: each < {result['target_ms']} ms.", "",
             "| set | image | inspect ms | decode ms | resize ms | pHash ms | blur ms | pHash+blur share | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        ms = row["ms"]
        kind = "progressive" if row["progressive"] else "baseline"
        lines.append(f"| {row['set']} | {row['width']} px {kind} | {ms['inspect']:.2f} | {ms['decode']:.2f} | "
                     f"{ms['resize']:.3f} | {ms['phash']:.3f} | {ms['blur']:.3f} | "
                     f"{row['phash_blur_share_pct']:.1f} % | {fmt_met(row['met'])} |")
    met = sum(r["met"] for r in result["rows"])
    return lines + ["", f"Target met in {met} of {len(result['rows'])} rows."]


def fetch_section(result: dict) -> list[str]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = parser.parse_args()
    info, load_start, started = machine(), load_average(), time.strftime("%Y-%m-%d %H:%M")
    results, notes = {}, []
    for name in BENCHES:
        print(f"\n===== {name} =====", flush=True)
        result, elapsed, error = run(name, args.quick)
        results[name] = result
        notes.append(f"{name}: {elapsed:.0f} s" + (f" (FAILED: {error})" if error else ""))
    load_end = load_average()
    sections = {"bench_preprocess": ("Preprocess", preprocess_section),
                "bench_inspect": ("Inspect", inspect_section), "bench_fetch": ("Fetch", fetch_section)}
    lines = ["# Benchmarks", "",
             f"Written by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` (`make bench`) on "
             f"{started}. Do not edit by hand; rerun.", "",
             f"Machine: nproc = {info['nproc']}, CPU \"{info['cpu']}\", {info['memory_gib']} GiB RAM, Python "
             f"{info['python']}. Load average (1, 5, 15 min) at start {load_start}, at end {load_end}. "
             "This machine is shared: absolute numbers move with other jobs; the baselines run interleaved with "
             "visprep in the same run, so ratios are steadier than rates.", "",
             "Durations: " + "; ".join(notes) + "."]
    for name, (title, section) in sections.items():
        lines += ["", f"## {title}", ""]
        lines += section(results[name]) if results[name] else ["Benchmark failed; no results."]
    DOC.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
