"""View generators: the plug-in point of the synthetic stage. ``classical`` uses the OpenCV operations of
`visprep.synthetic.views`; a diffusion model (or any other generator) is added with `register_generator`.

There is no offline diffusion generator: generative models need weights this package does not ship. A plug-in
subclasses `ViewGenerator`, writes `_generate`, and returns views whose recipes say which model and prompt made
them; the stage records them like any other synthetic view.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visprep.synthetic.products import color_name
from visprep.synthetic.views import (
    NEW_PRODUCT_OPS,
    SAME_PRODUCT_OPS,
    foreground_mask,
    recolor,
    reframe,
    replace_background,
)


@dataclass(frozen=True)
class GeneratedView:
    """One generated image and how it relates to its source product.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        recipe: JSON-able ``{"op": ..., **parameters}``.
        same_product: True when the image still shows the source SKU (grade 4), False for a different product
            of the same style (grade 3), e.g. a colour variant.
        color: the colour name of a new product (a colour variant); the stage names it from the image when None.
    """

    image: np.ndarray
    recipe: dict[str, Any]
    same_product: bool
    color: str | None = None


class ViewGenerator(ABC):
    """Makes synthetic views of one product image. Subclasses write `_generate`; `generate` validates."""

    name: str = ""

    def generate(self, rgb: np.ndarray, *, rng: np.random.Generator) -> list[GeneratedView]:
        """Views of (H, W, 3) uint8 RGB, drawing randomness from `rng` only."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{type(self).__name__}.generate needs (H, W, 3) uint8 RGB, got shape "
                             f"{getattr(rgb, 'shape', None)}")
        views = self._generate(rgb, rng=rng)
        for v in views:
            if "op" not in v.recipe:
                raise ValueError(f"generator {self.name!r} returned a recipe without 'op': {v.recipe}")
        return views

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for run records."""
        return {"name": self.name}

    @abstractmethod
    def _generate(self, rgb: np.ndarray, *, rng: np.random.Generator) -> list[GeneratedView]:
        """Return the views."""


class ClassicalViewGenerator(ViewGenerator):
    """Background replacement, framing changes (same SKU) and hue-shifted colour variants (new products).

    Args:
        backgrounds: kinds of `visprep.synthetic.views.BACKGROUND_KINDS`, one view each.
        reframe_scales: zoom factors, one view each.
        hue_shifts_deg: hue rotations, one colour variant each (skipped for an achromatic product, which a hue
            shift cannot change).
    """

    name = "classical"

    def __init__(self, *, backgrounds: Sequence[str] = ("solid", "gradient", "texture"),
                 reframe_scales: Sequence[float] = (0.8, 1.25), hue_shifts_deg: Sequence[float] = (120.0, 240.0)
                 ) -> None:
        from visprep.synthetic.views import BACKGROUND_KINDS

        unknown = set(backgrounds) - set(BACKGROUND_KINDS)
        if unknown:
            raise ValueError(f"unknown background kinds {sorted(unknown)}; valid: {sorted(BACKGROUND_KINDS)}")
        self.backgrounds = tuple(backgrounds)
        self.reframe_scales = tuple(float(s) for s in reframe_scales)
        self.hue_shifts_deg = tuple(float(h) for h in hue_shifts_deg)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backgrounds": list(self.backgrounds), "reframe_scales": list(self.reframe_scales),
                "hue_shifts_deg": list(self.hue_shifts_deg)}

    def _generate(self, rgb: np.ndarray, *, rng: np.random.Generator) -> list[GeneratedView]:
        out: list[GeneratedView] = []
        mask = foreground_mask(rgb)
        if mask.any():
            for kind in self.backgrounds:
                v = replace_background(rgb, mask, kind=kind, rng=rng)
                out.append(GeneratedView(v.image, v.recipe, v.recipe["op"] in SAME_PRODUCT_OPS))
        for scale in self.reframe_scales:
            v = reframe(rgb, scale=scale, pad_color=(255, 255, 255))
            out.append(GeneratedView(v.image, v.recipe, True))
        if mask.any():
            for shift in self.hue_shifts_deg:
                try:
                    v = recolor(rgb, mask, hue_shift_deg=shift)
                except ValueError:  # achromatic product: a hue shift would not change it
                    break
                out.append(GeneratedView(v.image, v.recipe, v.recipe["op"] not in NEW_PRODUCT_OPS,
                                         color=color_name(v.image, mask)))
        return out


GENERATORS: dict[str, Callable[..., ViewGenerator]] = {"classical": ClassicalViewGenerator}
"""Registry of view generators: name -> factory(**options). Diffusion generators register here."""


def register_generator(name: str, factory: Callable[..., ViewGenerator]) -> None:
    """Add a generator (e.g. a diffusion model from local weights) under `name`."""
    if not name or name in GENERATORS:
        raise ValueError(f"generator name {name!r} is empty or taken; taken: {', '.join(sorted(GENERATORS))}")
    GENERATORS[name] = factory


def make_generator(name: str, **options: Any) -> ViewGenerator:
    """Build generator `name`; unknown names raise with the valid ones (and say diffusion is a plug-in)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown view generator {name!r}; valid: {', '.join(sorted(GENERATORS))} (diffusion "
                         "models are plug-ins: visprep.synthetic.generators.register_generator)")
    return GENERATORS[name](**options)
