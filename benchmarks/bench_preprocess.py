"""Throughput of visprep's preprocess_float vs plain Pillow and vs the bare libjpeg-turbo decode ("floor").

    PYTHONPATH=src python benchmarks/bench_preprocess.py [--quick] [--profile imagenet-224]

For 800 px and 1600 px wide JPEGs (baseline and progressive, made from a real photo when opencv-doc is
installed, otherwise a synthetic textured image) it measures images/s on one core and on all cores (process
pool, one OpenCV thread per worker):
  visprep  preprocess_float: DCT-scaled decode + resize + center crop + normalize to float32 CHW
  pillow   Image.open().convert("RGB").resize() + crop + numpy normalize (what most loaders do)
  floor    simplejpeg.decode_jpeg at the DCT scale visprep decodes at (min_height = min_width = resize target)
and a per-step breakdown of visprep's time. Timings take the best of a few repeats: the machine may be shared.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from visprep.images.preprocess import get_profile, preprocess_float

PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/aloeL.jpg")
WIDTHS = (800, 1600)

_images: list[bytes] = []
_profile_name = "imagenet-224"


def source_photo() -> tuple[np.ndarray, str]:
    if PHOTO.exists():
        return np.asarray(Image.open(PHOTO).convert("RGB")), PHOTO.name
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (1600, 1200), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    fine = cv2.resize(rng.integers(-30, 31, (300, 400, 1), dtype=np.int16), (1600, 1200))
    return np.clip(image + fine[:, :, None], 0, 255).astype(np.uint8), "synthetic 1600x1200 texture"


def make_jpegs(photo: np.ndarray, width: int, progressive: bool, count: int = 4) -> list[bytes]:
    """`count` slightly different JPEGs (shifted crops) so the decoder does not see one file over and over."""
    height = round(photo.shape[0] * width / photo.shape[1])
    out = []
    for index in range(count):
        crop = photo[index * 4 :, index * 4 :]
        resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if width < crop.shape[1]
                             else cv2.INTER_CUBIC)
        buffer = io.BytesIO()
        Image.fromarray(resized).save(buffer, "JPEG", quality=90, progressive=progressive)
        out.append(buffer.getvalue())
    return out


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


def throughput_one_core(method: str, seconds: float, repeats: int) -> float:
    _timed_loop(method, 0.05)  # warm up
    return max(done / elapsed for done, elapsed in (_timed_loop(method, seconds) for _ in range(repeats)))


def throughput_all_cores(pool: ProcessPoolExecutor, workers: int, method: str, seconds: float,
                         repeats: int) -> float:
    best = 0.0
    list(pool.map(_timed_loop, [method] * workers, [0.05] * workers))  # warm up every worker
    for _ in range(repeats):
        start = time.perf_counter()
        results = list(pool.map(_timed_loop, [method] * workers, [seconds] * workers))
        wall = time.perf_counter() - start
        best = max(best, sum(done for done, _ in results) / wall)
    return best


def breakdown(data: bytes, repeats: int) -> dict[str, float]:
    """Microseconds per step of visprep's path, and of the alternatives it avoids."""
    from visprep.images.preprocess import normalize, preprocess_uint8

    profile = get_profile(_profile_name)
    target = profile.shorter_side
    decoded = simplejpeg.decode_jpeg(data, min_height=target, min_width=target)
    h, w = decoded.shape[:2]
    new_size = (int(target * w / h), target) if h <= w else (target, int(target * h / w))
    crop = np.ascontiguousarray(cv2.resize(decoded, new_size)[:profile.size, :profile.size])
    mean = np.asarray(profile.mean, np.float32)
    std = np.asarray(profile.std, np.float32)
    steps = {
        f"decode at DCT scale -> {w}x{h}": lambda: simplejpeg.decode_jpeg(data, min_height=target, min_width=target),
        "decode full size": lambda: simplejpeg.decode_jpeg(data),
        f"resize -> {new_size[0]}x{new_size[1]} INTER_LINEAR (used)":
            lambda: cv2.resize(decoded, new_size, interpolation=cv2.INTER_LINEAR),
        f"resize -> {new_size[0]}x{new_size[1]} INTER_AREA": lambda: cv2.resize(decoded, new_size,
                                                                                  interpolation=cv2.INTER_AREA),
        "normalize: cv2.split + addWeighted (used)": lambda: normalize(crop, profile),
        "normalize: numpy astype/sub/div/transpose": lambda: ((crop.astype(np.float32) / 255.0 - mean) / std)
        .transpose(2, 0, 1).copy(),
        "preprocess_uint8 total": lambda: preprocess_uint8(data, profile),
        "preprocess_float total": lambda: preprocess_float(data, profile),
    }
    out = {}
    for name, step in steps.items():
        step()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(10):
                step()
            best = min(best, (time.perf_counter() - start) / 10)
        out[name] = best * 1e6
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    global _images, _profile_name
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (~30 s), noisier numbers")
    parser.add_argument("--profile", default="imagenet-224")
    args = parser.parse_args()
    _profile_name = args.profile
    seconds, repeats = (0.3, 2) if args.quick else (1.0, 3)
    workers = os.cpu_count() or 1
    cv2.setNumThreads(1)
    photo, source = source_photo()
    profile = get_profile(args.profile)
    print(f"# bench_preprocess  {time.strftime('%Y-%m-%d')}  nproc={workers}  cpu={cpu_model()}")
    print(f"# source: {source}; profile {args.profile} (resize shorter -> {profile.shorter_side}, crop "
          f"{profile.size}); {'quick' if args.quick else 'full'} run, best of {repeats} x {seconds}s")
    print(f"{'image':<22}{'cores':>6}{'visprep':>10}{'pillow':>10}{'floor':>10}{'vs pillow':>11}{'vs floor':>10}")
    first_inputs = None
    for width in WIDTHS:
        for progressive in (False, True):
            _images = make_jpegs(photo, width, progressive)
            first_inputs = first_inputs or _images[0]
            label = f"{width}px {'progressive' if progressive else 'baseline'}"
            rates = {m: throughput_one_core(m, seconds, repeats) for m in METHODS}
            print(f"{label:<22}{1:>6}{rates['visprep']:>10.0f}{rates['pillow']:>10.0f}{rates['floor']:>10.0f}"
                  f"{rates['visprep'] / rates['pillow']:>10.2f}x{rates['visprep'] / rates['floor']:>9.2f}x")
            if workers > 1:
                with ProcessPoolExecutor(workers, initializer=_init_worker,
                                         initargs=(_images, _profile_name)) as pool:
                    rates = {m: throughput_all_cores(pool, workers, m, seconds, repeats) for m in METHODS}
                print(f"{'':<22}{workers:>6}{rates['visprep']:>10.0f}{rates['pillow']:>10.0f}"
                      f"{rates['floor']:>10.0f}{rates['visprep'] / rates['pillow']:>10.2f}x"
                      f"{rates['visprep'] / rates['floor']:>9.2f}x")
    print("(images/s; 'vs floor' = visprep / bare simplejpeg decode at the same DCT scale)")
    for width in WIDTHS:
        data = make_jpegs(photo, width, progressive=False, count=1)[0]
        print(f"\n# one-core breakdown, {width}px baseline (microseconds, best of {repeats * 2})")
        for name, micros in breakdown(data, repeats * 2).items():
            print(f"  {name:<52}{micros:>9.0f}")


if __name__ == "__main__":
    main()
