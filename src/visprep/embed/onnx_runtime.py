"""ONNX Runtime inference for torch embedders: export once per model id, cache the file, run it with set threads.

On CPU, ONNX Runtime runs EfficientNet-Lite0 several times faster than eager torch (fused convolutions, no per-op
dispatch; measured 141-189 against 23-43 images/s on 2 cores) with the same outputs (max abs difference
~1e-5). The export is keyed by the model id (which names the weights' version), the input size, the ONNX opset and
the torch version that traced it, and written atomically, so concurrent processes share one file and a new
checkpoint or exporter gets a new one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
# Bump when the exported graph changes for the same weights (wrapper module, pooling, input or output names).
EXPORT_VERSION = 1


def cache_dir() -> Path:
    """Where exported models live: `$VISPREP_CACHE/onnx`, else `$XDG_CACHE_HOME/visprep/onnx` (`~/.cache`)."""
    root = os.environ.get("VISPREP_CACHE")
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "visprep" / "onnx"


def weights_fingerprint(files: Sequence[Path]) -> str:
    """A cheap fingerprint of weight files: resolved path, size and modification time of each (a changed or
    replaced file gets a new one without hashing hundreds of MB at every load)."""
    parts = []
    for f in files:
        st = Path(f).stat()
        parts.append(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def export_key_named(model_id: str, *, inputs: Sequence[str], outputs: Sequence[str], fingerprint: str = "") -> str:
    """The cache file stem of `model_id` exported with these input and output names by this torch and exporter."""
    import torch

    raw = (f"{model_id}|{','.join(inputs)}->{','.join(outputs)}|{fingerprint}|opset{OPSET}|v{EXPORT_VERSION}|"
           f"torch{torch.__version__}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[:80]
    return f"{safe}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def export_cached_named(model_id: str, build: Callable[[], Any], example: Mapping[str, Any], *,
                        dynamic_axes: Mapping[str, Mapping[int, str]], outputs: Sequence[str],
                        fingerprint: str = "") -> Path:
    """Return the ONNX file of `build()` (a torch module called with `example`'s tensors as positional
    arguments, in order), exporting it on first use.

    Args:
        model_id: the model's id (names its weights' version).
        build: returns the torch module; called only when the file is missing (it may load weights).
        example: input name -> example tensor, in the module's argument order. Use a batch and sequence length
            above 1 so the tracer cannot specialise on them.
        dynamic_axes: input or output name -> {axis: symbolic name}, e.g. {"input_ids": {0: "batch", 1: "seq"}}.
        outputs: output names.
        fingerprint: extra key material, e.g. `weights_fingerprint` of the files `build` loads.
    """
    import torch

    names = list(example)
    path = cache_dir() / f"{export_key_named(model_id, inputs=names, outputs=outputs, fingerprint=fingerprint)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    module = build().eval()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about traced shape arithmetic it cannot prove constant: noise here.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example[n] for n in names), tmp, input_names=names,
                              output_names=list(outputs), dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                              opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)  # atomic: a concurrent exporter's identical file may win, either is whole
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_key(model_id: str, size: int) -> str:
    """The cache file stem of image model `model_id` exported for `size` x `size` inputs."""
    return export_key_named(model_id, inputs=["pixels"], outputs=["features"], fingerprint=f"{size}px")


def export_cached(model_id: str, size: int, build: Callable[[], Any], *, channels: int = 3) -> Path:
    """Return the ONNX file of `build()` (a torch module mapping (N, C, size, size) float32 to (N, D)), exporting
    it on first use. `build` is called only when the file is missing (it may load weights)."""
    import torch

    return export_cached_named(model_id, build, {"pixels": torch.zeros(2, channels, size, size)},
                               dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                               outputs=["features"], fingerprint=f"{size}px")


class OrtModel:
    """An ONNX Runtime CPU session over an exported embedder: `run((N, C, H, W) float32) -> (N, D) float32`.

    Args:
        path: the .onnx file.
        threads: intra-op threads (the process's model threads, from `visprep.engines.threads`).
        spin: let idle intra-op threads spin; off when another thread (the decoder) shares the cores.
    """

    def __init__(self, path: Path, *, threads: int, spin: bool = False) -> None:
        from visprep.engines.ort_sessions import cpu_session

        self.path = path
        self._session = cpu_session(path, threads=threads, spin=spin)
        self.threads = self._session.get_session_options().intra_op_num_threads
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Return the model's outputs for a float32 NCHW batch."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0]
