"""Decode memory bounds: the decoded-bytes figure read from headers (`check_decoded_bytes`), shared by every decode
path, checked against measured peak memory, and the inspect stage's worker pool kept within its memory budget.

Hostile images are written at test time: PNGs of zeros compress ~1000:1, so a few hundred KB declare hundreds of MB.
"""

from __future__ import annotations

import datetime as dt
import io
import multiprocessing
import re
import threading
import zlib
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, features

from visprep.config import InspectConfig
from visprep.dedup.visual import image_signature
from visprep.engines.local import plan_workers
from visprep.export.stage import preprocess_batch
from visprep.images.decode import (
    DECODE_OVERHEAD,
    DEFAULT_MAX_DECODED_BYTES,
    ImageDecodeError,
    _pillow_rgb_reduced,
    decode_rgb,
    decode_worker_bytes,
    pillow_to_rgb,
)
from visprep.images.facts import inspect_image, small_rgb
from visprep.images.preprocess import get_profile, preprocess_float, preprocess_uint8
from visprep.images.stage import inspect_batch, inspect_stage
from visprep.quality.shift import image_stats
from visprep.workspace import Workspace

MIB = 1 << 20
PROFILE = get_profile("imagenet-224")  # decodes with min_side 256, as inspect does

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def zeros_png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A valid PNG of all-zero samples, written chunk by chunk (no encoder holds the raw image)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    row = bytes(1 + (width * channels * bit_depth + 7) // 8)  # filter byte 0 + the samples
    packer = zlib.compressobj(6)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, colour_type, 0, 0, 0])
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if colour_type == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + palette + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def figure_of(decode, data: bytes) -> int:
    """The decoded-bytes figure a decode path computes for `data`: what it reports when the limit is 1 byte."""
    with pytest.raises(ImageDecodeError) as info:
        decode(data, 1)
    assert info.value.reason == "decoded_too_large"
    return int(re.search(r"needs ([\d,]+) bytes", str(info.value)).group(1).replace(",", ""))


def _inspect(data: bytes, limit: int) -> object:
    return inspect_image(data, max_decoded_bytes=limit)


def _preprocess(data: bytes, limit: int) -> object:
    return preprocess_uint8(data, PROFILE, max_decoded_bytes=limit)


# --- the figure ------------------------------------------------------------------------------------------


def test_over_limit_image_is_refused_with_its_figure():
    data = zeros_png(3000, 2000, bit_depth=16)  # 16-bit grey: 2 bytes a pixel, plus the 3-byte RGB result
    figure = 3000 * 2000 * 2 + 3000 * 2000 * 3
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data, max_decoded_bytes=figure - 1)
    message = str(info.value)
    assert info.value.reason == "decoded_too_large"
    assert f"needs {figure:,} bytes" in message and "PNG 16-bit grey" in message
    assert f"max_decoded_bytes={figure - 1:,}" in message
    assert decode_rgb(data, max_decoded_bytes=figure).shape == (2000, 3000, 3)


