"""Upscalers for low-resolution query photos: a named registry of plug-ins and a classical default.

* ``classical`` (default, no weights): OpenCV Lanczos-4 interpolation (8x8 windowed-sinc). It invents no detail
  but keeps edges sharper than bicubic and does not ring as much as a plain sinc; on a query photo it is what a
  browser would show the user when zooming.
* ``onnx`` / ``torchscript``: a super-resolution network from local weights (ESRGAN, Real-ESRGAN, EDSR, ...)
  taking (1, 3, H, W) float32 RGB in 0..1 and returning (1, 3, sH, sW) with a fixed integer ``scale``. The
  network runs once; the result is then resized (area filter) to the exact target size.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visprep.engines.ort_sessions import cpu_session, model_threads


class Upscaler(ABC):
    """Enlarges an RGB image. Subclasses implement `_upscale`; `upscale` validates and fixes the output size."""

    name: str = ""

    def upscale(self, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        """Return `rgb` ((H, W, 3) uint8) enlarged to exactly (height, width, 3) uint8."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{type(self).__name__}.upscale needs (H, W, 3) uint8 RGB, got "
                             f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
        if width < rgb.shape[1] or height < rgb.shape[0]:
            raise ValueError(f"upscale target {width}x{height} is smaller than the image {rgb.shape[1]}x"
                             f"{rgb.shape[0]}")
        out = self._upscale(np.ascontiguousarray(rgb), width, height)
        if out.shape[:2] != (height, width):
            out = cv2.resize(out, (width, height), interpolation=cv2.INTER_AREA)
        return out

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for run records and step records."""
        return {"name": self.name}

    @abstractmethod
    def _upscale(self, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        """Return an enlarged image, ideally (height, width, 3)."""


class ClassicalUpscaler(Upscaler):
    """Lanczos-4 interpolation (OpenCV)."""

    name = "classical"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "interpolation": "lanczos4"}

    def _upscale(self, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LANCZOS4)


class NetworkUpscaler(Upscaler):
    """A super-resolution network from local weights with a fixed integer `scale` (applied repeatedly when the
    target needs more).

    Args:
        weights: ``.onnx`` (run with onnxruntime) or a TorchScript file (run with torch).
        scale: the network's enlargement factor.
        threads: model intra-op threads (ONNX Runtime session or torch); 0 means the thread plan's (one per
            usable core, `visprep.engines.ort_sessions.model_threads`). ONNX sessions never spin.
    """

    def __init__(self, *, weights: str | Path, scale: int = 4, threads: int = 0) -> None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"super-resolution weights not found: {path}")
        if not isinstance(scale, int) or not 2 <= scale <= 8:
            raise ValueError(f"super-resolution scale must be an int in [2, 8], got {scale!r}")
        self.weights = path
        self.scale = scale
        self.threads = model_threads(threads)
        self._run = self._runner(path)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights": str(self.weights), "scale": self.scale}

    def _runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        raise NotImplementedError

    def _upscale(self, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        passes = max(1, math.ceil(math.log(max(width / rgb.shape[1], height / rgb.shape[0]), self.scale) - 1e-9))
        img = rgb
        for _ in range(passes):
            blob = np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
            out = np.asarray(self._run(blob))
            if out.ndim != 4 or out.shape[:2] != (1, 3):
                raise ValueError(f"{self.name} super-resolution model returned shape {out.shape}; "
                                 "expected (1, 3, H', W')")
            img = np.clip(out[0].transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return img


class OnnxUpscaler(NetworkUpscaler):
    """Super-resolution from an ONNX file (onnxruntime)."""

    name = "onnx"

    def _runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        # ONNX Runtime's defaults (a thread per core, spinning) would fight the decode and OpenCV work between
        # calls; the thread plan decides instead.
        session = cpu_session(path, threads=self.threads)
        name = session.get_inputs()[0].name
        return lambda blob: session.run(None, {name: blob})[0]


class TorchScriptUpscaler(NetworkUpscaler):
    """Super-resolution from a TorchScript file (torch.jit)."""

    name = "torchscript"

    def _runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the torchscript upscaler needs torch: pip install torch") from exc
        if torch.get_num_threads() != self.threads:  # torch's pool is per process: the plan sets it for all
            torch.set_num_threads(self.threads)
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(blob: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(blob)).cpu().numpy()

        return run


UPSCALERS: dict[str, Callable[..., Upscaler]] = {
    "classical": ClassicalUpscaler,
    "onnx": OnnxUpscaler,
    "torchscript": TorchScriptUpscaler,
}
"""Registry of upscalers: name -> factory(**options)."""


def make_upscaler(name: str, **options: Any) -> Upscaler:
    """Build upscaler `name` from `UPSCALERS`; unknown names raise with the valid ones."""
    if name not in UPSCALERS:
        raise ValueError(f"unknown upscaler {name!r}; valid upscalers: {', '.join(sorted(UPSCALERS))}")
    return UPSCALERS[name](**options)
