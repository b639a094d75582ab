"""YOLO-style detectors from local weights: letterbox input, decode the raw output tensor, NMS.

Two output layouts are understood (``layout="auto"`` tells them apart by shape):

* YOLOv8 and later: ``(1, 4 + C, N)`` — per anchor cx, cy, w, h (input pixels) then C class scores.
* YOLOv5: ``(1, N, 5 + C)`` — per anchor cx, cy, w, h, objectness, then C class scores (score = obj * cls).

The input is the RGB image padded at the right/bottom to a square (the padding colour is black) and resized to
``size`` x ``size``, as float32 NCHW in 0..1 — the convention of Ultralytics exports and of the NudeNet ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visprep.engines.ort_sessions import cpu_session, model_threads
from visprep.queries.boxes import Detection, nms

LAYOUTS = ("auto", "v8", "v5")


def letterbox(rgb: np.ndarray, size: int, *, channel_order: str = "rgb") -> tuple[np.ndarray, float]:
    """Pad (H, W, 3) uint8 RGB to a square at the right/bottom, resize to `size`; return NCHW float32 (channels
    in `channel_order`) and the factor that maps model pixels back to image pixels."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = cv2.copyMakeBorder(rgb, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    # Bilinear, as Ultralytics' own letterbox: the scores then match what the model was validated with.
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    if channel_order == "bgr":
        resized = resized[:, :, ::-1]
    blob = resized.astype(np.float32).transpose(2, 0, 1)[None] * np.float32(1 / 255.0)
    return np.ascontiguousarray(blob), side / float(size)


def decode_yolo(output: np.ndarray, *, scale: float, width: int, height: int, labels: Sequence[str],
                score_threshold: float, iou_threshold: float, layout: str = "auto",
                agnostic: bool = False) -> list[Detection]:
    """Turn one image's raw YOLO output into detections in image pixels (vectorised; NMS per class).

    Args:
        output: the model output for one image, with or without the leading batch axis of 1.
        scale: image pixels per model pixel (from `letterbox`).
        width, height: image size, pixels; boxes are clipped to it.
        labels: class names, one per class score column.
        score_threshold: anchors scoring below this are dropped before NMS.
        iou_threshold: NMS overlap threshold.
        layout: "auto", "v8" or "v5".
        agnostic: NMS across classes (a box suppresses overlapping boxes of any class).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown YOLO layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    out = np.asarray(output, dtype=np.float32)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise ValueError(f"decode_yolo decodes one image at a time, got output shape {out.shape}")
        out = out[0]
    if out.ndim != 2:
        raise ValueError(f"YOLO output must be 2-D per image, got shape {out.shape}")
    n_cls = len(labels)
    if layout == "auto":
        layout = "v8" if out.shape[0] == 4 + n_cls and out.shape[1] != 4 + n_cls else "v5"
    if layout == "v8":
        if out.shape[0] != 4 + n_cls:
            raise ValueError(f"YOLOv8 output needs 4 + {n_cls} rows, got shape {out.shape}")
        rows = out.T
        cls_scores = rows[:, 4:]
    else:
        if out.shape[1] != 5 + n_cls:
            raise ValueError(f"YOLOv5 output needs 5 + {n_cls} columns, got shape {out.shape}")
        rows = out
        cls_scores = rows[:, 5:] * rows[:, 4:5]
    cls_id = cls_scores.argmax(axis=1)
    score = cls_scores[np.arange(len(rows)), cls_id]
    keep = score >= score_threshold
    if not keep.any():
        return []
    cx, cy, bw, bh = (rows[keep, i] * scale for i in range(4))
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    score, cls_id = score[keep], cls_id[keep]
    kept = nms(boxes, score, iou_threshold=iou_threshold, classes=None if agnostic else cls_id)
    return [Detection(*(float(v) for v in boxes[i]), score=float(score[i]), label=labels[int(cls_id[i])])
            for i in kept]


class YoloModel:
    """A YOLO-style network from local weights: ONNX (onnxruntime) or TorchScript (torch), built once.

    Args:
        weights: path to a ``.onnx`` file or a TorchScript ``.pt``/``.torchscript`` file.
        labels: class names in output order.
        size: square input side, pixels.
        score_threshold, iou_threshold, layout: see `decode_yolo`.
        channel_order: "rgb" (Ultralytics exports) or "bgr" (what the nudenet package feeds its model).
        agnostic_nms: suppress overlapping boxes across classes (nudenet does).
        threads: model intra-op threads (ONNX Runtime session or torch); 0 means the thread plan's (one per
            usable core, `visprep.engines.ort_sessions.model_threads`). ONNX sessions never spin.
    """

    def __init__(self, weights: str | Path, *, labels: Sequence[str], size: int = 640,
                 score_threshold: float = 0.25, iou_threshold: float = 0.45, layout: str = "auto",
                 channel_order: str = "rgb", agnostic_nms: bool = False, threads: int = 0) -> None:
        path = Path(weights)
        self.threads = model_threads(threads)
        self.agnostic_nms = bool(agnostic_nms)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.channel_order = channel_order
        if not path.is_file():
            raise FileNotFoundError(f"YOLO weights not found: {path}")
        if not labels:
            raise ValueError("YoloModel needs at least one class label")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown YOLO layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.weights = path
        self.labels = list(labels)
        self.size = int(size)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.layout = layout
        self._run = (_onnx_runner(path, self.threads) if path.suffix.lower() == ".onnx"
                     else _torchscript_runner(path, self.threads))

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detections in pixel coordinates of `rgb` ((H, W, 3) uint8)."""
        blob, scale = letterbox(rgb, self.size, channel_order=self.channel_order)
        raw = self._run(blob)
        return decode_yolo(raw, scale=scale, width=rgb.shape[1], height=rgb.shape[0], labels=self.labels,
                           score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                           layout=self.layout, agnostic=self.agnostic_nms)


def _onnx_runner(path: Path, threads: int) -> Any:
    # One image per call (serving latency; batching 8 was no faster on 2 cores). No spinning: the process
    # decodes and runs OpenCV between calls, on the same cores.
    session = cpu_session(path, threads=threads)
    name = session.get_inputs()[0].name

    def run(blob: np.ndarray) -> np.ndarray:
        return session.run(None, {name: blob})[0]

    return run


def _torchscript_runner(path: Path, threads: int) -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("TorchScript weights need torch: pip install torch") from exc
    if torch.get_num_threads() != threads:  # torch's pool is per process: the plan sets it for every model
        torch.set_num_threads(threads)
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(blob: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(blob))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.cpu().numpy()

    return run
