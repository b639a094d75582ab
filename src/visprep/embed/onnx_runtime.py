"""ONNX Runtime inference for torch embedders: export once per model id, cache the file, run it with set threads.

On CPU, ONNX Runtime runs EfficientNet-Lite0 several times faster than eager torch (fused convolutions, no per-op
dispatch; issue 19 measured 141-189 against 23-43 images/s on 2 cores) with the same outputs (max abs difference
~1e-5). The export is keyed by the model id (which names the weights' version), the input size, the ONNX opset and
the torch version that traced it, and written atomically, so concurrent processes share one file and a new
checkpoint or exporter gets a new one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
# Bump when the exported graph changes for the same weights (wrapper module, input or output names).
EXPORT_VERSION = 1


def cache_dir() -> Path:
    """Where exported models live: `$VISPREP_CACHE/onnx`, else `$XDG_CACHE_HOME/visprep/onnx` (`~/.cache`)."""
    root = os.environ.get("VISPREP_CACHE")
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "visprep" / "onnx"


def export_key(model_id: str, size: int) -> str:
    """The cache file stem of `model_id` exported for `size` x `size` inputs by this torch and exporter."""
    import torch

    raw = f"{model_id}|{size}|opset{OPSET}|v{EXPORT_VERSION}|torch{torch.__version__}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:80]
    return f"{safe}-{size}px-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def export_cached(model_id: str, size: int, build: Callable[[], Any], *, channels: int = 3) -> Path:
    """Return the ONNX file of `build()` (a torch module mapping (N, C, size, size) float32 to (N, D)), exporting
    it on first use. `build` is called only when the file is missing (it may load weights)."""
    import torch

    path = cache_dir() / f"{export_key(model_id, size)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    module = build().eval()
    example = torch.zeros(2, channels, size, size)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about every slice it cannot constant-fold: noise, not a problem.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), tmp, input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)  # atomic: a concurrent exporter's identical file may win, either is whole
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OrtModel:
    """An ONNX Runtime CPU session over an exported embedder: `run((N, C, H, W) float32) -> (N, D) float32`.

    Args:
        path: the .onnx file.
        threads: intra-op threads (the process's model threads, from `visprep.engines.threads`).
        spin: let idle intra-op threads spin; off when another thread (the decoder) shares the cores.
    """

    def __init__(self, path: Path, *, threads: int, spin: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers burn the cores the decode thread needs (issue 19 saw more system than user time).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.path = path
        self.threads = opts.intra_op_num_threads
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Return the model's outputs for a float32 NCHW batch."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0]
