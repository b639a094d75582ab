"""Milliseconds per image for inspect_image, and the share spent in pHash and blur.

    PYTHONPATH=src python benchmarks/bench_inspect.py [--quick]

Uses the same JPEGs as bench_preprocess (800 / 1600 px wide, baseline and progressive, from an opencv-doc
photo or a synthetic texture). One core, best of a few repeats (the machine may be shared).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from bench_preprocess import WIDTHS, cpu_model, make_jpegs, source_photo

from visprep.images.blur import BLUR_SIDE, blur_score
from visprep.images.decode import decode_image
from visprep.images.inspect import inspect_image
from visprep.images.phash import phash64
from visprep.images.resize import resize_shorter_side


def best_seconds(function, repeats: int, number: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            function()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, number = (3, 5) if args.quick else (5, 20)
    cv2.setNumThreads(1)
    photo, source = source_photo()
    print(f"# bench_inspect  {time.strftime('%Y-%m-%d')}  cpu={cpu_model()}  source: {source}  (ms, one core)")
    print(f"{'image':<22}{'inspect':>9}{'decode':>9}{'resize':>9}{'pHash':>9}{'blur':>9}{'pHash+blur %':>14}")
    for width in WIDTHS:
        for progressive in (False, True):
            data = make_jpegs(photo, width, progressive, count=1)[0]
            gray_small = decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=True).pixels
            gray = np.ascontiguousarray(resize_shorter_side(gray_small, BLUR_SIDE))
            times = {
                "inspect": best_seconds(lambda: inspect_image(data), repeats, number),
                "decode": best_seconds(lambda: decode_image(data, min_side=BLUR_SIDE, max_pixels=10**9, gray=True),
                                       repeats, number),
                "resize": best_seconds(lambda: resize_shorter_side(gray_small, BLUR_SIDE), repeats, number * 10),
                "phash": best_seconds(lambda: phash64(gray), repeats, number * 10),
                "blur": best_seconds(lambda: blur_score(gray), repeats, number * 10),
            }
            share = 100 * (times["phash"] + times["blur"]) / times["inspect"]
            label = f"{width}px {'progressive' if progressive else 'baseline'}"
            print(f"{label:<22}" + "".join(f"{times[k] * 1e3:>9.3f}" for k in times) + f"{share:>13.1f}%")
    print(f"(gray decoded at the smallest DCT scale with shorter side >= {BLUR_SIDE}, resized to {BLUR_SIDE})")


if __name__ == "__main__":
    main()
