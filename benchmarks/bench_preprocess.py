"""Throughput of visprep's preprocess_float vs plain Pillow and vs the bare libjpeg-turbo decode ("floor").

    PYTHONPATH=src python benchmarks/bench_preprocess.py [--quick] [--profile imagenet-224]

Two image sets (see bench_common.IMAGE_SETS): "textured" (opencv-doc aloeL.jpg, a very detailed plant photo)
and "product" (apple, orange, fruits, Blender_Suzanne1: objects on plain backgrounds), each as 800 px and
1600 px wide JPEGs (q90), baseline and progressive. Images/s on one core and on all cores (process pool, one
OpenCV thread per worker):
  visprep  preprocess_float: DCT-scaled decode + resize + center crop + normalize to float32 CHW
  pillow   Image.open().convert("RGB").resize(BILINEAR) + crop + numpy normalize (what most loaders do)
  floor    simplejpeg.decode_jpeg at the DCT scale visprep decodes at (min_height = min_width = resize target)
Each number is the median of several timed runs; the three methods run interleaved (rotating order), so load
from other processes hits all of them. Also: a per-step breakdown, and decode options (fastdct, fastupsample,
a smaller DCT scale) with their PSNR against the path visprep uses. Results: benchmarks/.work/bench_preprocess.json.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (fmt_met, IMAGE_SETS, interleaved_medians, load_average, machine, make_jpegs,  # noqa: E402
                          time_per_call, write_result)

from visprep.images.preprocess import get_profile, normalize, preprocess_float, preprocess_uint8  # noqa: E402

WIDTHS = (800, 1600)
TARGETS = {800: 2.6, 1600: 3.8}  # x plain Pillow, baseline JPEGs, one core and all cores
FLOOR_TARGET = 0.75

_images: list[bytes] = []
_profile_name = "imagenet-224"


def run_visprep(data: bytes) -> None:
    preprocess_float(data, get_profile(_profile_name))


def run_pillow(data: bytes) -> None:
    profile = get_profile(_profile_name)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    target = profile.shorter_side
    if width <= height:
        new_w, new_h = target, int(target * height / width)
    else:
        new_w, new_h = int(target * width / height), target
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = (new_h - profile.size) // 2, (new_w - profile.size) // 2
    pixels = np.asarray(image.crop((left, top, left + profile.size, top + profile.size)))
    mean = np.asarray(profile.mean, np.float32)
    std = np.asarray(profile.std, np.float32)
    _ = ((pixels.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy()


def run_floor(data: bytes) -> None:
    target = get_profile(_profile_name).shorter_side
    simplejpeg.decode_jpeg(data, min_height=target, min_width=target)


METHODS = {"visprep": run_visprep, "pillow": run_pillow, "floor": run_floor}


def _init_worker(images: list[bytes], profile_name: str) -> None:
    global _images, _profile_name
    _images, _profile_name = images, profile_name
    cv2.setNumThreads(1)


def _set_images(images: list[bytes]) -> None:
    global _images
    _images = images


def _timed_loop(method: str, seconds: float) -> tuple[int, float]:
    """Run `method` over the worker's images for about `seconds`; return (images done, elapsed seconds)."""
    function = METHODS[method]
    done = 0
    start = time.perf_counter()
    while True:
        for data in _images:
            function(data)
        done += len(_images)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done, elapsed


def rate_one_core(method: str, seconds: float) -> float:
    done, elapsed = _timed_loop(method, seconds)
    return done / elapsed


def rate_all_cores(pool: ProcessPoolExecutor, workers: int, method: str, seconds: float) -> float:
    start = time.perf_counter()
    results = list(pool.map(_timed_loop, [method] * workers, [seconds] * workers))
    return sum(done for done, _ in results) / (time.perf_counter() - start)


