"""Tests for visprep.synthetic.views on real Fashion-MNIST images from the bundled subset."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from visprep.demo import load_fashion_mnist_subset
from visprep.synthetic import (
    BACKGROUND_KINDS,
    NEW_PRODUCT_OPS,
    SAME_PRODUCT_OPS,
    foreground_mask,
    recolor,
    reframe,
    replace_background,
    upscale,
)


@pytest.fixture(scope="module")
def subset():
    return load_fashion_mnist_subset()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def _garment(subset, label: int, k: int = 0) -> np.ndarray:
    return subset.images[np.flatnonzero(subset.labels == label)[k]]


def _on_studio(gray28: np.ndarray, rgb=(180, 40, 40), backdrop=(242, 241, 238)) -> tuple[np.ndarray, ...]:
    """Colourise a garment onto a light backdrop; returns (image, ground-truth mask)."""
    intensity = upscale(gray28, 224).image[..., 0].astype(np.float32) / 255.0
    truth = intensity > 0.1
    shade = (0.45 + 0.75 * intensity)[..., None]
    img = np.where(truth[..., None], np.asarray(rgb) * shade, np.asarray(backdrop, np.float32))
    return np.clip(img, 0, 255).astype(np.uint8), truth


# ------------------------------------------------------------------------------------------- foreground_mask


@pytest.mark.parametrize("label", range(10))
def test_mask_matches_garment_on_dark_background(subset, label):
    ious = []
    for k in range(20):
        gray = _garment(subset, label, k)
        mask = foreground_mask(np.repeat(gray[..., None], 3, axis=2))
        assert mask.dtype == bool and mask.shape == (28, 28)
        ious.append(_iou(mask, gray > 12))  # 12 = default min_contrast
    assert min(ious) > 0.6 and np.mean(ious) > 0.85


def test_mask_on_upscaled_dark_background(subset):
    up = upscale(_garment(subset, 0), 256).image
    mask = foreground_mask(up)
    assert _iou(mask, up[..., 0] > 40) > 0.85
    assert 0.2 < mask.mean() < 0.8


@pytest.mark.parametrize("rgb", [(180, 40, 40), (30, 40, 90), (200, 170, 60), (90, 90, 95)])
def test_mask_on_light_studio_background(subset, rgb):
    img, truth = _on_studio(_garment(subset, 3), rgb=rgb)
    mask = foreground_mask(img)
    assert _iou(mask, truth) > 0.9


def test_mask_of_flat_image_is_empty():
    assert not foreground_mask(np.full((40, 50, 3), 200, np.uint8)).any()


def test_mask_keeps_large_holes_open():
    img = np.zeros((100, 100, 3), np.uint8)
    img[10:90, 10:90] = 220
    img[30:70, 30:70] = 0  # a 16% hole: the inside of a bag handle, not a crease
    img[15:18, 15:18] = 0  # a tiny crease: filled
    mask = foreground_mask(img)
    assert not mask[50, 50]
    assert mask[16, 16]


# ------------------------------------------------------------------------------------------- recolor


def _mean_hue_deg(img: np.ndarray, mask: np.ndarray) -> float:
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    angles = hsv[..., 0][mask].astype(np.float64) * 2 * np.pi / 256
    return float(np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360)


def test_recolor_hue_shift_changes_hue_not_mask(subset):
    img, _ = _on_studio(_garment(subset, 2), rgb=(190, 40, 40))
    mask = foreground_mask(img)
    out, recipe = recolor(img, mask, hue_shift_deg=120)
    new_mask = foreground_mask(out)
    assert _iou(new_mask, mask) > 0.98
    shift = (_mean_hue_deg(out, mask) - _mean_hue_deg(img, mask)) % 360
    assert abs(shift - 120) < 8
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert recipe == {"op": "recolor", "hue_shift_deg": 120.0, "target_rgb": None}


def test_recolor_target_rgb_moves_mean_colour_to_target(subset):
    img, _ = _on_studio(_garment(subset, 4), rgb=(90, 90, 95))
    mask = foreground_mask(img)
    out, recipe = recolor(img, mask, target_rgb=(30, 70, 190))
    mean = out[mask].mean(axis=0)
    assert np.abs(mean - np.array([30, 70, 190])).max() < 30
    assert recipe["target_rgb"] == [30, 70, 190]
    np.testing.assert_array_equal(out[~mask], img[~mask])


def test_recolor_argument_errors(subset):
    img, _ = _on_studio(_garment(subset, 4), rgb=(180, 40, 40))
    mask = foreground_mask(img)
    with pytest.raises(ValueError, match="exactly one"):
        recolor(img, mask)
    with pytest.raises(ValueError, match="exactly one"):
        recolor(img, mask, hue_shift_deg=10, target_rgb=(1, 2, 3))
    with pytest.raises(ValueError, match="target_rgb"):
        recolor(img, mask, target_rgb=(1, 2, 300))
    with pytest.raises(ValueError, match="hue_shift_deg"):
        recolor(img, mask, hue_shift_deg=float("nan"))
    with pytest.raises(ValueError, match="empty"):
        recolor(img, np.zeros(mask.shape, bool), hue_shift_deg=10)
    grey, _ = _on_studio(_garment(subset, 4), rgb=(120, 120, 120))
    with pytest.raises(ValueError, match="achromatic"):
        recolor(grey, foreground_mask(grey), hue_shift_deg=90)


def test_recolor_is_a_new_product_op():
    assert "recolor" in NEW_PRODUCT_OPS and "recolor" not in SAME_PRODUCT_OPS


# ------------------------------------------------------------------------------------------- reframe


def _centroid(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(img[..., 0] > 127)
    return float(xs.mean()), float(ys.mean())


def _dot_image(h=101, w=121, x=70, y=40) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[y - 2 : y + 3, x - 2 : x + 3] = 255
    return img


def test_reframe_identity():
    img = _dot_image()
    out, recipe = reframe(img)
    np.testing.assert_array_equal(out, img)
    assert recipe == {"op": "reframe", "scale": 1.0, "dx": 0.0, "dy": 0.0, "pad_color": [255, 255, 255]}


@pytest.mark.parametrize(
    ("scale", "dx", "dy"), [(1.0, 0.2, -0.1), (2.0, 0.0, 0.0), (0.5, 0.1, 0.05), (1.3, -0.1, 0.1)]
)
def test_reframe_moves_points_as_documented(scale, dx, dy):
    h, w, x, y = 101, 121, 70, 40
    out, _ = reframe(_dot_image(h, w, x, y), scale=scale, dx=dx, dy=dy, pad_color=(0, 0, 0))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ex, ey = cx + scale * (x - cx) + dx * w, cy + scale * (y - cy) + dy * h
    gx, gy = _centroid(out)
    assert abs(gx - ex) < 1.0 and abs(gy - ey) < 1.0
    assert out.shape == (h, w, 3)


def test_reframe_zoom_out_pads_with_colour():
    img = np.full((64, 64, 3), 10, np.uint8)
    out, _ = reframe(img, scale=0.5, pad_color=(200, 100, 50))
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[32, 32]) == (10, 10, 10)


@pytest.mark.parametrize(
    "kwargs",
    [{"scale": 0}, {"scale": 10}, {"dx": 0.9}, {"dy": -1}, {"pad_color": (1, 2)}, {"pad_color": (0, 0, 256)},
     {"scale": "2"}, {"scale": True}],
)
def test_reframe_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        reframe(_dot_image(), **kwargs)


# ----------------------------------------------------------------------------------- background, upscale


@pytest.mark.parametrize("kind", sorted(BACKGROUND_KINDS))
def test_replace_background_keeps_product_and_is_seeded(subset, kind):
    img, _ = _on_studio(_garment(subset, 0), rgb=(30, 40, 90))
    mask = foreground_mask(img)
    a = replace_background(img, mask, kind=kind, rng=np.random.default_rng(7))
    b = replace_background(img, mask, kind=kind, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.recipe == b.recipe and a.recipe["kind"] == kind and a.recipe["op"] == "replace_background"
    inner = cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    outer = ~cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.abs(a.image[inner].astype(int) - img[inner]).max() <= 1
    assert np.abs(a.image[outer].astype(int) - img[outer]).mean() > 3


def test_replace_background_errors(subset):
    img, _ = _on_studio(_garment(subset, 0))
    mask = foreground_mask(img)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="solid"):
        replace_background(img, mask, kind="marble", rng=rng)
    with pytest.raises(ValueError, match="empty"):
        replace_background(img, np.zeros_like(mask), kind="solid", rng=rng)
    with pytest.raises(ValueError, match="shape"):
        replace_background(img, mask[:-1], kind="solid", rng=rng)
    with pytest.raises(ValueError, match="bool"):
        replace_background(img, mask.astype(np.uint8), kind="solid", rng=rng)
    with pytest.raises(TypeError, match="Generator"):
        replace_background(img, mask, kind="solid", rng=0)


def test_upscale(subset):
    gray = _garment(subset, 7)
    out, recipe = upscale(gray, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert recipe == {"op": "upscale", "size": 256, "interpolation": "cubic"}
    rect, _ = upscale(np.zeros((14, 28, 3), np.uint8), 112, interpolation="lanczos")
    assert rect.shape == (56, 112, 3)
    with pytest.raises(ValueError, match="size"):
        upscale(gray, 20)
    with pytest.raises(ValueError, match="valid"):
        upscale(gray, 64, interpolation="magic")
    with pytest.raises(ValueError, match="uint8"):
        upscale(gray.astype(np.float32), 64)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)],
)
def test_image_validation(bad):
    with pytest.raises(ValueError):
        foreground_mask(bad)
    with pytest.raises(ValueError):
        reframe(bad, scale=1.1)


def test_all_recipes_are_json_serialisable(subset):
    img, _ = _on_studio(_garment(subset, 5), rgb=(200, 170, 60))
    mask = foreground_mask(img)
    rng = np.random.default_rng(3)
    recipes = [upscale(_garment(subset, 5), 64).recipe, reframe(img, scale=1.2, dx=0.1).recipe,
               recolor(img, mask, hue_shift_deg=-45).recipe, recolor(img, mask, target_rgb=(1, 2, 3)).recipe]
    recipes += [replace_background(img, mask, kind=k, rng=rng).recipe for k in sorted(BACKGROUND_KINDS)]
    for recipe in recipes:
        assert json.loads(json.dumps(recipe)) == recipe
        assert recipe["op"] in SAME_PRODUCT_OPS | NEW_PRODUCT_OPS
