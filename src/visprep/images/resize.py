"""Aspect-preserving resizes shared by inspection and preprocessing."""

from __future__ import annotations

import cv2
import numpy as np


def resize_shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so that the shorter side is `side` px, keeping the aspect ratio (longer side rounded).

    The image itself is returned when it already has that size. See `interpolation_for` for the filter.
    """
    height, width = image.shape[:2]
    shorter = min(height, width)
    if shorter == side:
        return image
    if height <= width:
        new_h, new_w = side, max(side, round(width * side / height))
    else:
        new_h, new_w = max(side, round(height * side / width)), side
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation_for(shorter, side))


def interpolation_for(source: int, target: int) -> int:
    """OpenCV filter for resizing a side of `source` px to `target` px.

    Bilinear up to a 2x reduction: every source pixel still contributes, so there is little aliasing, and it
    is ~5x faster than OpenCV's area filter at non-integer ratios (which is what a DCT-scaled decode leaves).
    Area filter for 2x and larger reductions, where bilinear would skip pixels and alias.
    """
    return cv2.INTER_AREA if source >= 2 * target else cv2.INTER_LINEAR
