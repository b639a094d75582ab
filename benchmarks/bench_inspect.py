"""Milliseconds per image for inspect_image, the time spent in pHash, blur and the near-duplicate signature, and
the cost of the signature against the inspect that had none (baseline, measured in the same run).

    PYTHONPATH=src python benchmarks/bench_inspect.py [--quick]

Same JPEGs as bench_preprocess (both image sets, 800 / 1600 px wide, baseline and progressive). One core;
each number is the median of several runs, the steps interleaved. pHash and blur are timed on the small
gray image inspect_image decodes once (shorter side 256); the target is < 0.1 ms each. The baseline
("without signature") is the previous inspect: a gray decode at the same DCT scale, resize, pHash, blur.
Results: benchmarks/.work/bench_inspect.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (fmt_met, IMAGE_SETS, interleaved_medians, load_average, machine, make_jpegs,  # noqa: E402
                          time_per_call, write_result)

from visprep.images.blur import BLUR_SIDE, blur_score  # noqa: E402
from visprep.images.decode import decode_image  # noqa: E402
from visprep.images.facts import inspect_image  # noqa: E402
from visprep.images.phash import phash64  # noqa: E402
from visprep.images.resize import resize_shorter_side  # noqa: E402
from visprep.images.signature import signature_of_rgb  # noqa: E402


def inspect_without_signature(data: bytes) -> tuple[int, float]:
    """The inspect of before the signature (the baseline): gray decode at the reduced DCT scale, pHash, blur."""
    decoded = decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=True)
    gray = resize_shorter_side(decoded.pixels, BLUR_SIDE)
    return phash64(gray), blur_score(gray)

TARGET_MS = 0.1  # pHash and blur, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, number = (5, 5) if args.quick else (9, 10)
    cv2.setNumThreads(1)
    load_start = load_average()
    info = machine()
    print(f"# bench_inspect  {time.strftime('%Y-%m-%d %H:%M')}  cpu={info['cpu']}  load={load_start}  "
          f"(ms, one core, median of {repeats})")
    print(f"{'set':<10}{'image':<18}{'inspect':>9}{'no sig':>9}{'decode':>9}{'rgb dec':>9}{'resize':>9}"
          f"{'pHash':>9}{'blur':>9}{'sig':>9}{'pHash+blur %':>14}{'x no sig':>10}")
    rows = []
    for set_name in IMAGE_SETS:
        for width in (800, 1600):
            for progressive in (False, True):
                data = make_jpegs(set_name, width, progressive, count=1)[0]
                gray_small = decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=True).pixels
                gray = np.ascontiguousarray(resize_shorter_side(gray_small, BLUR_SIDE))
                rgb_small = decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=False).pixels
                steps = {
                    "inspect": (lambda: inspect_image(data), number),
                    "inspect_without_signature": (lambda: inspect_without_signature(data), number),
                    "decode": (lambda: decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=True),
                               number),
                    "decode_rgb": (lambda: decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=False),
                                   number),
                    "resize": (lambda: resize_shorter_side(gray_small, BLUR_SIDE), number * 10),
                    "phash": (lambda: phash64(gray), number * 10),
                    "blur": (lambda: blur_score(gray), number * 10),
                    "signature": (lambda: signature_of_rgb(rgb_small), number * 2),
                }
                for function, _ in steps.values():
                    function()
                stats = interleaved_medians({k: (lambda f=f, n=n: time_per_call(f, n)) for k, (f, n) in
                                             steps.items()}, repeats)
                ms = {k: s["median"] * 1e3 for k, s in stats.items()}
                share = 100 * (ms["phash"] + ms["blur"]) / ms["inspect"]
                ratio = ms["inspect"] / ms["inspect_without_signature"]
                label = f"{width}px {'progressive' if progressive else 'baseline'}"
                row = {"set": set_name, "width": width, "progressive": progressive, "ms": ms,
                       "gray_shape": list(gray.shape), "phash_blur_share_pct": share, "signature_cost_ratio": ratio,
                       "met": ms["phash"] < TARGET_MS and ms["blur"] < TARGET_MS}
                rows.append(row)
                print(f"{set_name:<10}{label:<18}" + "".join(f"{ms[k]:>9.3f}" for k in steps)
                      + f"{share:>13.1f}%{ratio:>9.2f}x" + ("   met" if row["met"] else "   MISSED"))
    print(f"(gray decoded once at the smallest DCT scale with shorter side >= {BLUR_SIDE}, resized to {BLUR_SIDE}; "
          f"target: pHash and blur < {TARGET_MS} ms each)")
    load_end = load_average()
    print(f"# load average at end: {load_end}")
    write_result("bench_inspect", {
        "benchmark": "inspect", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": info,
        "load_start": load_start, "load_end": load_end, "quick": args.quick, "repeats": repeats,
        "target_ms": TARGET_MS, "rows": rows,
        "command": "PYTHONPATH=src python benchmarks/bench_inspect.py" + (" --quick" if args.quick else ""),
    })


TITLE = "Inspect"


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
    lines = [(f"`{result['command']}` — one core, median of {result['repeats']}; load {result['load_start']} → "
              f"{result['load_end']}. pHash and blur run on the gray image decoded once at the DCT scale for a "
              f"256-px shorter side (no second decode). Target: each < {result['target_ms']} ms. Since the "
              "near-duplicate signature (`visprep.images.signature`), inspect decodes in colour once and derives the "
              "gray; \"without signature\" is the previous gray-only inspect, timed in the same run (baseline)."), "",
             ("| set | image | inspect ms | without signature ms | ratio | gray decode ms | colour decode ms | "
              "resize ms | pHash ms | blur ms | signature ms | pHash+blur share | target |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        ms = row["ms"]
        kind = "progressive" if row["progressive"] else "baseline"
        if "inspect_without_signature" in ms:
            extra = (f"{ms['inspect_without_signature']:.2f} | {row['signature_cost_ratio']:.2f}× | {ms['decode']:.2f} | "
                     f"{ms['decode_rgb']:.2f} | {ms['resize']:.3f} | {ms['phash']:.3f} | {ms['blur']:.3f} | "
                     f"{ms['signature']:.3f}")
        else:  # a result stored before the signature existed
            extra = f"— | — | {ms['decode']:.2f} | — | {ms['resize']:.3f} | {ms['phash']:.3f} | {ms['blur']:.3f} | —"
        lines.append(f"| {row['set']} | {row['width']} px {kind} | {ms['inspect']:.2f} | {extra} | "
                     f"{row['phash_blur_share_pct']:.1f} % | {fmt_met(row['met'])} |")
    met = sum(r["met"] for r in result["rows"])
    ratios = [r["signature_cost_ratio"] for r in result["rows"] if "signature_cost_ratio" in r]
    tail = [f"Target met in {met} of {len(result['rows'])} rows."]
    if ratios:
        tail.append(f"Inspect with the signature vs without: {min(ratios):.2f}–{max(ratios):.2f}× the time "
                    f"(median {sorted(ratios)[len(ratios) // 2]:.2f}×).")
    return lines + [""] + tail


if __name__ == "__main__":
    main()
