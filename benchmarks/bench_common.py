"""Shared by the benchmark scripts: machine facts, test images, interleaved median timing, JSON results."""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")

# Two kinds of picture, both reported: the author's very detailed plant photo (large files, entropy decoding
# dominates), and product-like photos (objects on plain backgrounds, smaller files).
IMAGE_SETS = {
    "textured": ("aloeL.jpg",),
    "product": ("apple.jpg", "orange.jpg", "fruits.jpg", "Blender_Suzanne1.jpg"),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def machine() -> dict:
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "memory_gib": memory_gib,
            "python": platform.python_version()}


def source_photos(set_name: str) -> list[tuple[str, np.ndarray]]:
    """The set's photos as RGB arrays; a seeded synthetic texture when opencv-doc is not installed."""
    # Imported here: the events benchmarks import this module in every measured phase, and need no image library.
    import cv2
    import numpy as np
    from PIL import Image

    photos = [(name, np.asarray(Image.open(PHOTO_DIR / name).convert("RGB")))
              for name in IMAGE_SETS[set_name] if (PHOTO_DIR / name).exists()]
    if photos:
        return photos
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (1600, 1200), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    fine = cv2.resize(rng.integers(-30, 31, (300, 400, 1), dtype=np.int16), (1600, 1200))
    return [("synthetic", np.clip(image + fine[:, :, None], 0, 255).astype(np.uint8))]


def make_jpegs(set_name: str, width: int, progressive: bool, count: int = 4) -> list[bytes]:
    """`count` JPEGs (quality 90) `width` px wide: the set's photos in turn, each a slightly shifted crop, so
    the decoder never sees one file over and over. Photos smaller than `width` are upscaled (bicubic)."""
    import cv2
    from PIL import Image

    photos = source_photos(set_name)
    out = []
    for index in range(count):
        _, photo = photos[index % len(photos)]
        crop = photo[index * 4 :, index * 4 :]
        height = round(crop.shape[0] * width / crop.shape[1])
        resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if width < crop.shape[1]
                             else cv2.INTER_CUBIC)
        buffer = io.BytesIO()
        Image.fromarray(resized).save(buffer, "JPEG", quality=90, progressive=progressive)
        out.append(buffer.getvalue())
    return out


def parse_count(text: str) -> int:
    """A size given as 1M, 500k or 2500000."""
    t = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(t[-1], 1)
    return int(float(t[:-1] if t[-1] in "KM" else t) * mult)


def count_label(n: int) -> str:
    """A size as 1M / 500k, for file names and result rows."""
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def interleaved_medians(functions: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Call each function `repeats` times, rotating the order every round so that load from other processes
    hits every candidate alike; each call returns one measurement. Returns median, min, max and all values."""
    names = list(functions)
    values: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            values[name].append(functions[name]())
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}
            for name, v in values.items()}


def time_per_call(function: Callable[[], object], number: int) -> float:
    """Seconds per call over `number` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        function()
    return (time.perf_counter() - start) / number


def write_result(name: str, result: dict) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def run_phase(cmd: list[str], name: str) -> dict:
    """Run one measurement phase in its own process (so its peak RSS is its own) with `src` on the path; return
    the JSON object its last stdout line holds."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    if proc.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_met(met: bool | None) -> str:
    """Format a target verdict for a table cell."""
    return "—" if met is None else ("**met**" if met else "**missed**")
