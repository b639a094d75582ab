"""Blur check for query photos and the calibration of its threshold from labelled examples.

The score is `visprep.images.blur.blur_score`: variance of the Laplacian after resizing the grayscale image so
its shorter side is `BLUR_SIDE` (256) px, so the same photo at 800 px and at 3000 px scores alike. Images
smaller than that are scored at their own size: enlarging them first would add blur that the photo does not
have (the low-resolution step deals with their size).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from visprep.images.blur import BLUR_SIDE, blur_score
from visprep.images.decode import decode_rgb


def query_blur_score(rgb: np.ndarray) -> float:
    """Sharpness of (H, W, 3) uint8 RGB (higher = sharper), in squared gray levels.

    Uses `blur_score` (fixed shorter side of `BLUR_SIDE` px) when the image is at least that large, else the
    Laplacian variance at the image's own size.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"query_blur_score needs (H, W, 3) uint8 RGB, got shape {getattr(rgb, 'shape', None)}")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if min(gray.shape) >= BLUR_SIDE:
        return float(blur_score(gray))
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    return float(lap.var())


@dataclass(frozen=True)
class BlurCalibration:
    """A blur threshold chosen from labelled examples.

    Attributes:
        threshold: reject images scoring below this.
        balanced_accuracy: mean of the sharp and the blurred recall at the threshold, 0..1.
        sharp_kept: fraction of sharp examples scoring >= threshold.
        blurred_rejected: fraction of blurred examples scoring < threshold.
        n_sharp, n_blurred: how many examples of each.
        sharp_median, blurred_median: median scores of each group.
    """

    threshold: float
    balanced_accuracy: float
    sharp_kept: float
    blurred_rejected: float
    n_sharp: int
    n_blurred: int
    sharp_median: float
    blurred_median: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict, for run records and CLI output."""
        return asdict(self)


def calibrate_blur_threshold(sharp: Sequence[float], blurred: Sequence[float]) -> BlurCalibration:
    """Pick the threshold that best separates sharp from blurred scores (maximum balanced accuracy).

    Candidates are the geometric midpoints between consecutive distinct scores (scores spread over orders of
    magnitude); among equally good ones the midpoint of the best run is taken, which keeps the margin to
    both groups largest.

    Args:
        sharp: blur scores of photos a person judged sharp enough.
        blurred: blur scores of photos judged too blurred.

    Raises:
        ValueError: an empty group, or a score that is negative or not finite.
    """
    s = np.asarray(list(sharp), dtype=np.float64)
    b = np.asarray(list(blurred), dtype=np.float64)
    for name, arr in (("sharp", s), ("blurred", b)):
        if arr.size == 0:
            raise ValueError(f"calibrate_blur_threshold needs at least one {name} example")
        if not np.all(np.isfinite(arr)) or (arr < 0).any():
            raise ValueError(f"{name} scores must be finite and >= 0, got {arr[~np.isfinite(arr) | (arr < 0)][:3]}")
    values = np.unique(np.concatenate([s, b]))
    lo = np.maximum(values[:-1], 1e-9)
    mids = np.sqrt(lo * values[1:]) if len(values) > 1 else np.empty(0)
    candidates = np.concatenate([[values[0] * 0.5], mids, [values[-1] * 2 + 1]])
    kept = (s[None, :] >= candidates[:, None]).mean(axis=1)
    rejected = (b[None, :] < candidates[:, None]).mean(axis=1)
    balanced = (kept + rejected) / 2
    best = np.flatnonzero(np.isclose(balanced, balanced.max()))
    i = int(best[len(best) // 2])
    return BlurCalibration(
        threshold=round(float(candidates[i]), 3), balanced_accuracy=round(float(balanced[i]), 4),
        sharp_kept=round(float(kept[i]), 4), blurred_rejected=round(float(rejected[i]), 4), n_sharp=int(s.size),
        n_blurred=int(b.size), sharp_median=round(float(np.median(s)), 3),
        blurred_median=round(float(np.median(b)), 3),
    )


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, image suffixes only) into a sorted list of image files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in _IMAGE_SUFFIXES and q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def calibrate_blur_from_files(sharp: Iterable[str | Path], blurred: Iterable[str | Path]) -> BlurCalibration:
    """`calibrate_blur_threshold` on image files or folders of them (decoded upright, scored as queries are)."""
    def scores(paths: Iterable[str | Path]) -> list[float]:
        return [query_blur_score(decode_rgb(p.read_bytes())) for p in image_files(paths)]

    return calibrate_blur_threshold(scores(sharp), scores(blurred))
