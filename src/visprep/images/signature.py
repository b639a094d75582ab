"""Crop/border-tolerant image signature: three pHashes of trimmed/centred regions and the foreground colour.

A uniform border (a reseller's frame, or the studio backdrop itself) moves a 64-bit pHash by 10-36 bits, and so does
a crop of a few percent. Trimming the uniform margin before hashing puts the product at the same place in both
images: the pHash of the trimmed region ("trimmed pHash") of a bordered or cropped copy is within a few bits of the
original's (measured in docs/dedup.md), while a different photo of the same kind stays as far as before.

Two more codes in the same pass catch what trimming does not: the pHash of the trimmed region's central 70 % (a crop
that cuts into the product moves the outline, not the middle) and of the whole image's central 50 % (a text overlay
near an edge).

The same pass gives the median CIELAB colour of the foreground (pixels that differ from the backdrop), whose chroma
(a*, b*) distance tells a red and a navy colour variant apart without being moved much by brightness changes; its
lightness is kept relative to the backdrop's (an added brightness shifts both).

`inspect` computes it once per image from the pixels it already decoded (columns of the `images` table); `dedup`
reads those columns, and `visprep.dedup.visual.image_signature` recomputes it from bytes the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

from visprep.images.phash import phash64
from visprep.images.resize import interpolation_for

WORK_SIDE = 256
"""Images are reduced to this longer side first (never enlarged): trimming and colour need no more, and it bounds
the cost."""
TRIM_TOLERANCE = 16
"""The border-trimming tolerance `inspect` stores signatures at (`dedup.trim_tolerance`'s default)."""
CODES = ("trimmed", "trimmed_center70", "center50")
"""The crop/border-tolerant pHashes of a signature, in order."""
CODE_COLUMNS = tuple(f"phash_{c}" for c in CODES)
"""Their columns in the `images` table."""
COLOR_COLUMNS = ("fg_l", "fg_a", "fg_b")
"""The foreground colour's columns in the `images` table: L* minus the backdrop's L*, a*, b* (OpenCV 8-bit Lab)."""
_MIN_SIDE = 8  # a trimmed box narrower than this is noise, not the product
_ROW_SHARE = 0.02  # a row/column is "content" when this share of its pixels differs from the backdrop
_SEAM = 2  # pixels along a peeled edge that the next round skips


def _within(img: np.ndarray, ref: np.ndarray, tolerance: int) -> np.ndarray:
    """uint8 mask, 255 where every channel of `img` is within `tolerance` of the integer part of `ref`."""
    base = ref.astype(np.int16)
    # inRange is one SIMD pass; the same test in numpy (int16 difference, abs, max over channels) costs ~10x more.
    return cv2.inRange(img, np.clip(base - tolerance, 0, 255).astype(np.float64),
                       np.clip(base + tolerance, 0, 255).astype(np.float64))


def trim_box(img: np.ndarray, *, tolerance: int = TRIM_TOLERANCE,
             rounds: int = 3) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(top, bottom, left, right) of a 3-channel uint8 image without its uniform margins, and the backdrop colour.

    The backdrop is the per-channel median of the box's outer pixels; rows and columns where fewer than 2 % of the
    pixels differ from it by more than `tolerance` (any channel) are margin. Repeated up to `rounds` times, so a
    frame around a studio backdrop is peeled off first, then the backdrop. Channel order does not matter.
    """
    if (not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 1
            or img.dtype != np.uint8):
        raise ValueError(f"trim_box needs an (H, W, 3) uint8 image, got {_describe(img)}")
    h, w = img.shape[:2]
    box = (0, h, 0, w)
    ref = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
    look = box  # where the next round looks: the box, stepped past the edge it peeled last
    for _ in range(rounds):
        t, b, l, r = look
        sub = img[t:b, l:r]
        edge = np.concatenate([sub[0], sub[-1], sub[:, 0], sub[:, -1]])
        cur = np.median(edge, axis=0)
        inside = _within(sub, cur, tolerance)
        # share of differing pixels per row / column: 1 - mean(inside) / 255
        rows = np.flatnonzero(cv2.reduce(inside, 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
                              < 255 * (1 - _ROW_SHARE))
        cols = np.flatnonzero(cv2.reduce(inside, 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
                              < 255 * (1 - _ROW_SHARE))
        if len(rows) < _MIN_SIDE or len(cols) < _MIN_SIDE:
            break
        new = (t + int(rows[0]), t + int(rows[-1]) + 1, l + int(cols[0]), l + int(cols[-1]) + 1)
        if (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (0, b - t, 0, r - l):
            break  # nothing more to peel
        box, ref = new, cur
        # The pixels along a peeled edge blend the two regions (resampling, a reduced-scale JPEG decode), so they
        # differ from both; the next round starts just inside them, or it would take that seam for content.
        nt, nb, nl, nr = new
        look = (nt + _SEAM, nb - _SEAM, nl + _SEAM, nr - _SEAM) if min(nb - nt, nr - nl) > 2 * _SEAM + _MIN_SIDE \
            else new
    return box, ref


def _center(gray: np.ndarray, keep: float) -> np.ndarray:
    h, w = gray.shape
    dh, dw = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    return np.ascontiguousarray(gray[dh : h - dh, dw : w - dw])


def signature_of_rgb(rgb: np.ndarray, *, tolerance: int = TRIM_TOLERANCE) -> tuple[list[int], np.ndarray]:
    """(the `CODES` pHashes, foreground median Lab colour with L* relative to the backdrop) of upright RGB pixels.

    The image is first reduced to a longer side of `WORK_SIDE` (bilinear below a 2x reduction, area beyond:
    `resize.interpolation_for`). `inspect_image` passes its one decode (`inspect.small_rgb`) and
    `dedup.visual.image_signature` goes through it too, so stored and recomputed signatures agree.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0 \
            or rgb.dtype != np.uint8:
        raise ValueError(f"signature_of_rgb needs an (H, W, 3) uint8 image, got {_describe(rgb)}")
    longer = max(rgb.shape[:2])
    if longer > WORK_SIDE:
        f = WORK_SIDE / longer
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f))),
                         interpolation=interpolation_for(longer, WORK_SIDE))
    rgb = np.ascontiguousarray(rgb)
    (t, b, l, r), ref = trim_box(rgb, tolerance=tolerance)
    sub = np.ascontiguousarray(rgb[t:b, l:r])
    gray_sub = cv2.cvtColor(sub, cv2.COLOR_RGB2GRAY)
    codes = [phash64(gray_sub), phash64(_center(gray_sub, 0.7)),
             phash64(_center(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 0.5))]
    # The colour median is taken over every other pixel in each direction: the Lab conversion is the signature's
    # largest cost, and a quarter of the pixels gives the same median to within a level or two.
    half = np.ascontiguousarray(sub[::2, ::2]) if min(sub.shape[:2]) >= 32 else sub
    # foreground: some channel differs from the backdrop by more than 1.5 x tolerance
    fg = cv2.bitwise_not(_within(half, ref, int(np.floor(1.5 * tolerance))))
    lab = cv2.cvtColor(half, cv2.COLOR_RGB2LAB)
    backdrop = cv2.cvtColor(ref.astype(np.uint8).reshape(1, 1, 3), cv2.COLOR_RGB2LAB).reshape(3).astype(np.float32)
    # A product that fills the frame (no backdrop) has almost no "foreground": take the whole region. The median
    # ignores a text overlay or a logo.
    use = fg if cv2.countNonZero(fg) >= 0.05 * fg.size else None
    color = median_u8(lab, use)
    color[0] -= backdrop[0]
    return codes, color


def median_u8(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel median of an (H, W, C) uint8 image's pixels where `mask` is non-zero (all when None), as
    np.median gives it (mean of the two middle values for an even count), float32; from 256-bin histograms, which
    cost a fraction of a sort."""
    out = np.empty(img.shape[2], np.float32)
    for c in range(img.shape[2]):
        cum = np.cumsum(cv2.calcHist([img], [c], mask, [256], [0, 256]).ravel())
        n = int(cum[-1])
        if n == 0:
            raise ValueError("median_u8: no pixel selected")
        lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
        hi = int(np.searchsorted(cum, n // 2, side="right"))
        out[c] = (lo + hi) / 2
    return out


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} dtype {value.dtype}"
    return type(value).__name__