@pytest.mark.parametrize(("bit_depth", "colour_type", "bytes_per_pixel"), [
    (16, 0, 2),  # grey: 1 channel x 2 bytes
    (16, 2, 6),  # RGB: 3 x 2 (Pillow keeps 8 bits of it, the header's figure is the larger)
    (16, 6, 8),  # RGBA: 4 x 2
    (8, 4, 4),  # grey+alpha: 2 x 1, held by Pillow in 4 bytes a pixel
    (8, 2, 4),  # RGB: 3 x 1, held in 4
    (8, 3, 1),  # palette index
    (1, 0, 1),  # 1-bit: unpacked to a byte a pixel
])
def test_png_figure_comes_from_the_header(bit_depth, colour_type, bytes_per_pixel):
    width, height = 1000, 800
    factor = min(width, height) // 256  # inspect reduces by the largest factor keeping 256 px
    result = -(-width // factor) * -(-height // factor) * 3
    data = zeros_png(width, height, bit_depth=bit_depth, colour_type=colour_type)
    assert figure_of(_inspect, data) == width * height * bytes_per_pixel + result


def test_every_decode_path_shares_the_check(tmp_path):
    """A 208 MB (decoded) PNG is refused by the default limit on every path, from its header alone."""
    data = zeros_png(5200, 5000, bit_depth=16, colour_type=6)  # 16-bit RGBA: 8 bytes a pixel, 26 Mpx
    assert 5200 * 5000 * 8 > DEFAULT_MAX_DECODED_BYTES
    for decode in (decode_rgb, inspect_image, small_rgb, image_stats, image_signature,
                   lambda d: preprocess_uint8(d, PROFILE), lambda d: preprocess_float(d, PROFILE)):
        with pytest.raises(ImageDecodeError) as info:
            decode(data)
        assert info.value.reason == "decoded_too_large"
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    (row,) = inspect_batch([("img1", str(path), "png", 89_478_485, DEFAULT_MAX_DECODED_BYTES)])
    assert row["status"] == "decoded_too_large" and "img1" in row["reason"] and "needs 208,2" in row["reason"]
    (failure,) = preprocess_batch([(str(path), PROFILE, 90)])
    assert failure.reason == "decoded_too_large" and "max_decoded_bytes" in failure.detail


def test_queries_clean_rejects_it_too():
    from visprep.queries.clean import QueryCleaner
    from visprep.queries.superres import ClassicalUpscaler

    cleaner = QueryCleaner(detector=None, nsfw=None, upscaler=ClassicalUpscaler())
    cleaned = cleaner.clean(zeros_png(5200, 5000, bit_depth=16, colour_type=6))
    assert cleaned.status == "rejected" and cleaned.reason == "decode_decoded_too_large"


# --- banded conversion -----------------------------------------------------------------------------------


def test_banded_reduce_equals_whole_image_reduce():
    """Conversion in bands of rows gives what converting the whole image would, reduced or not."""
    rng = np.random.default_rng(7)
    height, width = 1400, 1700  # > 1 Mpx: several bands
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    images = {
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba[:, :, :2].copy()),
        "L": Image.fromarray(rgba[:, :, 0].copy()),
        "I;16": Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)),
        "P": Image.fromarray(rgba[:, :, 0].copy()).convert("P"),
    }
    assert {name: image.mode for name, image in images.items()} == {name: name for name in images}
    images["P"].info["transparency"] = 3
    for name, image in images.items():
        for factor in (1, 3, 4):
            whole = image
            if factor > 1:
                if name == "I;16":
                    whole = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
                elif name == "P":
                    whole = image.convert("RGBA")
                whole = whole.reduce(factor)
            expected = pillow_to_rgb(whole)
            got = _pillow_rgb_reduced(image, factor)
            assert got.shape == expected.shape and np.array_equal(got, expected), (name, factor)


