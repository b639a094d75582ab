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
_BIT_WEIGHTS = [1 << (63 - i) for i in range(64)]


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
    height, width = gray.shape
    pixels = gray.astype(np.float32, copy=False)
    if height % PHASH_SIDE == 0 and width % PHASH_SIDE == 0:  # OpenCV's fast integer-factor area path
        small = cv2.resize(pixels, (PHASH_SIDE, PHASH_SIDE), interpolation=cv2.INTER_AREA)
    else:  # exact area average as two small matrix products; OpenCV's non-integer area path is ~2x slower
        small = _area_weights(height) @ pixels @ _area_weights(width).T
    low = (cv2.dct(np.ascontiguousarray(small, np.float32))[:8, :8] * _UNNORMALISE).ravel()
    ordered = np.sort(low)
    median = (ordered[31] + ordered[32]) / 2  # np.median costs 10x more on 64 values
    return int(np.packbits(low > median).view(">u8")[0])


def hamming64(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (0 .. 64)."""
    for name, value in (("a", a), ("b", b)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"hamming64 needs unsigned 64-bit ints, {name}={value!r}")
    return (a ^ b).bit_count()


@lru_cache(maxsize=256)
def _area_weights(source: int) -> np.ndarray:
    """(PHASH_SIDE, source) float32 matrix averaging each 1/PHASH_SIDE interval of the source (area resize)."""
    edges = np.arange(PHASH_SIDE + 1) * (source / PHASH_SIDE)
    starts = np.arange(source)
    overlap = np.minimum(edges[1:, None], starts[None, :] + 1) - np.maximum(edges[:-1, None], starts[None, :])
    weights = (np.clip(overlap, 0, None) * (PHASH_SIDE / source)).astype(np.float32)
    weights.flags.writeable = False  # shared through the cache
    return weights


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} dtype {value.dtype}"
    return type(value).__name__