def measure(images: list[bytes], workers: int, seconds: float, repeats: int) -> dict[int, dict]:
    """{cores: {method: stats}} for one image list; methods interleaved within each core count."""
    _set_images(images)
    for method in METHODS:
        _timed_loop(method, 0.05)  # warm up
    out = {1: interleaved_medians({m: (lambda m=m: rate_one_core(m, seconds)) for m in METHODS}, repeats)}
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(images, _profile_name)) as pool:
            for method in METHODS:
                list(pool.map(_timed_loop, [method] * workers, [0.05] * workers))
            out[workers] = interleaved_medians(
                {m: (lambda m=m: rate_all_cores(pool, workers, m, seconds)) for m in METHODS}, repeats)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def breakdown(data: bytes, repeats: int) -> dict[str, float]:
    """Median microseconds per step of visprep's path, and of the alternatives it avoids."""
    profile = get_profile(_profile_name)
    target = profile.shorter_side
    decoded = simplejpeg.decode_jpeg(data, min_height=target, min_width=target)
    h, w = decoded.shape[:2]
    new_size = (int(target * w / h), target) if h <= w else (target, int(target * h / w))
    crop = np.ascontiguousarray(cv2.resize(decoded, new_size)[:profile.size, :profile.size])
    mean = np.asarray(profile.mean, np.float32)
    std = np.asarray(profile.std, np.float32)
    steps = {
        "decode at DCT scale (used)": lambda: simplejpeg.decode_jpeg(data, min_height=target,
                                                                                  min_width=target),
        "  same, fastdct=True, fastupsample=True": lambda: simplejpeg.decode_jpeg(
            data, min_height=target, min_width=target, fastdct=True, fastupsample=True),
        "decode full size": lambda: simplejpeg.decode_jpeg(data),
        "  full size, fastdct=True, fastupsample=True": lambda: simplejpeg.decode_jpeg(data, fastdct=True,
                                                                                         fastupsample=True),
        "resize shorter side to target, INTER_LINEAR (used)":
            lambda: cv2.resize(decoded, new_size, interpolation=cv2.INTER_LINEAR),
        "resize shorter side to target, INTER_AREA": lambda: cv2.resize(decoded, new_size,
                                                                                  interpolation=cv2.INTER_AREA),
        "normalize: cv2.split + addWeighted (used)": lambda: normalize(crop, profile),
        "normalize: numpy astype/sub/div/transpose": lambda: ((crop.astype(np.float32) / 255.0 - mean) / std)
        .transpose(2, 0, 1).copy(),
        "preprocess_uint8 total": lambda: preprocess_uint8(data, profile),
        "preprocess_float total": lambda: preprocess_float(data, profile),
    }
    for step in steps.values():
        step()
    stats = interleaved_medians({name: (lambda s=step: time_per_call(s, 10)) for name, step in steps.items()},
                                repeats)
    return {name: s["median"] * 1e6 for name, s in stats.items()}


