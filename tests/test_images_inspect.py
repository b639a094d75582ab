"""visprep.images.facts: one-pass inspection, pHash (against a brute-force oracle) and blur score."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image

import visprep.images.decode as decode_module
from visprep.images.blur import BLUR_SIDE, blur_score
from visprep.images.facts import ImageDecodeError, ImageInfo, hamming64, inspect_image, phash64

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Seeded structured image: smooth random field + edges, so pHash and blur have something to see."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x0, y0), (x0 + width // 6, y0 + height // 8), colour, thickness=-1)
        cv2.circle(image, (int(rng.integers(0, width)), int(rng.integers(0, height))), width // 20, colour, 2)
    return image


def jpeg(rgb: np.ndarray, quality: int = 92, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def real_photo() -> np.ndarray:
    path = OPENCV_DATA / "aloeL.jpg"
    if not path.exists():
        pytest.skip(f"{path} not installed (opencv-doc)")
    return np.asarray(Image.open(path).convert("RGB"))


# --- pHash -----------------------------------------------------------------------------------------------


def reference_phash(gray: np.ndarray) -> int:
    """Slow oracle: block-mean to 32x32, unnormalised DCT-II by explicit sums, top-left 8x8 > median, MSB first."""
    height, width = gray.shape
    assert height % 32 == 0 and width % 32 == 0
    blocks = gray.astype(np.float64).reshape(32, height // 32, 32, width // 32).mean(axis=(1, 3))
    n = 32
    coefficients = np.zeros((8, 8))
    for u in range(8):
        for v in range(8):
            total = 0.0
            for y in range(n):
                for x in range(n):
                    total += blocks[y, x] * np.cos(np.pi * u * (2 * y + 1) / (2 * n)) * np.cos(
                        np.pi * v * (2 * x + 1) / (2 * n))
            coefficients[u, v] = 4 * total
    median = np.median(coefficients)
    value = 0
    for bit in (coefficients > median).ravel():
        value = (value << 1) | int(bit)
    return value


@pytest.mark.parametrize("seed", range(4))
def test_phash_matches_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    shape = [(32, 32), (256, 256), (64, 96), (128, 32)][seed]
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    if seed % 2:
        gray = cv2.GaussianBlur(gray, (0, 0), 3)  # smooth images exercise the low-frequency bits
    assert phash64(gray) == reference_phash(gray)


@pytest.mark.parametrize("shape", [(256, 341), (77, 100), (33, 1000), (5, 7)])
def test_phash_any_size_uses_exact_area_resize(shape):
    gray = cv2.GaussianBlur(np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8), (0, 0), 2)
    from visprep.images.phash import _area_average

    ours = _area_average(gray)
    opencv = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(ours, opencv, atol=1e-3)
    phash64(gray)


def test_phash_is_64_bit_unsigned():
    value = phash64(photo_like(200, 300, 1)[:, :, 0])
    assert isinstance(value, int) and 0 <= value < 2**64
    with pytest.raises(ValueError, match="grayscale"):
        phash64(np.zeros((4, 4, 3), np.uint8))


def test_phash_survives_reencode_and_resize_but_separates_images():
    master = photo_like(600, 800, 7)
    original = inspect_image(jpeg(master)).phash
    recompressed = inspect_image(jpeg(master, quality=40)).phash
    half = inspect_image(jpeg(cv2.resize(master, (400, 300), interpolation=cv2.INTER_AREA))).phash
    png = io.BytesIO()
    Image.fromarray(master).save(png, "PNG")
    as_png = inspect_image(png.getvalue()).phash
    for copy in (recompressed, half, as_png):
        assert hamming64(original, copy) <= 6
    for seed in range(8, 13):
        other = inspect_image(jpeg(photo_like(600, 800, seed))).phash
        assert hamming64(original, other) >= 16


def test_hamming64():
    assert hamming64(0, 0) == 0
    assert hamming64(0, 2**64 - 1) == 64
    assert hamming64(0b1011, 0b0001) == 2
    with pytest.raises(ValueError, match="64-bit"):
        hamming64(-1, 0)


# --- blur ------------------------------------------------------------------------------------------------


def test_blurred_copy_scores_lower():
    sharp = photo_like(600, 800, 3)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.5)
    sharp_score = inspect_image(jpeg(sharp)).blur
    blurred_score = inspect_image(jpeg(blurred)).blur
    assert blurred_score < 0.5 * sharp_score
    gray = cv2.cvtColor(sharp, cv2.COLOR_RGB2GRAY)
    assert blur_score(cv2.GaussianBlur(gray, (0, 0), 2.5)) < 0.5 * blur_score(gray)


@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_blur_is_roughly_resolution_independent(source):
    master = real_photo() if source == "real" else photo_like(1200, 1600, 5)
    master = cv2.resize(master, (1600, 1200), interpolation=cv2.INTER_AREA)
    scores = [inspect_image(jpeg(cv2.resize(master, (w, h), interpolation=cv2.INTER_AREA))).blur
              for w, h in ((1600, 1200), (800, 600), (1100, 825))]
    assert max(scores) / min(scores) < 1.35, scores


def test_blur_score_on_constant_image_is_zero():
    assert blur_score(np.full((300, 300), 128, np.uint8)) == pytest.approx(0.0, abs=1e-6)


# --- inspect_image -------------------------------------------------------------------------------------


def test_inspect_reports_header_facts_after_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(photo_like(300, 500, 2)).save(buffer, "JPEG", exif=exif.tobytes(), progressive=True)
    info = inspect_image(buffer.getvalue())
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height) == (300, 500)  # stored 500x300, shown rotated
    assert info.exif_orientation == 6 and info.progressive and info.format == "jpeg" and info.mode == "RGB"
    # pHash is of the upright image: same as the same picture stored upright.
    upright = np.ascontiguousarray(np.rot90(photo_like(300, 500, 2), -1))
    assert hamming64(info.phash, inspect_image(jpeg(upright)).phash) <= 4


def test_inspect_decodes_jpeg_once_at_reduced_scale(monkeypatch):
    calls = []
    real_decode = simplejpeg.decode_jpeg

    def counting_decode(data, **kwargs):
        calls.append(kwargs)
        return real_decode(data, **kwargs)

    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow must not be used for a YCbCr JPEG")

    monkeypatch.setattr(decode_module.simplejpeg, "decode_jpeg", counting_decode)
    monkeypatch.setattr(decode_module.Image, "open", no_pillow)
    info = inspect_image(jpeg(photo_like(1200, 1600, 4)))
    assert (info.width, info.height) == (1600, 1200)
    assert len(calls) == 1
    assert calls[0]["min_height"] == calls[0]["min_width"] == BLUR_SIDE
    assert calls[0]["colorspace"] == "RGB"  # one colour decode: the signature needs colour, pHash/blur its gray


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_inspect_modes(mode):
    rgb = photo_like(300, 400, 6)
    reference = inspect_image(jpeg(rgb, quality=95))
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 256)
    elif mode == "P":
        image = image.quantize(256, dither=Image.Dither.NONE)  # dithering would add "sharpness"
    elif mode == "RGBA":
        image = image.convert("RGBA")  # fully opaque: same picture
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if mode == "CMYK" else "PNG")
    info = inspect_image(buffer.getvalue())
    assert info.mode == mode
    assert (info.width, info.height) == (400, 300)
    assert hamming64(info.phash, reference.phash) <= 8
    assert 0.5 < info.blur / reference.blur < 2.0


def test_inspect_errors():
    with pytest.raises(ImageDecodeError) as info:
        inspect_image(b"not an image at all")
    assert info.value.reason == "unsupported_format"
    data = jpeg(photo_like(100, 100, 0))
    with pytest.raises(ImageDecodeError) as info:
        inspect_image(data, max_pixels=9999)
    assert info.value.reason == "too_many_pixels"
