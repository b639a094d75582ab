"""Perceptual hash (pHash) of a grayscale image, as a 64-bit unsigned Python int."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

PHASH_SIDE = 32
"""The image is area-resized to PHASH_SIDE x PHASH_SIDE before the DCT."""

# cv2.dct is the orthonormal DCT-II. The common pHash (imagehash, pHash.org) uses the unnormalised DCT-II, whose
# DC row and column are sqrt(2) larger relative to the rest; that changes which coefficients exceed the median,
# so we rescale to match it.
_UNNORMALISE = np.ones((8, 8), np.float32)
_UNNORMALISE[0, :] *= np.sqrt(2.0)
_UNNORMALISE[:, 0] *= np.sqrt(2.0)
_INT32_INTEGRAL_PIXELS = (2**31 - 1) // 255
"""uint8 images up to this many pixels have an exact int32 integral image (sum <= 255 per pixel)."""


def phash64(gray: np.ndarray) -> int:
    """Standard pHash: 32x32 area resize, 2-D DCT-II, top-left 8x8 block, threshold at its median.

    Bits are taken row-major from the 8x8 block, the first being the most significant, as imagehash does.

    Args:
        gray: (H, W) grayscale image, uint8 or float; any size >= 1x1.

    Returns:
        Unsigned 64-bit hash in 0 .. 2**64 - 1.
    """
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"phash64 needs a non-empty (H, W) grayscale array, got {_describe(gray)}")
    small = _area_average(gray)
    low = (cv2.dct(small)[:8, :8] * _UNNORMALISE).ravel()
    ordered = np.sort(low)
    median = (ordered[31] + ordered[32]) / 2  # np.median costs 10x more on 64 values
    return int(np.packbits(low > median).view(">u8")[0])


def hamming64(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (0 .. 64)."""
    for name, value in (("a", a), ("b", b)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"hamming64 needs unsigned 64-bit ints, {name}={value!r}")
    return (a ^ b).bit_count()


def _area_average(gray: np.ndarray) -> np.ndarray:
    """Exact area-average resize of (H, W) gray to (PHASH_SIDE, PHASH_SIDE) float32, via the integral image.

    The integral image of a piecewise-constant image is bilinear inside each pixel, so sampling it with
    bilinear interpolation at the 33 x 33 cell edges and differencing gives the exact mean of every cell,
    fractional pixels included (what `cv2.resize(..., INTER_AREA)` computes on float input). Faster than
    OpenCV's non-integer area path or a dense weight-matrix product (~7x and ~3x on a 256 x 341 image), and no
    BLAS call, so no BLAS threads competing with the caller's workers.
    """
    height, width = gray.shape
    if gray.dtype == np.uint8 and height * width <= _INT32_INTEGRAL_PIXELS:
        integral = cv2.integral(gray, sdepth=cv2.CV_32S)
    else:
        integral = cv2.integral(np.ascontiguousarray(gray, np.float64), sdepth=cv2.CV_64F)
    y0, y1, wy0, wy1 = _edge_interpolation(height)
    x0, x1, wx0, wx1 = _edge_interpolation(width)
    rows = integral[y0] * wy0 + integral[y1] * wy1  # (33, W + 1): integral at the row edges
    corners = rows[:, x0] * wx0.T + rows[:, x1] * wx1.T  # (33, 33): integral at the cell corners
    sums = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    return (sums * (PHASH_SIDE * PHASH_SIDE / (height * width))).astype(np.float32)


@lru_cache(maxsize=256)
def _edge_interpolation(source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integral-image indices and linear weights for the PHASH_SIDE + 1 cell edges along a side of `source` px.

    Returns (lower index, upper index, lower weight, upper weight), weights as (PHASH_SIDE + 1, 1) columns.
    """
    edges = np.arange(PHASH_SIDE + 1) * (source / PHASH_SIDE)
    lower = np.minimum(np.floor(edges).astype(np.intp), source - 1)
    upper_weight = (edges - lower)[:, None]
    arrays = (lower, lower + 1, 1.0 - upper_weight, upper_weight)
    for array in arrays:
        array.flags.writeable = False  # shared through the cache
    return arrays


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} dtype {value.dtype}"
    return type(value).__name__
