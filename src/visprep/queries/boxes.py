"""Detection boxes: the `Detection` record, IoU, non-maximum suppression and the crop-box rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected object, in pixel coordinates of the image it was found in.

    Attributes:
        x0, y0: top-left corner, pixels (inclusive).
        x1, y1: bottom-right corner, pixels (exclusive), so the box is ``img[y0:y1, x0:x1]``.
        score: confidence in 0..1.
        label: class name ("object" for class-agnostic detectors).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    label: str = "object"

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def as_list(self) -> list[float]:
        """``[x0, y0, x1, y1]`` rounded to 0.1 px, for recipes and step records."""
        return [round(float(v), 1) for v in (self.x0, self.y0, self.x1, self.y1)]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), boxes as x0, y0, x1, y1; returns (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float, classes: np.ndarray | None = None
        ) -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept indices, best score first.

    Args:
        boxes: (N, 4) x0, y0, x1, y1.
        scores: (N,) confidences.
        iou_threshold: a box overlapping a kept box of the same class by more than this is dropped.
        classes: (N,) class ids; when given, boxes of different classes never suppress each other.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"nms: iou_threshold must be in [0, 1], got {iou_threshold!r}")
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    if classes is not None:
        # Offset each class into its own region of the plane so one pass handles all classes.
        span = float(np.abs(boxes).max()) + 1.0
        boxes = boxes + (np.asarray(classes, dtype=np.float64).reshape(-1, 1) * 2 * span)
    order = np.argsort(-scores, kind="stable")
    iou = iou_matrix(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def crop_box(detections: Sequence[Detection], width: int, height: int, *, margin: float,
             min_score: float = 0.0) -> tuple[int, int, int, int] | None:
    """The box to crop: the largest detection scoring at least `min_score`, grown by `margin` and clipped.

    Args:
        detections: boxes in pixel coordinates of a (height, width) image.
        width, height: image size, pixels.
        margin: fraction of the box's width (height) added on the left and right (top and bottom).
        min_score: detections below this are ignored.

    Returns:
        Integer ``(x0, y0, x1, y1)``, or None when no detection qualifies.
    """
    kept = [d for d in detections if d.score >= min_score and d.area > 0]
    if not kept:
        return None
    best = max(kept, key=lambda d: (d.area, d.score))
    mx, my = margin * (best.x1 - best.x0), margin * (best.y1 - best.y0)
    x0 = int(np.floor(max(0.0, best.x0 - mx)))
    y0 = int(np.floor(max(0.0, best.y0 - my)))
    x1 = int(np.ceil(min(float(width), best.x1 + mx)))
    y1 = int(np.ceil(min(float(height), best.y1 + my)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, x1, y1
