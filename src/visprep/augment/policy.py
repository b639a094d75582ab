"""Named augmentation policies (spec "Data Augmentation"): parameters, validation, and the geometric refusal.

Two policies, each a full set of parameters any of which can be overridden (and is saved with the run):

* ``full``: random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation: the spec's
  list), Gaussian blur, random erasing; CutMix / MixUp off unless asked for (``cutmix_p`` / ``mixup_p`` > 0; weak
  for retrieval). Hue jitter and random grayscale are available but off (``hue`` / ``grayscale_p`` > 0).
* ``clip-light``: for fine-tuning CLIP-like models, whose pre-training already taught most invariances —
  random resized crop with scale close to 1, flip, light colour jitter (open_clip's ``AugmentationCfg``
  reference: scale (0.9, 1.0)).

Rotation, shear, perspective and other geometric distortions are refused: products have canonical
orientations, and a rotated shoe is a worse training signal, not a better one.

Colour is identity: visprep treats a recoloured product as a different product (the synth stage's colour variants
are grade 3, never a positive of their source), so no default may teach the model that a red and a blue shirt are
the same item. Hue jitter does exactly that, and grayscale removes the colour that tells them apart; both stay
parameters for catalogs where colour does not separate products (docs/augment.md, "Colour").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class GeometricAugmentationError(ValueError):
    """A policy asked for rotation, shear, perspective or another geometric distortion."""


GEOMETRIC_NAMES = frozenset({
    "rotation", "rotate", "degrees", "rotation_degrees", "shear", "perspective", "distortion_scale", "affine",
    "elastic", "thin_plate_spline", "translate",
})
"""Parameter names that ask for a geometric distortion."""

GEOMETRIC_TRANSFORMS = frozenset({
    "RandomRotation", "RandomRotation90", "RandomAffine", "RandomPerspective", "RandomShear",
    "RandomElasticTransform", "RandomThinPlateSpline", "RandomRotation3D", "RandomAffine3D",
    "RandomPerspective3D", "ElasticTransform",
})
"""Transform class names (kornia and torchvision) refused in any pipeline."""

_REFUSAL = ("geometric distortions ({what}) are refused: products have canonical orientations (spec 'Data "
            "Augmentation': do NOT apply rotation or shear to product images)")


@dataclass(frozen=True)
class PolicyParams:
    """Every parameter of an augmentation policy. Probabilities are per image, in 0..1.

    Attributes:
        size: output side of the random resized crop, pixels.
        crop_scale: (min, max) fraction of the image area kept by the crop.
        crop_ratio: (min, max) aspect ratio of the crop.
        flip_p: horizontal flip probability.
        jitter_p: colour jitter probability.
        brightness, contrast, saturation: jitter strength (factor drawn in [1 - s, 1 + s]).
        hue: hue jitter, fraction of the colour wheel in [0, 0.5]; 0 by default (colour tells products apart).
        blur_p: Gaussian blur probability.
        blur_sigma: (min, max) blur sigma, pixels of the output.
        blur_kernel: blur kernel side, odd pixels.
        grayscale_p: random grayscale probability; 0 by default (the spec: "context-dependent").
        erasing_p: random erasing probability.
        erasing_scale: (min, max) erased fraction of the image.
        cutmix_p: CutMix probability per batch (opt-in, needs labels).
        mixup_p: MixUp probability per batch (opt-in, needs labels).
    """

    size: int = 224
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    # Hue and grayscale would make a recoloured product (a different product here) look like its source.
    hue: float = 0.0
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 23
    grayscale_p: float = 0.0
    erasing_p: float = 0.25
    erasing_scale: tuple[float, float] = (0.02, 0.2)
    cutmix_p: float = 0.0
    mixup_p: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"augment size must be an int >= 8, got {self.size!r}")
        for name in ("flip_p", "jitter_p", "blur_p", "grayscale_p", "erasing_p", "cutmix_p", "mixup_p"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("hue", self.hue, 0.0, 0.5)
        _check_pair("crop_scale", self.crop_scale, 0.0, 1.0, strict_low=True)
        _check_pair("crop_ratio", self.crop_ratio, 0.0, 10.0, strict_low=True)
        _check_pair("blur_sigma", self.blur_sigma, 0.0, 50.0, strict_low=True)
        _check_pair("erasing_scale", self.erasing_scale, 0.0, 1.0, strict_low=True)
        if not isinstance(self.blur_kernel, int) or self.blur_kernel < 3 or self.blur_kernel % 2 == 0:
            raise ValueError(f"augment blur_kernel must be an odd int >= 3, got {self.blur_kernel!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters, for run records."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"augment {name} must be a number in [{lo}, {hi}], got {value!r}")


def _check_pair(name: str, value: Any, lo: float, hi: float, *, strict_low: bool) -> None:
    ok = isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if ok:
        a, b = value
        ok = (a > lo if strict_low else a >= lo) and a <= b <= hi
    if not ok:
        raise ValueError(f"augment {name} must be (min, max) with {lo} < min <= max <= {hi}, got {value!r}")


POLICIES: dict[str, PolicyParams] = {
    "full": PolicyParams(),
    "clip-light": PolicyParams(crop_scale=(0.9, 1.0), jitter_p=0.8, brightness=0.1, contrast=0.1, saturation=0.1,
                               hue=0.0, blur_p=0.0, grayscale_p=0.0, erasing_p=0.0),
}
"""Registry of named policies: name -> default parameters."""


def resolve_policy(name: str, overrides: dict[str, Any] | None = None, *, size: int | None = None) -> PolicyParams:
    """The parameters of policy `name` with `overrides` applied and validated.

    Args:
        name: a key of `POLICIES`.
        overrides: parameter name -> value; lists are taken as (min, max) pairs.
        size: output side, overriding the policy's (convenience for the config's ``image_size``).

    Raises:
        GeometricAugmentationError: an override asks for rotation, shear, perspective, ...
        ValueError: unknown policy name or parameter (the message lists the valid ones), or a bad value.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown augmentation policy {name!r}; valid policies: {', '.join(sorted(POLICIES))}")
    overrides = dict(overrides or {})
    geometric = sorted(k for k in overrides if k.lower() in GEOMETRIC_NAMES)
    if geometric:
        raise GeometricAugmentationError(_REFUSAL.format(what=", ".join(geometric)))
    valid = {f.name for f in fields(PolicyParams)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown augmentation parameters {unknown}; valid: {', '.join(sorted(valid))}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if size is not None:
        clean.setdefault("size", size)
    return replace(POLICIES[name], **clean)


def refuse_geometric(transforms: Any) -> None:
    """Raise `GeometricAugmentationError` if a pipeline (kornia or torchvision; any nn.Module or iterable of
    transforms) contains a rotation, shear, perspective or other geometric distortion."""
    seen = []
    stack = [transforms]
    while stack:
        t = stack.pop()
        cls = type(t).__name__
        if cls in GEOMETRIC_TRANSFORMS:
            seen.append(cls)
        if hasattr(t, "children"):
            stack.extend(t.children())
        elif isinstance(t, (list, tuple)):
            stack.extend(t)
        if hasattr(t, "transforms") and isinstance(t.transforms, (list, tuple)):
            stack.extend(t.transforms)
    if seen:
        raise GeometricAugmentationError(_REFUSAL.format(what=", ".join(sorted(set(seen)))))
