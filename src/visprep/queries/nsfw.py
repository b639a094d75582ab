"""NSFW classifiers for query photos: a named registry; the offline default runs the NudeNet detector ONNX.

The PyPI package ``nudenet`` ships ``320n.onnx``, a YOLOv8 detector of 18 body-part classes. An image is unsafe
when any class in `UNSAFE_NUDENET_CLASSES` is detected with a score of at least the threshold. The model is
fed BGR, as nudenet 3.4 itself does (its ``cv2.cvtColor(..., COLOR_RGBA2BGR)`` on a 3-channel image swaps the
channels before ``blobFromImage(swapRB=True)`` swaps them again), so scores match the package's. Only the model
file is taken from the package; decoding is `visprep.queries.yolo` (vectorised, and the same code serves any
YOLO-style detector).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from visprep.queries.yolo import YoloModel

NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
"""Output classes of NudeNet's 320n.onnx, in order (nudenet 3.4)."""

UNSAFE_NUDENET_CLASSES = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
                          "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")
"""Classes that make an image unsafe by default."""


@dataclass(frozen=True)
class NsfwVerdict:
    """What an NSFW classifier decided.

    Attributes:
        unsafe: True when the image must be rejected.
        score: the highest score among unsafe classes (0 when none was seen), 0..1.
        labels: unsafe labels seen at or above the threshold, best first.
    """

    unsafe: bool
    score: float
    labels: list[str] = field(default_factory=list)


class NsfwClassifier(ABC):
    """Decides whether an image is unsafe. Subclasses implement `_classify`; `classify` validates."""

    name: str = ""

    def classify(self, rgb: np.ndarray) -> NsfwVerdict:
        """Classify (H, W, 3) uint8 RGB."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{type(self).__name__}.classify needs (H, W, 3) uint8 RGB, got "
                             f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
        return self._classify(rgb)

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for run records."""
        return {"name": self.name}

    @abstractmethod
    def _classify(self, rgb: np.ndarray) -> NsfwVerdict:
        """Return the verdict for a validated image."""


def nudenet_model_path() -> Path:
    """Path of the ONNX model the installed ``nudenet`` package ships; ImportError saying what to install."""
    try:
        path = Path(str(resources.files("nudenet") / "320n.onnx"))
    except ModuleNotFoundError as exc:
        raise ImportError("the default NSFW classifier needs the nudenet package (it ships the ONNX model): "
                          "pip install nudenet") from exc
    if not path.is_file():
        raise ImportError(f"nudenet is installed but its model {path} is missing; reinstall nudenet")
    return path


class NudeNetClassifier(NsfwClassifier):
    """Offline default: NudeNet's 320n.onnx YOLOv8 detector, run with onnxruntime.

    Args:
        threshold: an unsafe class detected with at least this score makes the image unsafe.
        unsafe_classes: which NudeNet classes count as unsafe.
        weights: another NudeNet-format ONNX file (default: the one the package ships).
        threads: ONNX Runtime intra-op threads; 0 means the thread plan's (one per usable core). The session
            never spins (spinning halved the rate on 2 shared cores).
    """

    name = "nudenet"

    def __init__(self, *, threshold: float = 0.5, unsafe_classes: Sequence[str] = UNSAFE_NUDENET_CLASSES,
                 weights: str | Path | None = None, threads: int = 0) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"nudenet threshold must be in (0, 1], got {threshold!r}")
        unknown = set(unsafe_classes) - set(NUDENET_LABELS)
        if unknown:
            raise ValueError(f"unknown NudeNet classes {sorted(unknown)}; valid: {list(NUDENET_LABELS)}")
        self.threshold = float(threshold)
        self.unsafe_classes = tuple(unsafe_classes)
        path = Path(weights) if weights else nudenet_model_path()
        # The score floor is below the threshold so the verdict can report near-misses.
        self.model = YoloModel(path, labels=NUDENET_LABELS, size=320, score_threshold=min(0.2, self.threshold),
                               iou_threshold=0.45, layout="v8", channel_order="bgr",
                               agnostic_nms=True, threads=threads)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "unsafe_classes": list(self.unsafe_classes),
                "weights": str(self.model.weights)}

    def _classify(self, rgb: np.ndarray) -> NsfwVerdict:
        unsafe = [d for d in self.model.detect(rgb) if d.label in self.unsafe_classes]
        score = max((d.score for d in unsafe), default=0.0)
        labels = [d.label for d in sorted(unsafe, key=lambda d: -d.score) if d.score >= self.threshold]
        return NsfwVerdict(unsafe=bool(labels), score=round(float(score), 4), labels=list(dict.fromkeys(labels)))


NSFW_CLASSIFIERS: dict[str, Callable[..., NsfwClassifier]] = {
    "nudenet": NudeNetClassifier,
}
"""Registry of NSFW classifiers: name -> factory(**options)."""


def make_nsfw_classifier(name: str, **options: Any) -> NsfwClassifier:
    """Build classifier `name` from `NSFW_CLASSIFIERS`; unknown names raise with the valid ones."""
    if name not in NSFW_CLASSIFIERS:
        raise ValueError(f"unknown NSFW classifier {name!r}; valid: {', '.join(sorted(NSFW_CLASSIFIERS))}")
    return NSFW_CLASSIFIERS[name](**options)
