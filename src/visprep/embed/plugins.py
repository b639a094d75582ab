"""Plug-in embedders for open_clip, timm and Hugging Face models: local weights only, never a download.

Each needs the path of weights the user already has; a missing backend or file raises `EmbedderUnavailable`
saying what to install or which file is missing. The model id is `<family>:<arch>@<weights file stem>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from visprep.embed.registry import Embedder, EmbedderUnavailable, register_embedder
from visprep.images.preprocess import PreprocessProfile, get_profile, preprocess_float


def _require_file(family: str, weights: str | Path | None, what: str) -> Path:
    if weights is None:
        raise EmbedderUnavailable(f"{family} embedder needs local weights: pass weights=<path to {what}> "
                                  f"(in visprep.toml: [embed] options = {{ weights = \"...\" }}); nothing is downloaded")
    path = Path(weights).expanduser()
    if not path.exists():
        raise EmbedderUnavailable(f"{family} embedder: weights {path} not found (expected {what})")
    return path


def _import(module: str, family: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise EmbedderUnavailable(f"{family} embedder needs `pip install {module.replace('_', '-')}`") from exc


class _TorchImageEmbedder(Embedder):
    modality = "image"
    profile: PreprocessProfile
    _model: Any

    def _forward(self, batch: Any) -> Any:
        return self._model(batch)

    def _embed(self, inputs: list[Any]) -> np.ndarray:
        import torch

        batch = np.stack([preprocess_float(bytes(d), self.profile) for d in inputs])
        with torch.inference_mode():
            return self._forward(torch.from_numpy(batch)).float().numpy()


class OpenClipEmbedder(_TorchImageEmbedder):
    """An open_clip image tower from a local checkpoint. Args: arch (e.g. ViT-B-32), weights (a .pt/.bin file)."""

    def __init__(self, *, arch: str, weights: str | Path | None = None, profile: str = "clip-224") -> None:
        path = _require_file("open_clip", weights, f"an open_clip {arch} checkpoint")
        open_clip = _import("open_clip", "open_clip")
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=str(path))
        self._model = model.eval()
        self.profile = get_profile(profile)
        self.dim = int(model.visual.output_dim)
        self.model_id = f"open_clip:{arch}@{path.stem}"

    def _forward(self, batch: Any) -> Any:
        return self._model.encode_image(batch)


class TimmEmbedder(_TorchImageEmbedder):
    """A timm backbone (classifier removed, pooled features) from a local checkpoint file."""

    def __init__(self, *, arch: str, weights: str | Path | None = None, profile: str = "imagenet-224") -> None:
        path = _require_file("timm", weights, f"a timm {arch} checkpoint (.safetensors/.pth)")
        timm = _import("timm", "timm")
        model = timm.create_model(arch, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)})
        self._model = model.eval()
        self.profile = get_profile(profile)
        self.dim = int(model.num_features)
        self.model_id = f"timm:{arch}@{path.stem}"


class HFImageEmbedder(_TorchImageEmbedder):
    """A Hugging Face vision model from a local folder (config.json + weights); pooled output."""

    def __init__(self, *, weights: str | Path | None = None, profile: str = "imagenet-224") -> None:
        path = _require_file("huggingface", weights, "a local model folder with config.json and weights")
        if not (path / "config.json").is_file():
            raise EmbedderUnavailable(f"huggingface embedder: {path} has no config.json")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformers = _import("transformers", "huggingface")
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        self._model = model.eval()
        self.profile = get_profile(profile)
        cfg = model.config
        self.dim = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "hidden_sizes", [0])[-1])
        self.model_id = f"hf:{path.name}"

    def _forward(self, batch: Any) -> Any:
        out = self._model(pixel_values=batch)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(dim=1)
        return pooled.reshape(pooled.shape[0], -1)


register_embedder("open_clip", OpenClipEmbedder)
register_embedder("timm", TimmEmbedder)
register_embedder("hf", HFImageEmbedder)
