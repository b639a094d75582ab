"""Synthetic product views: pure numpy/OpenCV functions over HWC uint8 RGB images.

Every image-producing function returns a `SyntheticView`: the new image and a *recipe*, a JSON-serialisable
dict ``{"op": <name>, **parameters}`` holding every parameter actually used (including values drawn from the
RNG), so each synthetic image can be stored with ``source="synthetic"`` and its recipe, and re-created from
its input.

Which label a view may carry:

* `replace_background`, `reframe`, `upscale` keep the product: the result is another view of the **same SKU**
  (grade 4, "exact", when paired with the original).
* `recolor` changes the product: the result shows a **different product** of the same style (grade 3, "same
  style, different colour"). Never attach a recoloured image to the SKU it came from.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

RGBImage = np.ndarray
"""uint8 array, shape (H, W, 3), RGB channel order."""
Mask = np.ndarray
"""bool array, shape (H, W); True on the product (foreground)."""
Recipe = dict[str, Any]
"""JSON-serialisable ``{"op": name, **parameters}``."""

SAME_PRODUCT_OPS = frozenset({"replace_background", "reframe", "upscale"})
"""Operations whose output is still a view of the input's product (SKU)."""
NEW_PRODUCT_OPS = frozenset({"recolor"})
"""Operations whose output shows a different product of the same style (never the same SKU)."""


class SyntheticView(NamedTuple):
    """An image made by one synthetic operation, with the recipe that made it."""

    image: RGBImage
    recipe: Recipe


# ------------------------------------------------------------------------------------------ validation


def _check_rgb(img: Any, *, name: str = "img") -> RGBImage:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB), got {img.shape}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"{name} is too small: {img.shape}")
    return img


def _check_mask(mask: Any, shape: tuple[int, ...]) -> Mask:
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.shape != shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape[:2]}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must have dtype bool, got {mask.dtype}")
    return mask


def _check_color(color: Any, *, name: str) -> tuple[int, int, int]:
    try:
        values = tuple(color)
    except TypeError:
        raise ValueError(f"{name} must be 3 integers in 0..255, got {color!r}") from None
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    ):
        raise ValueError(f"{name} must be 3 integers in 0..255, got {color!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _check_number(value: Any, *, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


# ------------------------------------------------------------------------------------------ foreground


def foreground_mask(img: RGBImage, *, min_contrast: int = 12, max_hole_fraction: float = 0.02) -> Mask:
    """Segment the product from a plain background (dark, as in Fashion-MNIST, or a light studio backdrop).

    The background colour is the per-channel median of the one-pixel image border. Each pixel's contrast is
    its largest per-channel absolute difference from that colour. Pixels above Otsu's threshold on the
    contrast map are sure product; the mask is every region of pixels above ``min_contrast`` that holds such a
    sure pixel (hysteresis), so dark parts of a product joined to its bright parts are kept while faint
    isolated blotches are not. Holes smaller than ``max_hole_fraction`` of the image (creases, dark print) are
    then filled; larger ones (between sandal straps, inside a bag handle) stay background. Because contrast
    against a grey backdrop depends only on a pixel's value and chroma, not its hue, the mask is unchanged by
    a `recolor` hue shift. A soft shadow touching the product may be included.

    Args:
        img: (H, W, 3) uint8 RGB.
        min_contrast: pixels closer than this (0..255) to the background colour are never foreground, which
            keeps JPEG noise on an empty backdrop out of the mask.
        max_hole_fraction: largest enclosed background region, as a fraction of H*W, that is filled.

    Returns:
        (H, W) bool mask, True on the product. All False for an image with no contrast at all.
    """
    img = _check_rgb(img)
    min_contrast = int(_check_number(min_contrast, name="min_contrast", lo=0, hi=254))
    max_hole_fraction = _check_number(max_hole_fraction, name="max_hole_fraction", lo=0.0, hi=1.0)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    diff = cv2.absdiff(np.ascontiguousarray(img), (*(float(v) for v in background), 0.0))
    contrast = cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])
    if int(contrast.max()) <= min_contrast:
        return np.zeros((h, w), dtype=bool)
    otsu, _ = cv2.threshold(contrast, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    weak = (contrast > min_contrast).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(weak, connectivity=8)
    seeded = np.zeros(n, dtype=bool)
    seeded[np.unique(labels[contrast > max(otsu, min_contrast)])] = True
    seeded[0] = False
    area = stats[:, cv2.CC_STAT_AREA]
    big = area >= 0.002 * h * w  # drop specks, but never the largest seeded region
    if seeded.any():
        big[np.flatnonzero(seeded)[np.argmax(area[seeded])]] = True
    fg = (seeded & big)[labels].astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    # Fill small holes: background components not touching the image border.
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - fg, connectivity=4)
    if n > 1:
        x, y, bw, bh, area = (stats[:, i] for i in range(5))
        touches_border = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
        fill = ~touches_border & (area <= max_hole_fraction * h * w)
        fill[0] = False  # label 0 is the foreground itself
        if fill.any():
            fg[fill[labels]] = 1
    return fg.astype(bool)


