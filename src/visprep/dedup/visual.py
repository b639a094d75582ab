"""Crop/border-tolerant image signature and foreground colour, computed from the stored image on candidate pairs.

A uniform border (a reseller's frame, or the studio backdrop itself) moves a 64-bit pHash by 10-36 bits, and so does
a crop of a few percent. Trimming the uniform margin before hashing puts the product at the same place in both
images: the pHash of the trimmed region ("trimmed pHash") of a bordered or cropped copy is within a few bits of the
original's (measured in docs/dedup.md), while a different photo of the same kind stays as far as before.

Two more codes in the same pass catch what trimming does not: the pHash of the trimmed region's central 70 % (a crop
that cuts into the product moves the outline, not the middle) and of the whole image's central 50 % (a text overlay
near an edge). The signal is the closest of the three; each matches a different look-alike photo within 6 bits
less than 1 % of the time on the benchmark.

The same pass gives the median CIELAB colour of the foreground (pixels that differ from the backdrop), whose chroma
(a*, b*) distance tells a red and a navy colour variant apart without being moved much by brightness changes; its
lightness is kept relative to the backdrop's (an added brightness shifts both), and weighs in only when configured,
since a brightness edit moves it as much as black vs grey does (measured in docs/dedup.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from visprep.images.phash import phash64

WORK_SIDE = 256
"""Images are area-reduced to this longer side first: trimming and colour need no more, and it bounds the cost."""
_MIN_SIDE = 8  # a trimmed box narrower than this is noise, not the product
_ROW_SHARE = 0.02  # a row/column is "content" when this share of its pixels differs from the backdrop


@dataclass(frozen=True)
class Signatures:
    """Per image row: its `CODES` pHashes, foreground colour (L* minus the backdrop's L*, a*, b*; OpenCV 8-bit Lab scale)
    and whether it decoded."""

    codes: np.ndarray  # (M, len(CODES)) uint64
    color: np.ndarray  # (M, 3) float32
    ok: np.ndarray  # (M,) bool


def trim_box(bgr: np.ndarray, *, tolerance: int = 16, rounds: int = 3) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(top, bottom, left, right) of `bgr` without its uniform margins, and the backdrop colour (BGR).

    The backdrop is the per-channel median of the box's outer pixels; rows and columns where fewer than 2 % of the
    pixels differ from it by more than `tolerance` (any channel) are margin. Repeated up to `rounds` times, so a
    frame around a studio backdrop is peeled off first, then the backdrop.
    """
    if not isinstance(bgr, np.ndarray) or bgr.ndim != 3 or bgr.shape[2] != 3 or min(bgr.shape[:2]) < 1:
        raise ValueError(f"trim_box needs an (H, W, 3) image, got {getattr(bgr, 'shape', type(bgr).__name__)}")
    h, w = bgr.shape[:2]
    box = (0, h, 0, w)
    ref = np.median(np.concatenate([bgr[0], bgr[-1], bgr[:, 0], bgr[:, -1]]), axis=0)
    for _ in range(rounds):
        t, b, l, r = box
        sub = bgr[t:b, l:r]
        edge = np.concatenate([sub[0], sub[-1], sub[:, 0], sub[:, -1]])
        cur = np.median(edge, axis=0)
        diff = np.abs(sub.astype(np.int16) - cur.astype(np.int16)).max(axis=2) > tolerance
        rows = np.flatnonzero(diff.mean(axis=1) > _ROW_SHARE)
        cols = np.flatnonzero(diff.mean(axis=0) > _ROW_SHARE)
        if len(rows) < _MIN_SIDE or len(cols) < _MIN_SIDE:
            break
        ref = cur
        new = (t + int(rows[0]), t + int(rows[-1]) + 1, l + int(cols[0]), l + int(cols[-1]) + 1)
        if new == box:
            break
        box = new
    return box, ref


CODES = ("trimmed", "trimmed_center70", "center50")
"""The crop/border-tolerant pHashes of `image_signature`, in order."""


def _center(gray: np.ndarray, keep: float) -> np.ndarray:
    h, w = gray.shape
    dh, dw = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    return np.ascontiguousarray(gray[dh : h - dh, dw : w - dw])


def image_signature(data: bytes, *, tolerance: int = 16) -> tuple[list[int], np.ndarray]:
    """(the `CODES` pHashes, foreground median Lab colour with L* relative to the backdrop) of encoded image bytes;
    ValueError when they do not decode."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ValueError("image bytes do not decode")
    f = WORK_SIDE / max(bgr.shape[:2])
    if f < 1:
        bgr = cv2.resize(bgr, (max(1, round(bgr.shape[1] * f)), max(1, round(bgr.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    (t, b, l, r), ref = trim_box(bgr, tolerance=tolerance)
    sub = np.ascontiguousarray(bgr[t:b, l:r])
    gray_sub = cv2.cvtColor(sub, cv2.COLOR_BGR2GRAY)
    codes = [phash64(gray_sub), phash64(_center(gray_sub, 0.7)),
             phash64(_center(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 0.5))]
    fg = np.abs(sub.astype(np.int16) - ref.astype(np.int16)).max(axis=2) > 1.5 * tolerance
    lab = cv2.cvtColor(sub, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    backdrop = cv2.cvtColor(ref.astype(np.uint8).reshape(1, 1, 3), cv2.COLOR_BGR2LAB).reshape(3).astype(np.float32)
    # A product that fills the frame (no backdrop) has almost no "foreground": take the whole region. The median
    # ignores a text overlay or a logo.
    color = np.median(lab[fg.ravel()] if fg.mean() >= 0.05 else lab, axis=0)
    color[0] -= backdrop[0]
    return codes, color.astype(np.float32)


def image_signatures(load: Callable[[int], bytes], rows: Sequence[int], n_rows: int, *, workers: int = 2,
                     tolerance: int = 16) -> Signatures:
    """Signatures of image rows `rows` (of `n_rows`), loading each row's bytes with `load(row)`; other rows and rows
    that fail to load or decode get ok = False. Threads: OpenCV decode/resize release the GIL."""
    codes = np.zeros((n_rows, len(CODES)), np.uint64)
    color = np.full((n_rows, 3), np.nan, np.float32)
    ok = np.zeros(n_rows, bool)

    def one(row: int) -> tuple[int, list[int], np.ndarray] | None:
        try:
            code, col = image_signature(load(row), tolerance=tolerance)
        except (OSError, ValueError, cv2.error):
            return None
        return row, code, col

    rows = [int(r) for r in rows]
    if workers > 1 and len(rows) > 64:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, rows, chunksize=32))
    else:
        results = [one(r) for r in rows]
    for res in results:
        if res is not None:
            row, code, col = res
            codes[row] = np.asarray(code, np.uint64)
            color[row] = col
            ok[row] = True
    return Signatures(codes=codes, color=color, ok=ok)


def color_distance(a: np.ndarray, b: np.ndarray, *, lightness_weight: float = 0.0) -> np.ndarray:
    """Distance of (N, 3) colours from `image_signature`: Euclidean over (w * L, a*, b*); NaN where either is
    unknown."""
    d = (a - b).astype(np.float32)
    return np.sqrt(d[:, 1] ** 2 + d[:, 2] ** 2 + (lightness_weight * d[:, 0]) ** 2).astype(np.float32)


def normalize_color(value: str | None) -> str | None:
    """A declared colour (or brand) compared across products: lower-cased words; '' and None are 'not declared'."""
    if value is None:
        return None
    words = " ".join(value.casefold().replace("-", " ").replace("/", " ").split())
    return words or None
