"""The named registry of embedders and the base class that owns validation and bookkeeping.

An embedder turns a batch of inputs (encoded image files, or title strings) into L2-normalised float32 vectors.
Its `model_id` names the architecture *and* the weights' version, so a new checkpoint starts a new feature store.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

Modality = Literal["image", "text"]


class EmbedderUnavailable(ImportError):
    """An embedder's backend or its local weights are missing; the message says what to install or provide."""


class Embedder(abc.ABC):
    """Base of every embedder: validates the batch and the output, L2-normalises; subclasses write `_embed`.

    Attributes:
        model_id: unique id including the weights' version, e.g. `efficientnet-lite0@imagenet-57934424`;
            it names the feature store folder.
        dim: output dimension.
        modality: "image" (inputs are encoded image files, bytes) or "text" (inputs are str).
    """

    model_id: str
    dim: int
    modality: ClassVar[Modality] = "image"

    def embed(self, inputs: Sequence[bytes] | Sequence[str]) -> np.ndarray:
        """Embed a batch.

        Args:
            inputs: N encoded images (bytes) for an image embedder, N strings for a text embedder.

        Returns:
            (N, dim) float32, each row of unit L2 norm (a zero row stays zero).

        Raises:
            TypeError: an input of the wrong type, naming its index.
            visprep.images.decode.ImageDecodeError: an image cannot be decoded (use `embed_each` to skip-and-count).
        """
        self._check_inputs(inputs)
        if len(inputs) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = np.asarray(self._embed(list(inputs)), dtype=np.float32)
        if out.shape != (len(inputs), self.dim):
            raise RuntimeError(f"{self.model_id}: _embed returned shape {out.shape}, expected {(len(inputs), self.dim)}")
        return l2_normalize(out)

    def _check_inputs(self, inputs: Sequence[Any]) -> None:
        want = bytes if self.modality == "image" else str
        for i, x in enumerate(inputs):
            if not isinstance(x, (bytes, bytearray, memoryview) if want is bytes else str):
                raise TypeError(f"{self.model_id}: input {i} must be {want.__name__}, got {type(x).__name__}")

    def embed_partial(self, inputs: Sequence[bytes] | Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Embed a batch, skipping inputs that fail to decode.

        Returns:
            (vectors (M, dim) float32 of the good inputs in order, ok (N,) bool, errors: one "index: reason" a bad input).
        """
        from visprep.images.decode import ImageDecodeError

        try:
            return self.embed(inputs), np.ones(len(inputs), bool), []
        except (ImageDecodeError, OSError):
            pass  # find the bad ones one by one; the rest still embed
        ok = np.zeros(len(inputs), bool)
        rows, errors = [], []
        for i, x in enumerate(inputs):
            try:
                rows.append(self.embed([x]))
                ok[i] = True
            except (ImageDecodeError, OSError) as exc:
                errors.append(f"{i}: {type(exc).__name__}: {exc}")
        vecs = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
        return vecs, ok, errors

    @abc.abstractmethod
    def _embed(self, inputs: list[Any]) -> np.ndarray:
        """Return (N, dim) raw vectors for a validated, non-empty batch."""


@dataclass
class Prepared:
    """A batch made ready for the model by `StagedEmbedder.prepare`: the model input of the good inputs, which
    inputs were good, and one "index: reason" per bad one."""

    batch: np.ndarray
    ok: np.ndarray
    errors: list[str]


class StagedEmbedder(Embedder):
    """An embedder in two steps, so decoding the next batch can overlap the model on this one (the embed stage
    runs `prepare` in a read-ahead thread): `_prepare_one` turns one input into a model-ready array (raising
    `ImageDecodeError`/`OSError` for a bad one), `_forward` runs the model on a stacked batch."""

    @abc.abstractmethod
    def _prepare_one(self, x: Any) -> np.ndarray:
        """Return the model-ready array of one validated input."""

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Return (N, dim) raw vectors for a stacked, non-empty batch of `_prepare_one` outputs."""

    def _embed(self, inputs: list[Any]) -> np.ndarray:
        return self._forward(np.stack([self._prepare_one(x) for x in inputs]))

    def prepare(self, inputs: Sequence[bytes] | Sequence[str]) -> Prepared:
        """Decode and preprocess a batch, skipping (and naming) the inputs that fail."""
        from visprep.images.decode import ImageDecodeError

        rows, errors = [], []
        ok = np.zeros(len(inputs), bool)
        for i, x in enumerate(inputs):
            try:
                rows.append(self._prepare_one(x))
                ok[i] = True
            except (ImageDecodeError, OSError) as exc:
                errors.append(f"{i}: {type(exc).__name__}: {exc}")
        return Prepared(np.stack(rows) if rows else np.zeros((0,), np.float32), ok, errors)

    def forward(self, prepared: Prepared) -> np.ndarray:
        """Return the unit vectors (M, dim) of a prepared batch's good inputs."""
        if not prepared.ok.any():
            return np.zeros((0, self.dim), np.float32)
        out = np.asarray(self._forward(prepared.batch), dtype=np.float32)
        if out.shape != (int(prepared.ok.sum()), self.dim):
            raise RuntimeError(f"{self.model_id}: _forward returned shape {out.shape}, expected "
                               f"{(int(prepared.ok.sum()), self.dim)}")
        return l2_normalize(out)

    def embed_partial(self, inputs: Sequence[bytes] | Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Embed a batch, skipping inputs that fail to decode (each decoded once)."""
        self._check_inputs(inputs)
        p = self.prepare(inputs)
        return self.forward(p), p.ok, p.errors


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Return rows of `x` (N, D) scaled to unit L2 norm, float32; all-zero rows stay zero."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


EmbedderFactory = Callable[..., Embedder]
_REGISTRY: dict[str, EmbedderFactory] = {}


def register_embedder(name: str, factory: EmbedderFactory, *, replace: bool = False) -> None:
    """Register `factory` (called with keyword options, returns an `Embedder`) under `name`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"embedder name must be a non-empty str, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"embedder {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = factory


def unregister_embedder(name: str) -> None:
    """Remove `name` from the registry (for tests and plug-in reloads)."""
    _REGISTRY.pop(name, None)


def embedder_names() -> list[str]:
    """Return the registered embedder names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_embedder(name: str, **options: Any) -> Embedder:
    """Build the registered embedder `name` with `options`.

    Raises:
        ValueError: unknown name (the message lists the valid names).
        EmbedderUnavailable: its backend or weights are missing (the message says what to install or provide).
    """
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown embedder {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None
    return factory(**options)


def registered_factory(name: str) -> EmbedderFactory | None:
    """The factory registered under `name` now (None when there is none): what tells a cached embedder of that name
    from one a re-registration replaced."""
    _load_builtins()
    return _REGISTRY.get(name)


def accepts_option(name: str, option: str) -> bool:
    """Tell whether the registered embedder `name` takes keyword option `option` (e.g. `backend`)."""
    import inspect

    _load_builtins()
    factory = _REGISTRY.get(name)
    if factory is None:
        return False
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return option in params  # not through **options: a plug-in would pass it on to a library that refuses it


def model_id_of(name: str, **options: Any) -> str:
    """Return the model id `get_embedder(name, **options)` would have, cheaply when the factory can tell it
    without loading weights (a `model_id_for(**options)` attribute), else by building the embedder."""
    _load_builtins()
    factory = _REGISTRY.get(name)
    if factory is not None and callable(getattr(factory, "model_id_for", None)):
        return factory.model_id_for(**options)
    return get_embedder(name, **options).model_id


_BUILTINS_LOADED = False


def _load_builtins() -> None:
    # Import the built-in modules lazily: each registers its names, none imports torch until an embedder is built.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from visprep.embed import efficientnet, minilm, plugins  # noqa: F401
