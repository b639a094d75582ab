"""visprep.images.preprocess: geometry against a Pillow reference, normalize formula, shapes for any input."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from visprep.images.decode import decode_rgb
from visprep.images.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    PROFILES,
    PreprocessProfile,
    encode_jpeg,
    get_profile,
    normalize,
    preprocess_float,
    preprocess_uint8,
)

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(10):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x0, y0), (x0 + width // 7, y0 + height // 9), colour, thickness=-1)
    return image


def encode(rgb: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kwargs)
    return buffer.getvalue()


def pillow_reference(data: bytes, profile: PreprocessProfile) -> np.ndarray:
    """torchvision-style Resize(shorter) + CenterCrop(size) done with Pillow on a full-resolution decode."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    width, height = image.size
    target = profile.shorter_side
    if width <= height:
        new_w, new_h = target, int(target * height / width)
    else:
        new_w, new_h = int(target * width / height), target
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - profile.size) / 2.0))
    left = int(round((new_w - profile.size) / 2.0))
    return np.asarray(image.crop((left, top, left + profile.size, top + profile.size)))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_shapes_and_dtypes(name):
    profile = get_profile(name)
    data = encode(photo_like(480, 640))
    uint8 = preprocess_uint8(data, profile)
    assert uint8.shape == (profile.size, profile.size, 3) and uint8.dtype == np.uint8
    assert uint8.flags["C_CONTIGUOUS"]
    tensor = preprocess_float(data, profile)
    assert tensor.shape == (3, profile.size, profile.size) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, normalize(uint8, profile))


def test_profiles_registry():
    assert get_profile("clip-336") == PreprocessProfile(size=336, mean=CLIP_MEAN, std=CLIP_STD)
    assert get_profile("imagenet-224").shorter_side == 256
    with pytest.raises(ValueError, match="clip-336") as info:
        get_profile("imagenet-225")
    assert "imagenet-225" in str(info.value)
    with pytest.raises(ValueError, match="resize_shorter"):
        PreprocessProfile(size=224, resize_shorter=200)
    with pytest.raises(ValueError, match="std"):
        PreprocessProfile(std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize(("height", "width"), [(600, 800), (1200, 1600), (900, 500), (150, 180)])
@pytest.mark.parametrize("name", ["imagenet-224", "clip-336"])
def test_matches_pillow_reference(height, width, name):
    profile = get_profile(name)
    data = encode(photo_like(height, width, seed=height))
    ours = preprocess_uint8(data, profile).astype(np.int16)
    reference = pillow_reference(data, profile).astype(np.int16)
    assert np.abs(ours - reference).mean() < 2.5


def test_matches_pillow_reference_on_real_photo():
    path = OPENCV_DATA / "aloeL.jpg"
    if not path.exists():
        pytest.skip(f"{path} not installed (opencv-doc)")
    data = path.read_bytes()
    profile = get_profile("imagenet-224")
    ours = preprocess_uint8(data, profile).astype(np.float32)
    reference = pillow_reference(data, profile).astype(np.float32)
    # On a highly textured photo the filters differ (a 1/4 DCT-scale decode is sharper than Pillow's
    # antialiased bilinear over 4.3x), so compare geometry after a light blur; a 1 px shift costs ~10 levels.
    raw = np.abs(ours - reference).mean()
    smoothed = np.abs(cv2.GaussianBlur(ours, (0, 0), 1.5) - cv2.GaussianBlur(reference, (0, 0), 1.5)).mean()
    shifted = np.abs(ours[:, 1:] - reference[:, :-1]).mean()
    assert smoothed < 2.5 and raw < 6 and shifted > 2 * raw


def coordinate_card(height: int, width: int) -> np.ndarray:
    """R = column, G = row: every pixel says where it came from (lossless formats only)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.dstack([cols, rows, np.zeros_like(rows)]).astype(np.uint8)


def test_center_crop_offsets_are_exact():
    profile = PreprocessProfile(size=100)
    out = preprocess_uint8(encode(coordinate_card(100, 161), "PNG"), profile)  # no resize needed
    assert out[0, 0, 0] == 30 and out[0, -1, 0] == 129  # round(61 / 2) = 30
    out = preprocess_uint8(encode(coordinate_card(171, 100), "PNG"), profile)
    assert out[0, 0, 1] == 36 and out[-1, 0, 1] == 135  # round(35.5) = 36 (banker's rounding as torchvision)


def test_exif_orientation_applied_before_crop():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 CCW
    card = coordinate_card(100, 161)
    stored = Image.fromarray(card).transpose(Image.Transpose.ROTATE_90)
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif.tobytes())
    out = preprocess_uint8(buffer.getvalue(), PreprocessProfile(size=100))
    np.testing.assert_array_equal(out, card[:, 30:130])


def test_normalize_matches_formula():
    rng = np.random.default_rng(0)
    profile = get_profile("clip-336")
    images = rng.integers(0, 256, (3, 17, 23, 3), dtype=np.uint8)
    mean = np.asarray(profile.mean).reshape(1, 3, 1, 1)
    std = np.asarray(profile.std).reshape(1, 3, 1, 1)
    expected = (images.transpose(0, 3, 1, 2) / 255.0 - mean) / std
    batch = normalize(images, profile)
    assert batch.shape == (3, 3, 17, 23) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(batch, expected, atol=2e-6)
    np.testing.assert_array_equal(normalize(images[1], profile), batch[1])
    np.testing.assert_allclose(normalize(images[1, :, ::2], profile), expected[1, :, :, ::2], atol=2e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize(images.astype(np.float32), profile)
    with pytest.raises(ValueError, match="uint8"):
        normalize(images[..., :2], profile)


def test_encode_jpeg_round_trip():
    rgb = photo_like(64, 80)
    error = np.abs(decode_rgb(encode_jpeg(rgb, quality=95)).astype(int) - rgb).mean()
    pillow_error = np.abs(decode_rgb(encode(rgb)).astype(int) - rgb).mean()  # also 4:2:0 at quality 95
    assert error < 1.2 * pillow_error + 0.5
    gray = rgb[:, :, 0]
    assert decode_rgb(encode_jpeg(gray[:, ::-1])).shape == (64, 80, 3)
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(rgb, quality=0)
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(rgb.astype(np.float32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    size=st.sampled_from([1, 7, 32, 224]),
    margin=st.integers(0, 40),
    fmt=st.sampled_from(["JPEG", "PNG"]),
    orientation=st.integers(1, 8),
)
def test_any_size_gives_square_output(height, width, size, margin, fmt, orientation):
    rgb = photo_like(height, width, seed=height * 1000 + width)
    exif = Image.Exif()
    exif[0x0112] = orientation
    profile = PreprocessProfile(size=size, resize_shorter=size + margin)
    out = preprocess_uint8(encode(rgb, fmt, exif=exif.tobytes()), profile)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