# ------------------------------------------------------------------------------------------ background


def _solid_background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, Recipe]:
    color = [int(v) for v in rng.integers(150, 256, size=3)]
    return np.broadcast_to(np.array(color, np.uint8), (h, w, 3)), {"color": color}


def _gradient_background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, Recipe]:
    start = [int(v) for v in rng.integers(140, 256, size=3)]
    end = [int(v) for v in rng.integers(90, 256, size=3)]
    angle = int(rng.integers(0, 360))
    return _gradient(h, w, start, end, angle), {"start_color": start, "end_color": end, "angle_deg": angle}


def _gradient(h: int, w: int, start: Sequence[int], end: Sequence[int], angle_deg: float) -> np.ndarray:
    theta = np.deg2rad(angle_deg)
    cos, sin = float(np.cos(theta)), float(np.sin(theta))
    # The ramp is linear in (x, y), so bilinear upsampling of a coarse grid reproduces it: compute it small.
    gh, gw = min(h, 17), min(w, 17)
    xs = (np.linspace(0, w - 1, gw, dtype=np.float32) - (w - 1) / 2) * cos
    ys = (np.linspace(0, h - 1, gh, dtype=np.float32) - (h - 1) / 2) * sin
    span = abs(cos) * (w - 1) / 2 + abs(sin) * (h - 1) / 2 or 1.0
    t = (ys[:, None] + xs[None, :]) * (0.5 / span) + 0.5  # 0 at the start corner, 1 at the end corner
    start_f = np.asarray(start, np.float32)
    coarse = start_f + (np.asarray(end, np.float32) - start_f) * t[..., None]
    return cv2.convertScaleAbs(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR))


def _texture_background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, Recipe]:
    color = [int(v) for v in rng.integers(120, 240, size=3)]
    seed = int(rng.integers(0, 2**31 - 1))
    grain = float(np.round(rng.uniform(1.5, 6.0), 3))
    amplitude = int(rng.integers(12, 40))
    return _texture(h, w, color, seed, grain, amplitude), {
        "color": color, "seed": seed, "grain_px": grain, "amplitude": amplitude,
    }


