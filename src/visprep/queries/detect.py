"""Main-object detectors for query photos: a named registry of plug-ins and an offline saliency default.

The base class validates the image and tidies the boxes; a plug-in writes `_detect` only.

* ``saliency`` (default, no weights): a saliency map from OpenCV operations — colour contrast (Lab) against the
  median colour of the image border, optionally blended with spectral residual saliency (Hou & Zhang, CVPR 2007)
  — thresholded with Otsu, closed, and split into connected regions whose bounding boxes are the detections.
  On real photos pasted onto real textures (tests/test_queries_detect.py) border contrast alone found the object
  with mean IoU 0.81; blending in 25% / 50% spectral residual gave 0.73 / 0.59 (texture is "salient" to it),
  hence ``spectral_weight=0`` by default.
* ``yolo``: any YOLO-style detector from local weights (ONNX or TorchScript), see `visprep.queries.yolo`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visprep.queries.boxes import Detection
from visprep.queries.yolo import YoloModel


class ObjectDetector(ABC):
    """Finds objects in an RGB image. Subclasses implement `_detect`; `detect` validates and tidies."""

    name: str = ""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Return the detections in `rgb`, largest first, clipped to the image.

        Args:
            rgb: (H, W, 3) uint8 RGB.
        """
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{type(self).__name__}.detect needs (H, W, 3) uint8 RGB, got "
                             f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
        h, w = rgb.shape[:2]
        out = []
        for d in self._detect(rgb):
            x0, x1 = sorted((min(max(d.x0, 0.0), w), min(max(d.x1, 0.0), w)))
            y0, y1 = sorted((min(max(d.y0, 0.0), h), min(max(d.y1, 0.0), h)))
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                out.append(Detection(x0, y0, x1, y1, float(d.score), d.label))
        return sorted(out, key=lambda d: -d.area)

    def describe(self) -> dict[str, Any]:
        """The detector's name and parameters, for run records."""
        return {"name": self.name}

    @abstractmethod
    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        """Return raw detections in pixel coordinates of `rgb`."""


class SaliencyDetector(ObjectDetector):
    """Offline default: salient regions from spectral residual + border-contrast saliency (no weights).

    Args:
        work_side: the longer side the saliency map is computed at, pixels.
        min_area: smallest region kept, as a fraction of the image area.
        min_peak: a map whose strongest region scores below this (0..1) is "nothing found".
        spectral_weight: weight of spectral-residual saliency in the map (the rest is border contrast).
    """

    name = "saliency"

    def __init__(self, *, work_side: int = 128, min_area: float = 0.01, min_peak: float = 0.25,
                 spectral_weight: float = 0.0) -> None:
        if not 32 <= work_side <= 1024:
            raise ValueError(f"saliency work_side must be in [32, 1024], got {work_side!r}")
        if not 0 <= min_area < 1:
            raise ValueError(f"saliency min_area must be in [0, 1), got {min_area!r}")
        if not 0 <= min_peak <= 1:
            raise ValueError(f"saliency min_peak must be in [0, 1], got {min_peak!r}")
        if not 0 <= spectral_weight <= 1:
            raise ValueError(f"saliency spectral_weight must be in [0, 1], got {spectral_weight!r}")
        self.spectral_weight = float(spectral_weight)
        self.work_side = work_side
        self.min_area = min_area
        self.min_peak = min_peak

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "work_side": self.work_side, "min_area": self.min_area,
                "min_peak": self.min_peak, "spectral_weight": self.spectral_weight}

    def saliency_map(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w) float32 saliency in 0..1 at the working size (longer side `work_side`)."""
        h, w = rgb.shape[:2]
        f = self.work_side / max(h, w)
        small = cv2.resize(rgb, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        sal = _border_contrast(small)
        if self.spectral_weight > 0:
            sal = (1 - self.spectral_weight) * sal + self.spectral_weight * _spectral_residual(small)
        return sal

    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        sal = self.saliency_map(rgb)
        sh, sw = sal.shape
        u8 = np.round(sal * 255).astype(np.uint8)
        otsu, binary = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        if otsu < 0.5 * 255 * self.min_peak:  # an almost flat map: Otsu splits noise
            return []
        k = max(3, (min(sh, sw) // 16) | 1)
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        fx, fy = rgb.shape[1] / sw, rgb.shape[0] / sh
        out = []
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if area < self.min_area * sh * sw:
                continue
            peak = float(np.percentile(sal[labels == i], 90))
            if peak < self.min_peak:
                continue
            out.append(Detection(x * fx, y * fy, (x + bw) * fx, (y + bh) * fy, score=peak, label="salient"))
        return out


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(np.percentile(a, 99.5))
    if hi - lo < 1e-6:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0, 1).astype(np.float32)


def _spectral_residual(rgb: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) on a 64x64 gray version, resized back, 0..1."""
    h, w = rgb.shape[:2]
    gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fft2(gray.astype(np.float32))
    log_amp = np.log(np.abs(spectrum) + 1e-6).astype(np.float32)
    residual = log_amp - cv2.blur(log_amp, (3, 3))
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), 2.5)
    return _normalise(cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR))


def _border_contrast(rgb: np.ndarray) -> np.ndarray:
    """Distance in Lab from the median colour of the image border (photos usually frame the object), 0..1."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    dist = np.sqrt(((lab - np.median(border, axis=0)) ** 2).sum(axis=2))
    return _normalise(cv2.GaussianBlur(dist, (0, 0), 1.5))


class YoloDetector(ObjectDetector):
    """A YOLO-style detector from local weights (ONNX or TorchScript), decoded with NMS.

    Args:
        weights: model file.
        labels: class names in output order.
        classes: keep only these labels (None: all).
        size, score_threshold, iou_threshold, layout, channel_order, threads: see
            `visprep.queries.yolo.YoloModel` (threads 0: the thread plan's).
    """

    name = "yolo"

    def __init__(self, *, weights: str | Path, labels: Sequence[str], classes: Sequence[str] | None = None,
                 size: int = 640, score_threshold: float = 0.25, iou_threshold: float = 0.45,
                 layout: str = "auto", channel_order: str = "rgb", threads: int = 0) -> None:
        self.model = YoloModel(weights, labels=labels, size=size, score_threshold=score_threshold,
                               iou_threshold=iou_threshold, layout=layout, channel_order=channel_order,
                               threads=threads)
        unknown = set(classes or ()) - set(labels)
        if unknown:
            raise ValueError(f"yolo classes {sorted(unknown)} are not among the model's labels {list(labels)}")
        self.classes = set(classes) if classes else None

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"name": self.name, "weights": str(m.weights), "size": m.size, "score_threshold": m.score_threshold,
                "iou_threshold": m.iou_threshold, "classes": sorted(self.classes) if self.classes else None}

    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        found = self.model.detect(rgb)
        return [d for d in found if self.classes is None or d.label in self.classes]


DETECTORS: dict[str, Callable[..., ObjectDetector]] = {
    "saliency": SaliencyDetector,
    "yolo": YoloDetector,
}
"""Registry of main-object detectors: name -> factory(**options)."""


def make_detector(name: str, **options: Any) -> ObjectDetector:
    """Build detector `name` from `DETECTORS` with `options`; unknown names raise with the valid ones."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid detectors: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](**options)
