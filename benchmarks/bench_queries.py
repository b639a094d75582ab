"""Query-photo cleaning latency per step (ms, p50/p95), serving-time path: one photo at a time, one thread.

    PYTHONPATH=src python benchmarks/bench_queries.py [--quick]

Photos: scikit-image's bundled real photos (astronaut, coffee, chelsea, rocket) as JPEG at their own size
(300-640 px) and upscaled to 1600 px and 3000 px on the longer side (phone-camera sizes), plus a 48 px
thumbnail (exercises the upscaler). Each photo is cleaned `repeats` times after one warm-up; the first call of
each plug-in (model load, FFT plans) is excluded. The baseline in the same run is a plain Pillow decode of the
same bytes, so the ratio column says what cleaning costs on top of just opening the photo.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import cv2
import numpy as np
from bench_common import cpu_model, load_average  # type: ignore[import-not-found]
from PIL import Image


def _jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photos() -> dict[str, bytes]:
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = getattr(data, name)()[:, :, :3]
        h, w = rgb.shape[:2]
        out[f"{name}@{max(h, w)}"] = _jpeg(rgb)
        for side in (1600, 3000):
            f = side / max(h, w)
            out[f"{name}@{side}"] = _jpeg(cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC))
    out["chelsea@48"] = _jpeg(cv2.resize(data.chelsea(), (48, 32), interpolation=cv2.INTER_AREA))
    return out


def main() -> None:
    from visprep.config import QueriesConfig
    from visprep.queries import QueryCleaner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20
    cleaner = QueryCleaner.from_config(QueriesConfig(blur_threshold=0.0))  # keep every photo through all steps
    imgs = photos()
    load_start = load_average()
    for data in imgs.values():  # warm-up: model sessions, FFT plans, thread pools
        cleaner.clean(data)
    steps: dict[str, list[float]] = {}
    totals, baseline = [], []
    by_size: dict[str, list[float]] = {}
    for _ in range(repeats):
        for label, data in imgs.items():
            t0 = time.perf_counter()
            Image.open(io.BytesIO(data)).convert("RGB").load()
            baseline.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            out = cleaner.clean(data)
            total = (time.perf_counter() - t0) * 1000
            totals.append(total)
            by_size.setdefault(label.split("@")[1], []).append(total)
            for s in out.steps:
                steps.setdefault(s["step"], []).append(s["ms"])

    def pct(v: list[float]) -> tuple[float, float]:
        return float(np.percentile(v, 50)), float(np.percentile(v, 95))

    print(f"# bench_queries  {time.strftime('%Y-%m-%d %H:%M')}  cpu={cpu_model()}  cores={os.cpu_count()}  "
          f"load={load_start}  repeats={repeats}  photos={len(imgs)}")
    print(f"{'step':<14}{'p50 ms':>9}{'p95 ms':>9}")
    rows = {}
    for name, v in [*steps.items(), ("total", totals), ("pillow decode (baseline)", baseline)]:
        p50, p95 = pct(v)
        rows[name] = {"p50_ms": round(p50, 3), "p95_ms": round(p95, 3)}
        print(f"{name:<14}{p50:>9.2f}{p95:>9.2f}")
    print("total by longer side:")
    for side, v in sorted(by_size.items(), key=lambda kv: int(kv[0])):
        p50, p95 = pct(v)
        print(f"  {side:>5} px   p50 {p50:8.2f}  p95 {p95:8.2f}")
    ratio = pct(totals)[0] / pct(baseline)[0]
    print(f"cleaning / plain Pillow decode (p50): {ratio:.1f}x")
    print(f"# load average at end: {load_average()}")
    out = os.path.join(os.path.dirname(__file__), ".work", "bench_queries.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"steps": rows, "ratio_vs_pillow_decode": round(ratio, 2), "quick": args.quick,
                   "cleaner": cleaner.describe()}, fh, indent=2)


if __name__ == "__main__":
    main()