def _texture(h: int, w: int, color: Sequence[int], seed: int, grain: float, amplitude: int) -> np.ndarray:
    """Fabric/paper-like texture: smooth luminance noise with features ~``grain`` px plus a faint weave."""
    gh, gw = max(2, round(h / grain)), max(2, round(w / grain))
    noise = np.random.default_rng(seed).standard_normal((gh, gw)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    noise /= float(noise.std()) or 1.0
    weave = np.sin(np.arange(w, dtype=np.float32) * (np.pi / max(grain, 1.0)))[None, :] * 0.35
    lum = (noise + weave) * (amplitude / 2.0)
    out = np.asarray(color, np.float32)[None, None, :] + lum[..., None]
    return cv2.convertScaleAbs(out)  # rounds and saturates to uint8


BACKGROUND_KINDS: dict[str, Callable[[int, int, np.random.Generator], tuple[np.ndarray, Recipe]]] = {
    "solid": _solid_background,
    "gradient": _gradient_background,
    "texture": _texture_background,
}
"""Registry of background generators: name -> fn(h, w, rng) -> (background, parameters)."""


def replace_background(
    img: RGBImage, mask: Mask, *, kind: str, rng: np.random.Generator, feather_px: float = 1.0
) -> SyntheticView:
    """Composite the product (``mask``) onto a new background; the result is another view of the same product.

    Args:
        img: (H, W, 3) uint8 RGB.
        mask: (H, W) bool foreground mask, e.g. from `foreground_mask`.
        kind: one of `BACKGROUND_KINDS` ("solid", "gradient", "texture"); colours etc. are drawn from ``rng``
            and recorded in the recipe.
        rng: source of all randomness.
        feather_px: Gaussian sigma, in pixels, softening the mask edge (0 = hard edge).

    Returns:
        `SyntheticView` with a (H, W, 3) uint8 image and recipe ``{"op": "replace_background", "kind": ...,
        ...}``.

    Raises:
        ValueError: unknown ``kind``, bad shapes or an empty mask.
    """
    img = _check_rgb(img)
    mask = _check_mask(mask, img.shape)
    rng = _check_rng(rng)
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {kind!r}; valid kinds: {sorted(BACKGROUND_KINDS)}")
    feather_px = _check_number(feather_px, name="feather_px", lo=0.0, hi=50.0)
    if not mask.any():
        raise ValueError("mask is empty: there is no foreground to put on a new background")
    h, w = img.shape[:2]
    background, params = BACKGROUND_KINDS[kind](h, w, rng)
    alpha = mask.astype(np.float32)
    if feather_px > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=feather_px)
    out = cv2.blendLinear(np.ascontiguousarray(img), np.ascontiguousarray(background), alpha, 1.0 - alpha)
    recipe = {"op": "replace_background", "kind": kind, **params, "feather_px": feather_px}
    return SyntheticView(out, recipe)


# ------------------------------------------------------------------------------------------ colour


def recolor(
    img: RGBImage,
    mask: Mask,
    *,
    hue_shift_deg: float | None = None,
    target_rgb: Sequence[int] | None = None,
) -> SyntheticView:
    """Make a colour variant of the product: the same style in another colour, i.e. a DIFFERENT product.

    Pass exactly one of ``hue_shift_deg`` (rotate the hue of a coloured product, keeping saturation and value)
    or ``target_rgb`` (give the product that colour: hue and saturation are set from it, and value is scaled
    so the product's mean matches it, keeping the shading). Pixels outside ``mask`` are untouched.

    The output belongs to another SKU of the same family (grade 3, "same style, different colour"): never
    label it as a view of the input's SKU.

    Args:
        img: (H, W, 3) uint8 RGB.
        mask: (H, W) bool foreground mask.
        hue_shift_deg: hue rotation in degrees, in [-360, 360].
        target_rgb: 3 integers in 0..255.

    Returns:
        `SyntheticView`; recipe ``{"op": "recolor", "hue_shift_deg": ..., "target_rgb": ...}`` (the unused one
        None).

    Raises:
        ValueError: not exactly one of the two options, bad values, an empty mask, or a hue shift asked of an
            achromatic (grey) product, which it could not change.
    """
    img = _check_rgb(img)
    mask = _check_mask(mask, img.shape)
    if (hue_shift_deg is None) == (target_rgb is None):
        raise ValueError("recolor needs exactly one of hue_shift_deg or target_rgb")
    if not mask.any():
        raise ValueError("mask is empty: there is no foreground to recolor")
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)  # H, S, V all in 0..255
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    if hue_shift_deg is not None:
        hue_shift_deg = _check_number(hue_shift_deg, name="hue_shift_deg", lo=-360.0, hi=360.0)
        mean_s = float(s[mask].mean())
        if mean_s < 20:
            raise ValueError(
                f"hue_shift_deg cannot recolor an achromatic product (mean saturation {mean_s:.1f}/255); "
                "use target_rgb"
            )
        h_new = np.mod(h + hue_shift_deg * 256.0 / 360.0, 256.0)
        s_new, v_new = s, v
        recipe = {"op": "recolor", "hue_shift_deg": hue_shift_deg, "target_rgb": None}
    else:
        target = _check_color(target_rgb, name="target_rgb")
        th, ts, tv = colorsys.rgb_to_hsv(*(c / 255.0 for c in target))
        h_new = np.full_like(h, th * 256.0 % 256.0)
        s_new = np.full_like(s, ts * 255.0)
        mean_v = float(v[mask].mean()) or 1.0
        v_new = np.clip(v * (tv * 255.0 / mean_v), 0, 255)
        recipe = {"op": "recolor", "hue_shift_deg": None, "target_rgb": list(target)}
    out_hsv = np.stack([h_new, s_new, v_new], axis=2)
    out_hsv = np.clip(out_hsv + 0.5, 0, 255).astype(np.uint8)
    recoloured = cv2.cvtColor(out_hsv, cv2.COLOR_HSV2RGB_FULL)
    out = np.where(mask[..., None], recoloured, img)
    return SyntheticView(out, recipe)