# --- the figure against measured memory ------------------------------------------------------------------


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _measure(decode, data: bytes, conn) -> None:
    """In a fresh child: the peak resident memory a decode adds, with its limit out of the way."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark at the current RSS
    except OSError:
        pass
    base = _hwm()
    decode(data, 1 << 40)
    conn.send(_hwm() - base)
    conn.close()


def _peak_added(decode, data: bytes) -> int:
    # A new process, not a fork of this one: reused free heap pages of the parent would hide allocations.
    ctx = multiprocessing.get_context("forkserver")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_measure, args=(decode, data, there))
    child.start()
    there.close()
    try:
        return here.recv()
    finally:
        child.join(30)


def _encoded(array: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **params)
    return buffer.getvalue()


def _formats() -> dict[str, bytes]:
    rgb = np.zeros((3000, 4000, 3), np.uint8)
    rgb[::7, ::5] = 200  # something to code
    avif = {}
    if features.check("avif"):
        rgba = np.zeros((2000, 2000, 4), np.uint8)
        rgba[::7, ::5] = 200
        avif["avif-rgba"] = _encoded(rgba, "AVIF", quality=50, speed=10)
    return {
        **avif,
        "png-16bit-grey": zeros_png(6000, 4000, bit_depth=16),
        "png-palette": zeros_png(6000, 4000, colour_type=3),
        "png-grey-alpha": zeros_png(6000, 4000, colour_type=4),
        "png-1bit": zeros_png(6000, 4000, bit_depth=1),
        "jpeg-progressive-444": _encoded(rgb, "JPEG", quality=90, progressive=True, subsampling=0),
        "webp": _encoded(rgb[:2500, :2500], "WEBP", quality=50, method=0),
        "tiff-one-strip": _encoded(rgb, "TIFF", compression="tiff_deflate", strip_size=1 << 31),
    }


@linux_only
def test_figure_bounds_the_memory_a_decode_takes():
    """For each format, the figure read from the header bounds the memory the decode really adds (and is not
    padded): peak - base <= DECODE_OVERHEAD x figure + the fixed per-decode cost WORKER_BASE_BYTES covers."""
    fixed = 24 * MIB
    seen = {}
    for name, data in _formats().items():
        paths = {"inspect": _inspect, "preprocess": _preprocess} if name.startswith("png-16") else \
            {"inspect": _inspect}
        for path, decode in paths.items():
            figure = figure_of(decode, data)
            added = _peak_added(decode, data)
            seen[name, path] = (figure // MIB, added // MIB)
            assert added <= DECODE_OVERHEAD * figure + fixed, (name, path, figure, added)
            assert added >= 0.75 * figure, (name, path, figure, added)
    assert len(seen) >= 8


# --- the inspect stage within its memory budget ----------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _pool_processes(root: int) -> list[int]:
    """Live descendants of `root` that multiprocessing started (forkserver, its workers, resource tracker)."""
    found, frontier = [], [root]
    while frontier:
        for child in _children(frontier.pop()):
            frontier.append(child)
            try:
                if b"from multiprocessing." in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                continue
    return found


class TreePeak:
    """Samples VmHWM of every pool process under this one, keeping each process's largest value."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in _pool_processes(self.root):
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            if m := re.search(r"VmHWM:\s+(\d+) kB", text):
                self.peaks[pid] = max(self.peaks.get(pid, 0), int(m.group(1)) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _workspace(root: Path, images: list[bytes], inspect: dict) -> Workspace:
    ws = Workspace(root)
    ws.set_config(ws.config.model_copy(update={"inspect": ws.config.inspect.model_copy(update=inspect)}))
    ids = [ws.store.put(data, "png") for data in images]
    products = [f"P{k}" for k in range(len(images))]
    ws.write_table("products", pa.Table.from_pylist(
        [{"product_id": p, "title": p, "category": "c", "top_category": "c"} for p in products]))
    ws.write_table("product_images", pa.Table.from_pylist(
        [{"product_id": p, "position": 0, "url": f"file:///{p}.png", "source": "catalog"} for p in products]))
    now = dt.datetime.now(dt.UTC)
    ws.write_table("urls", pa.Table.from_pylist(
        [{"url": f"file:///{p}.png", "status": "ok", "image_id": i, "format": "png", "fetched_at": now}
         for p, i in zip(products, ids)]))
    return ws


@linux_only
def test_inspect_workers_stay_within_the_memory_budget(tmp_path):
    """Crafted 16-bit and palette PNGs (~100 KB each, 25-50 MB decoded) through the inspect stage with 3 workers
    asked for: the budget allows 2, their summed peak (with forkserver and resource tracker) stays under it, and the
    image over max_decoded_bytes is quarantined with its figure."""
    limit = 64 * MIB
    budget_mb = 700
    assert 2 * decode_worker_bytes(limit) <= budget_mb * MIB < 3 * decode_worker_bytes(limit)
    accepted = [zeros_png(5000, 5000, bit_depth=16) for _ in range(3)] + [zeros_png(5000, 5000, colour_type=3)]
    accepted = [data + bytes([k]) for k, data in enumerate(accepted)]  # distinct files (bytes after IEND)
    too_large = zeros_png(4000, 4000, bit_depth=16, colour_type=6)  # 128 MB
    ws = _workspace(tmp_path, [*accepted, too_large], {"workers": 3, "batch_size": 1, "max_decoded_bytes": limit,
                                                       "memory_budget_mb": budget_mb})
    with TreePeak(multiprocessing.current_process().pid or 0) as tree:
        result = inspect_stage(ws)
    assert result.ok == 4 and result.by_reason == {"decoded_too_large": 1}
    run = ws.last_run("inspect")
    assert run["metrics"]["workers"] == {"requested": 3, "used": 2, "per_worker_mb": decode_worker_bytes(limit) // MIB,
                                         "budget_mb": budget_mb}
    assert any("2 of 3 workers" in note for note in run["notes"])
    summed = sum(tree.peaks.values())
    assert len(tree.peaks) >= 3  # forkserver and two workers were seen
    assert summed > 2 * 50 * 10**6  # the workers really decoded (each 16-bit image holds 50 MB)
    assert summed <= budget_mb * MIB, {pid: peak // MIB for pid, peak in tree.peaks.items()}
    quarantined = ws.read_table("quarantine").to_pylist()
    (bad,) = [q for q in quarantined if q["stage"] == "inspect"]
    assert bad["reason"] == "decoded_too_large" and "needs 128,2" in bad["detail"]


def test_config_default_is_the_library_default():
    assert InspectConfig().max_decoded_bytes == DEFAULT_MAX_DECODED_BYTES
    assert plan_workers(2, per_worker_bytes=decode_worker_bytes(DEFAULT_MAX_DECODED_BYTES),
                        budget_bytes=InspectConfig().memory_budget_mb * MIB).used == 2


def test_queries_config_bound_reaches_the_cleaner():
    """`[queries] max_decoded_bytes` is the cleaner's bound (at the default 192 MiB this photo passes)."""
    from visprep.config import QueriesConfig
    from visprep.queries.clean import QueryCleaner

    cleaner = QueryCleaner.from_config(QueriesConfig(detector="none", nsfw="none", max_decoded_bytes=1 << 20))
    assert cleaner.describe()["max_decoded_bytes"] == 1 << 20
    result = cleaner.clean(zeros_png(1024, 1024, colour_type=2))  # 3 MiB of RGB: over a 1 MiB bound
    assert not result.accepted and result.reason == "decode_decoded_too_large", result
