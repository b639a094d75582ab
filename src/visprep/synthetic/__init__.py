"""Synthetic data (spec "Source 4"): new product views and colour variants made from existing images.

Every synthetic image carries ``source="synthetic"`` and the JSON recipe that made it.
"""

from visprep.synthetic.views import (
    BACKGROUND_KINDS,
    INTERPOLATIONS,
    NEW_PRODUCT_OPS,
    SAME_PRODUCT_OPS,
    SyntheticView,
    foreground_mask,
    recolor,
    reframe,
    replace_background,
    upscale,
)

__all__ = [
    "BACKGROUND_KINDS",
    "INTERPOLATIONS",
    "NEW_PRODUCT_OPS",
    "SAME_PRODUCT_OPS",
    "SyntheticView",
    "foreground_mask",
    "recolor",
    "reframe",
    "replace_background",
    "upscale",
]