# ------------------------------------------------------------------------------------------ geometry


def reframe(
    img: RGBImage,
    *,
    scale: float = 1.0,
    dx: float = 0.0,
    dy: float = 0.0,
    pad_color: Sequence[int] = (255, 255, 255),
) -> SyntheticView:
    """Change the framing: zoom about the centre by ``scale``, then shift by (dx, dy); the output keeps the
    size.

    A point at pixel (x, y) of the input lands at ``(cx + scale * (x - cx) + dx * W, cy + scale * (y - cy) +
    dy * H)`` with ``(cx, cy) = ((W - 1) / 2, (H - 1) / 2)``. ``scale > 1`` crops in, ``scale < 1`` shows the
    product smaller, with ``pad_color`` around it; the uncovered border after a shift is also ``pad_color``.

    Args:
        img: (H, W, 3) uint8 RGB.
        scale: zoom factor in [0.25, 4].
        dx: horizontal shift as a fraction of the width, in [-0.5, 0.5] (positive = right).
        dy: vertical shift as a fraction of the height, in [-0.5, 0.5] (positive = down).
        pad_color: RGB fill for uncovered pixels, 3 integers in 0..255.

    Returns:
        `SyntheticView` with a (H, W, 3) uint8 image; recipe ``{"op": "reframe", "scale", "dx", "dy",
        "pad_color"}``.
    """
    img = _check_rgb(img)
    scale = _check_number(scale, name="scale", lo=0.25, hi=4.0)
    dx = _check_number(dx, name="dx", lo=-0.5, hi=0.5)
    dy = _check_number(dy, name="dy", lo=-0.5, hi=0.5)
    pad = _check_color(pad_color, name="pad_color")
    h, w = img.shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    matrix = np.array(
        [[scale, 0.0, (1 - scale) * cx + dx * w], [0.0, scale, (1 - scale) * cy + dy * h]], dtype=np.float64
    )
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(img, matrix, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=pad)
    recipe = {"op": "reframe", "scale": scale, "dx": dx, "dy": dy, "pad_color": list(pad)}
    return SyntheticView(out, recipe)


INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
"""Registry of upscaling interpolations: name -> OpenCV flag."""


def upscale(img28: np.ndarray, size: int, *, interpolation: str = "cubic") -> SyntheticView:
    """Upscale a tiny source image (e.g. a 28x28 Fashion-MNIST photo) so its longer side is ``size`` pixels.

    Args:
        img28: uint8, (H, W) grayscale or (H, W, 3) RGB; grayscale is replicated into three channels.
        size: output length of the longer side, in pixels, in [max(H, W), 4096]; aspect ratio is kept.
        interpolation: one of `INTERPOLATIONS`.

    Returns:
        `SyntheticView` with a uint8 (size, size * W // H or so, 3) RGB image; recipe
        ``{"op": "upscale", "size": ..., "interpolation": ...}``.
    """
    if not isinstance(img28, np.ndarray):
        raise TypeError(f"img28 must be a numpy array, got {type(img28).__name__}")
    if img28.dtype != np.uint8:
        raise ValueError(f"img28 must have dtype uint8, got {img28.dtype}")
    if img28.ndim == 2:
        img28 = np.repeat(img28[..., None], 3, axis=2)
    img28 = _check_rgb(img28, name="img28")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {sorted(INTERPOLATIONS)}")
    h, w = img28.shape[:2]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not max(h, w) <= size <= 4096:
        raise ValueError(f"size must be an integer in [{max(h, w)}, 4096] (no downscaling), got {size!r}")
    size = int(size)
    factor = size / max(h, w)
    out_w, out_h = max(1, round(w * factor)), max(1, round(h * factor))
    out = cv2.resize(img28, (out_w, out_h), interpolation=INTERPOLATIONS[interpolation])
    return SyntheticView(out, {"op": "upscale", "size": size, "interpolation": interpolation})