def decode_options(data: bytes) -> dict[str, float]:
    """PSNR (dB) of the final resized image for decode options, against the path visprep uses (accurate
    integer IDCT, fancy upsampling, DCT scale for shorter side >= target, bilinear) and against an area
    resize of the full-size decode (the best this geometry can give)."""
    target = get_profile(_profile_name).shorter_side
    full = simplejpeg.decode_jpeg(data)
    h, w = full.shape[:2]
    size = (int(target * w / h), target) if h <= w else (target, int(target * h / w))

    def path(min_side: int, interpolation: int = cv2.INTER_LINEAR, **options: bool) -> np.ndarray:
        pixels = simplejpeg.decode_jpeg(data, min_height=min_side, min_width=min_side, **options)
        return cv2.resize(pixels, size, interpolation=interpolation)

    used = path(target)
    best = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
    variants = {
        "used: DCT scale, INTER_LINEAR": used,
        "fastdct + fastupsample": path(target, fastdct=True, fastupsample=True),
        "DCT scale, INTER_AREA": path(target, cv2.INTER_AREA),
        "next smaller DCT scale, upscaled": path(target // 2),
    }
    return {name: {"vs_used_db": psnr(image, used), "vs_full_area_db": psnr(image, best)}
            for name, image in variants.items()}


def main() -> None:
    global _profile_name
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, noisier numbers")
    parser.add_argument("--profile", default="imagenet-224")
    args = parser.parse_args()
    _profile_name = args.profile
    seconds, repeats = (0.15, 3) if args.quick else (0.35, 5)
    workers = os.cpu_count() or 1
    cv2.setNumThreads(1)
    profile = get_profile(args.profile)
    load_start = load_average()
    info = machine()
    print(f"# bench_preprocess  {time.strftime('%Y-%m-%d %H:%M')}  nproc={workers}  cpu={info['cpu']}  "
          f"load={load_start}")
    print(f"# profile {args.profile} (resize shorter -> {profile.shorter_side}, crop {profile.size}); "
          f"median of {repeats} interleaved runs x {seconds}s per method")
    print(f"{'set':<10}{'image':<18}{'cores':>6}{'visprep':>9}{'pillow':>9}{'floor':>9}{'vs pillow':>11}"
          f"{'vs floor':>10}")
    rows = []
    for set_name in IMAGE_SETS:
        for width in WIDTHS:
            for progressive in (False, True):
                images = make_jpegs(set_name, width, progressive)
                label = f"{width}px {'progressive' if progressive else 'baseline'}"
                for cores, stats in measure(images, workers, seconds, repeats).items():
                    rates = {m: stats[m]["median"] for m in METHODS}
                    row = {"set": set_name, "width": width, "progressive": progressive, "cores": cores,
                           "mean_kb": round(sum(map(len, images)) / len(images) / 1e3, 1),
                           "rates": rates, "spread": {m: [stats[m]["min"], stats[m]["max"]] for m in METHODS},
                           "vs_pillow": rates["visprep"] / rates["pillow"],
                           "vs_floor": rates["visprep"] / rates["floor"]}
                    if not progressive:
                        row["target_vs_pillow"] = TARGETS[width]
                        row["target_vs_floor"] = FLOOR_TARGET
                        row["met"] = row["vs_pillow"] >= TARGETS[width] and row["vs_floor"] >= FLOOR_TARGET
                    rows.append(row)
                    print(f"{set_name if cores == 1 else '':<10}{label if cores == 1 else '':<18}{cores:>6}"
                          f"{rates['visprep']:>9.0f}{rates['pillow']:>9.0f}{rates['floor']:>9.0f}"
                          f"{row['vs_pillow']:>10.2f}x{row['vs_floor']:>9.2f}x"
                          + ("" if progressive else ("   met" if row["met"] else "   MISSED")))
    print("(images/s; 'vs floor' = visprep / bare simplejpeg decode at the same DCT scale; targets apply to "
          f"baseline JPEGs: >= {TARGETS[800]}x / {TARGETS[1600]}x Pillow at 800 / 1600 px, >= {FLOOR_TARGET}x floor)")
    breakdowns, options = {}, {}
    for set_name in IMAGE_SETS:
        for width in WIDTHS:
            data = make_jpegs(set_name, width, progressive=False, count=1)[0]
            key = f"{set_name} {width}px baseline"
            breakdowns[key] = breakdown(data, repeats)
            options[key] = decode_options(data)
            print(f"\n# one-core breakdown, {key} (microseconds, median of {repeats})")
            for name, micros in breakdowns[key].items():
                print(f"  {name:<52}{micros:>9.0f}")
            print("  decode options, PSNR dB of the resized image vs the used path / vs area resize of full decode:")
            for name, value in options[key].items():
                print(f"    {name:<40}{value['vs_used_db']:>8.1f}{value['vs_full_area_db']:>8.1f}")
    load_end = load_average()
    print(f"# load average at end: {load_end}")
    write_result("bench_preprocess", {
        "benchmark": "preprocess", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": info,
        "load_start": load_start, "load_end": load_end, "quick": args.quick, "profile": args.profile,
        "seconds_per_run": seconds, "repeats": repeats, "rows": rows, "breakdown_us": breakdowns,
        "decode_options_psnr": options,
        "command": "PYTHONPATH=src python benchmarks/bench_preprocess.py" + (" --quick" if args.quick else ""),
    })


TITLE = "Preprocess"


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
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


if __name__ == "__main__":
    main()
