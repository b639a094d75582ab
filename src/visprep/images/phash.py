"""Perceptual hash (pHash) of a grayscale image, as a 64-bit unsigned Python int."""

from __future__ import annotations

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
    small = cv2.resize(gray.astype(np.float32, copy=False), (PHASH_SIDE, PHASH_SIDE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8] * _UNNORMALISE
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming64(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (0 .. 64)."""
    for name, value in (("a", a), ("b", b)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"hamming64 needs unsigned 64-bit ints, {name}={value!r}")
    return (a ^ b).bit_count()


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} dtype {value.dtype}"
    return type(value).__name__
