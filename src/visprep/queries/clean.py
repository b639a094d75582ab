"""Cleaning one user-uploaded query photo, in order: EXIF orientation, main-object crop, blur, low resolution,
NSFW. Build a `QueryCleaner` once (it loads the detector and the NSFW model) and call `clean` per photo; this
is the serving-time entry point, and the `queries` stage runs the same code over files and URLs.

Every step appends a record ``{"step", "decision", ..., "ms"}`` with its numbers (EXIF tag, crop box, blur score
and threshold, upsampling factor, NSFW score), so a rejected or altered photo can always be explained.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from visprep.config import QueriesConfig
from visprep.images.decode import (
    DEFAULT_MAX_DECODED_BYTES,
    ImageDecodeError,
    apply_exif_orientation,
    decode_image,
)
from visprep.images.preprocess import encode_jpeg
from visprep.queries.boxes import crop_box
from visprep.queries.detect import DETECTORS, ObjectDetector, make_detector
from visprep.queries.nsfw import NSFW_CLASSIFIERS, NsfwClassifier, make_nsfw_classifier
from visprep.queries.sharpness import query_blur_score
from visprep.queries.superres import UPSCALERS, Upscaler, make_upscaler

QueryStatus = Literal["accepted", "rejected"]
REJECT_REASONS = ("decode_empty", "decode_unsupported_format", "decode_truncated", "decode_corrupt",
                  "decode_too_many_pixels", "blurred", "too_small", "nsfw")
"""Reasons `clean` can reject a photo for (the stage adds ``fetch_<status>`` for inputs it could not read)."""

_ORIENTATION_DECISIONS = {1: "upright", 2: "mirrored", 3: "rotated_180", 4: "flipped", 5: "transposed",
                          6: "rotated_90_cw", 7: "transversed", 8: "rotated_90_ccw"}


@dataclass
class CleanedQuery:
    """The outcome of cleaning one photo.

    Attributes:
        status: "accepted" or "rejected".
        reason: None when accepted, else one of `REJECT_REASONS`.
        detail: a sentence a person can act on ("" when accepted).
        image: (H, W, 3) uint8 RGB of the cleaned photo; None when rejected.
        steps: one record per step run, in order.
    """

    status: QueryStatus
    reason: str | None
    detail: str
    image: np.ndarray | None
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """True when the photo passed every step."""
        return self.status == "accepted"

    def encode(self, *, quality: int = 95) -> bytes:
        """The cleaned photo as JPEG bytes; ValueError when rejected."""
        if self.image is None:
            raise ValueError(f"a rejected query ({self.reason}) has no cleaned image")
        return encode_jpeg(self.image, quality=quality)


class QueryCleaner:
    """Cleans query photos; holds the detector, upscaler and NSFW classifier (built once, reused).

    Args:
        detector: main-object detector, or None to keep the whole image.
        nsfw: NSFW classifier, or None to skip the check (recorded as "skipped").
        upscaler: how images below `min_side` are enlarged.
        crop_margin: margin around the crop box, fraction of the box size per side.
        crop_min_score: detections below this score are ignored.
        crop_min_area: boxes below this fraction of the image area are ignored.
        blur_threshold: reject when `query_blur_score` is below this.
        min_side: shorter side (px) below which the image is upscaled to it.
        min_side_floor: shorter side (px) below which the image is rejected.
        decode_min_side: decode JPEGs at reduced DCT scale down to this shorter side (None: full size).
        max_pixels: decompression-bomb limit.
        max_decoded_bytes: largest memory one decode may take (`visprep.images.decode.check_decoded_bytes`).
    """

    def __init__(self, *, detector: ObjectDetector | None, nsfw: NsfwClassifier | None, upscaler: Upscaler,
                 crop_margin: float = 0.1, crop_min_score: float = 0.0, crop_min_area: float = 0.02,
                 blur_threshold: float = 40.0, min_side: int = 64, min_side_floor: int = 16,
                 decode_min_side: int | None = 1024, max_pixels: int = 89_478_485,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> None:
        if detector is not None and not isinstance(detector, ObjectDetector):
            raise TypeError(f"detector must be an ObjectDetector or None, got {type(detector).__name__}")
        if nsfw is not None and not isinstance(nsfw, NsfwClassifier):
            raise TypeError(f"nsfw must be an NsfwClassifier or None, got {type(nsfw).__name__}")
        if not isinstance(upscaler, Upscaler):
            raise TypeError(f"upscaler must be an Upscaler, got {type(upscaler).__name__}")
        if not 1 <= min_side_floor <= min_side:
            raise ValueError(f"need 1 <= min_side_floor <= min_side, got {min_side_floor} and {min_side}")
        self.detector = detector
        self.nsfw = nsfw
        self.upscaler = upscaler
        self.crop_margin = float(crop_margin)
        self.crop_min_score = float(crop_min_score)
        self.crop_min_area = float(crop_min_area)
        self.blur_threshold = float(blur_threshold)
        self.min_side = int(min_side)
        self.min_side_floor = int(min_side_floor)
        self.decode_min_side = decode_min_side
        self.max_pixels = int(max_pixels)
        self.max_decoded_bytes = int(max_decoded_bytes)

    @classmethod
    def from_config(cls, cfg: QueriesConfig, *, threads: int = 0) -> QueryCleaner:
        """Build the cleaner a `QueriesConfig` describes (loading models once); every model that takes a
        `threads` option (NudeNet, yolo, network upscalers) gets `threads` intra-op threads (0: the thread plan's,
        one per usable core) unless its options name their own."""
        detector = None
        if cfg.detector != "none":
            options = dict(cfg.detector_options)
            if "threads" not in options and _takes_threads(DETECTORS.get(cfg.detector)):
                options["threads"] = threads
            detector = make_detector(cfg.detector, **options)
        nsfw = None
        if cfg.nsfw != "none":
            extra = {"threads": threads} if _takes_threads(NSFW_CLASSIFIERS.get(cfg.nsfw)) else {}
            nsfw = make_nsfw_classifier(cfg.nsfw, threshold=cfg.nsfw_threshold, **extra)
        return cls(detector=detector, nsfw=nsfw, upscaler=upscaler_from_config(cfg, threads=threads),
                   crop_margin=cfg.crop_margin, crop_min_score=cfg.crop_min_score, crop_min_area=cfg.crop_min_area,
                   blur_threshold=cfg.blur_threshold, min_side=cfg.min_side, min_side_floor=cfg.min_side_floor,
                   decode_min_side=cfg.decode_min_side, max_pixels=cfg.max_pixels,
                   max_decoded_bytes=cfg.max_decoded_bytes)

    def describe(self) -> dict[str, Any]:
        """Resolved plug-ins and parameters, for run records."""
        return {
            "detector": self.detector.describe() if self.detector else None,
            "nsfw": self.nsfw.describe() if self.nsfw else None,
            "upscaler": self.upscaler.describe(),
            "crop_margin": self.crop_margin, "crop_min_score": self.crop_min_score,
            "crop_min_area": self.crop_min_area, "blur_threshold": self.blur_threshold,
            "min_side": self.min_side, "min_side_floor": self.min_side_floor,
            "decode_min_side": self.decode_min_side, "max_pixels": self.max_pixels,
            "max_decoded_bytes": self.max_decoded_bytes,
        }

    def clean(self, data: bytes) -> CleanedQuery:
        """Clean one encoded photo (JPEG, PNG, WebP, ...).

        Never raises for a bad photo: undecodable bytes come back rejected with a ``decode_*`` reason.

        Raises:
            TypeError: `data` is not bytes-like.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"query image data must be bytes, got {type(data).__name__}")
        steps: list[dict[str, Any]] = []

        # 1. decode + EXIF orientation
        t0 = time.perf_counter()
        try:
            decoded = decode_image(bytes(data), min_side=self.decode_min_side, max_pixels=self.max_pixels,
                                   gray=False, max_decoded_bytes=self.max_decoded_bytes)
        except ImageDecodeError as exc:
            steps.append({"step": "orientation", "decision": "undecodable", "error": exc.reason,
                          "ms": _ms(t0)})
            return CleanedQuery("rejected", f"decode_{exc.reason}", str(exc), None, steps)
        img = apply_exif_orientation(decoded.pixels, decoded.orientation)
        steps.append({"step": "orientation", "decision": _ORIENTATION_DECISIONS[decoded.orientation],
                      "exif_orientation": decoded.orientation, "stored_size": [decoded.width, decoded.height],
                      "decoded_size": [int(img.shape[1]), int(img.shape[0])], "ms": _ms(t0)})
        oriented = img

        # 2. main-object crop
        t0 = time.perf_counter()
        img, record = self._crop(img)
        steps.append({**record, "ms": _ms(t0)})

        # 3. blur
        t0 = time.perf_counter()
        score = query_blur_score(img)
        blurred = score < self.blur_threshold
        steps.append({"step": "blur", "decision": "rejected" if blurred else "passed", "score": round(score, 3),
                      "threshold": self.blur_threshold, "ms": _ms(t0)})
        if blurred:
            return CleanedQuery("rejected", "blurred", f"blur score {score:.1f} is below the threshold "
                                f"{self.blur_threshold:g} (Laplacian variance)", None, steps)

        # 4. low resolution
        t0 = time.perf_counter()
        h, w = img.shape[:2]
        short = min(h, w)
        if short < self.min_side_floor:
            steps.append({"step": "resolution", "decision": "rejected", "size": [w, h], "floor": self.min_side_floor,
                          "ms": _ms(t0)})
            return CleanedQuery("rejected", "too_small", f"shorter side {short} px is below the floor of "
                                f"{self.min_side_floor} px", None, steps)
        if short < self.min_side:
            factor = self.min_side / short
            nw, nh = max(self.min_side, round(w * factor)), max(self.min_side, round(h * factor))
            img = self.upscaler.upscale(img, nw, nh)
            steps.append({"step": "resolution", "decision": "upscaled", "size": [w, h], "new_size": [nw, nh],
                          "factor": round(factor, 4), "method": self.upscaler.name, "ms": _ms(t0)})
        else:
            steps.append({"step": "resolution", "decision": "kept", "size": [w, h], "ms": _ms(t0)})

        # 5. NSFW, on the whole upright photo: what the user sent, not only the part we keep
        t0 = time.perf_counter()
        if self.nsfw is None:
            steps.append({"step": "nsfw", "decision": "skipped", "ms": _ms(t0)})
        else:
            verdict = self.nsfw.classify(oriented)
            steps.append({"step": "nsfw", "decision": "rejected" if verdict.unsafe else "passed",
                          "classifier": self.nsfw.name, "score": verdict.score, "labels": verdict.labels,
                          "ms": _ms(t0)})
            if verdict.unsafe:
                return CleanedQuery("rejected", "nsfw", f"NSFW classifier {self.nsfw.name} found "
                                    f"{', '.join(verdict.labels)} (score {verdict.score:.2f})", None, steps)
        return CleanedQuery("accepted", None, "", np.ascontiguousarray(img), steps)

    def _crop(self, img: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = img.shape[:2]
        if self.detector is None:
            return img, {"step": "crop", "decision": "whole_image", "why": "no detector"}
        found = self.detector.detect(img)
        usable = [d for d in found if d.area >= self.crop_min_area * w * h]
        box = crop_box(usable, w, h, margin=self.crop_margin, min_score=self.crop_min_score)
        record: dict[str, Any] = {"step": "crop", "detector": self.detector.name, "detections": len(found)}
        if box is None:
            return img, {**record, "decision": "whole_image", "why": "nothing found"}
        x0, y0, x1, y1 = box
        if (x1 - x0) * (y1 - y0) >= 0.95 * w * h:
            return img, {**record, "decision": "whole_image", "why": "box covers the image", "box": list(box)}
        if min(x1 - x0, y1 - y0) < self.min_side_floor <= min(w, h):
            # Cropping would turn an acceptable photo into one the resolution step must reject.
            return img, {**record, "decision": "whole_image", "why": "crop below the resolution floor",
                         "box": list(box)}
        best = max(usable, key=lambda d: (d.area, d.score))
        return np.ascontiguousarray(img[y0:y1, x0:x1]), {
            **record, "decision": "cropped", "box": list(box), "object_box": best.as_list(),
            "label": best.label, "score": round(best.score, 4), "margin": self.crop_margin,
        }


def upscaler_from_config(cfg: QueriesConfig, *, threads: int = 0) -> Upscaler:
    """The upscaler `cfg` asks for; "auto" picks the network plug-in by the weights' suffix when weights are set.
    A network upscaler that takes `threads` gets it (0: the thread plan's)."""
    name = cfg.upscaler
    if name == "auto":
        if cfg.sr_weights is None:
            name = "classical"
        else:
            name = "onnx" if Path(cfg.sr_weights).suffix.lower() == ".onnx" else "torchscript"
    if name == "classical":
        return make_upscaler("classical")
    if cfg.sr_weights is None:
        raise ValueError(f"queries.upscaler = {name!r} needs queries.sr_weights (a model file)")
    extra = {"threads": threads} if _takes_threads(UPSCALERS.get(name)) else {}
    return make_upscaler(name, weights=cfg.sr_weights, scale=cfg.sr_scale, **extra)


def _takes_threads(factory: Any) -> bool:
    """Whether a registered plug-in factory has a `threads` parameter (a plug-in without one is not handed it:
    it would raise TypeError or pass it to a library that refuses it)."""
    if factory is None:
        return False  # unknown name: make_* raises, naming the valid ones
    try:
        return "threads" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def clean_query_image(data: bytes, *, cleaner: QueryCleaner) -> CleanedQuery:
    """Clean one encoded query photo with a cleaner built once (`QueryCleaner.from_config`)."""
    return cleaner.clean(data)


_CLEANERS: dict[str, QueryCleaner] = {}
"""Cleaners built from `[queries]` sections in this process, by section: a worker loads its models once."""


def cleaner_for(spec: dict[str, Any], *, threads: int = 0) -> QueryCleaner:
    """The cleaner of a `[queries]` section given as plain data (`QueriesConfig.model_dump()`), built once per
    process."""
    key = json.dumps([spec, threads], sort_keys=True, default=str)
    if key not in _CLEANERS:
        _CLEANERS[key] = QueryCleaner.from_config(QueriesConfig.model_validate(spec), threads=threads)
    return _CLEANERS[key]


def clean_query_batch(items: Sequence[tuple[str, bytes]], cleaner: dict[str, Any] | QueryCleaner, *,
                      store_root: str, jpeg_quality: int, threads: int = 0) -> list[dict[str, Any]]:
    """Clean a batch of (source, encoded photo) into one row each: source, input_sha256, status, reason, detail,
    steps (JSON), and for an accepted photo its image_id, width and height, the cleaned JPEG stored by content under
    `store_root`. A photo that fails is a rejected row with its reason, never an exception. `cleaner`: a `[queries]`
    section as plain data (built once per process, for an engine's workers) or a cleaner built by the caller."""
    from visprep.workspace import ImageStore

    built = cleaner if isinstance(cleaner, QueryCleaner) else cleaner_for(cleaner, threads=threads)
    store = ImageStore(Path(store_root))
    rows = []
    for source, data in items:
        out = built.clean(data)
        row: dict[str, Any] = {"source": source, "input_sha256": hashlib.sha256(data).hexdigest(),
                               "status": out.status, "reason": out.reason, "detail": out.detail or None,
                               "steps": json.dumps(out.steps, sort_keys=True)}
        if out.accepted:
            row.update(image_id=store.put(out.encode(quality=jpeg_quality), "jpg"),
                       width=int(out.image.shape[1]), height=int(out.image.shape[0]))
        rows.append(row)
    return rows


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
