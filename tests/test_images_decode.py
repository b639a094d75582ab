"""visprep.images.decode: EXIF orientation, error reasons, decompression bombs, colour modes, DCT scaling."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visprep.images.decode import ImageDecodeError, decode_rgb, read_exif_orientation
from visprep.images.jpeg_markers import scan_jpeg_header

# The transpose that turns an upright image into what a camera stores under each EXIF orientation
# (the inverse of what a viewer applies).
_STORE_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def textured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A seeded, photo-like image: smooth colour field plus mid-frequency texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    fine = rng.integers(-40, 41, (max(2, height // 4), max(2, width // 4), 1), dtype=np.int16)
    texture = cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(field + texture.reshape(height, width, 1), 0, 255).astype(np.uint8)


def quadrant_image(height: int = 64, width: int = 96) -> np.ndarray:
    """Upright test card: red top-left, green top-right, blue bottom-left, white bottom-right."""
    image = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    image[:h2, :w2] = (255, 0, 0)
    image[:h2, w2:] = (0, 255, 0)
    image[h2:, :w2] = (0, 0, 255)
    image[h2:, w2:] = (255, 255, 255)
    return image


def jpeg_bytes(rgb: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", **{"quality": 95, **save_args})
    return buffer.getvalue()


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save_args)
    return buffer.getvalue()


def stored_with_orientation(upright: np.ndarray, orientation: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    image = Image.fromarray(upright)
    if _STORE_AS[orientation] is not None:
        image = image.transpose(_STORE_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# --- EXIF orientation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations_land_upright(orientation):
    upright = quadrant_image()
    data = stored_with_orientation(upright, orientation)
    assert read_exif_orientation(data) == orientation
    decoded = decode_rgb(data)
    assert decoded.shape == upright.shape
    assert decoded.flags["C_CONTIGUOUS"]
    assert np.abs(decoded.astype(int) - upright).mean() < 4


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_with_dct_scaling(orientation):
    upright = quadrant_image(256, 384)
    decoded = decode_rgb(stored_with_orientation(upright, orientation), min_side=64)
    assert decoded.shape == (64, 96, 3)
    expected = cv2.resize(upright, (96, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("orientation", [6, 7])
def test_orientation_on_pillow_paths(orientation):
    upright = quadrant_image()
    for data in (stored_with_orientation(upright, orientation, "PNG"),
                 stored_with_orientation(upright, orientation, "JPEG", mode="CMYK")):
        assert read_exif_orientation(data) == orientation
        decoded = decode_rgb(data)
        assert decoded.shape == upright.shape
        assert np.abs(decoded.astype(int) - upright).mean() < 6


def test_marker_scanner_agrees_with_pillow():
    data = stored_with_orientation(textured_rgb(120, 200), 6)
    header = scan_jpeg_header(data)
    assert (header.width, header.height) == Image.open(io.BytesIO(data)).size == (120, 200)
    assert header.components == 3 and not header.progressive and header.orientation == 6
    progressive = jpeg_bytes(textured_rgb(50, 70), progressive=True)
    assert scan_jpeg_header(progressive).progressive


def test_orientation_absent_invalid_or_damaged_is_one():
    plain = jpeg_bytes(textured_rgb(32, 32))
    assert read_exif_orientation(plain) == 1
    exif = Image.Exif()
    exif[0x0112] = 9  # out of range
    buffer = io.BytesIO()
    Image.fromarray(textured_rgb(32, 32)).save(buffer, "JPEG", exif=exif.tobytes())
    assert read_exif_orientation(buffer.getvalue()) == 1
    assert read_exif_orientation(b"") == 1
    assert read_exif_orientation(b"garbage") == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_damaged_exif_never_raises(payload):
    # A JPEG whose APP1 Exif segment holds arbitrary bytes: orientation falls back to 1, decoding still works.
    base = jpeg_bytes(textured_rgb(16, 16))
    segment = b"Exif\x00\x00" + payload
    data = base[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + base[2:]
    assert 1 <= read_exif_orientation(data) <= 8
    assert decode_rgb(data).shape == (16, 16, 3)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_image_decode_error(blob):
    for data in (blob, b"\xff\xd8\xff" + blob):
        assert 1 <= read_exif_orientation(data) <= 8
        try:
            decode_rgb(data)
        except ImageDecodeError as exc:
            assert exc.reason in ImageDecodeError.REASONS


# --- bad input -----------------------------------------------------------------------------------------


def test_truncated_jpeg():
    data = jpeg_bytes(textured_rgb(200, 300))
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data[: len(data) // 2])
    assert info.value.reason == "truncated"
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data[:300])  # cut inside the header segments
    assert info.value.reason == "truncated"
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data[: len(data) // 2], min_side=50)
    assert info.value.reason == "truncated"


def test_truncated_and_corrupt_png():
    data = png_bytes(Image.fromarray(textured_rgb(200, 300)))
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data[: len(data) // 2])
    assert info.value.reason == "truncated"
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 50] = bytes(50)
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(bytes(damaged))
    assert info.value.reason in ("corrupt", "truncated")


def test_garbage_empty_and_wrong_type():
    rng = np.random.default_rng(1)
    garbage = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(garbage)
    assert info.value.reason == "unsupported_format"
    assert "signature" in str(info.value)
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(b"\xff\xd8\xff" + garbage)
    assert info.value.reason in ("corrupt", "truncated")  # a garbage "segment length" may point past the end
    for bad_header in (b"\xff\xd8\xff\xe0\x00\x10" + bytes(114), b"\xff\xd8\xff\x10" + garbage):
        with pytest.raises(ImageDecodeError) as info:
            decode_rgb(bad_header)
        assert info.value.reason == "corrupt"
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(b"")
    assert info.value.reason == "empty"
    with pytest.raises(TypeError):
        decode_rgb("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_side"):
        decode_rgb(jpeg_bytes(textured_rgb(8, 8)), min_side=0)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A valid small JPEG whose frame header is patched to claim width x height."""
    data = bytearray(jpeg_bytes(textured_rgb(16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height (8-bit RGB) followed by a tiny IDAT: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("make", [_jpeg_claiming, _png_claiming])
def test_decompression_bomb_rejected_before_allocating(make):
    data = make(30000, 30000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError) as info:
            decode_rgb(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_many_pixels"
    assert "30000x30000" in str(info.value) or "900000000" in str(info.value)
    assert peak < 20 * 2**20  # a decode would need 2.7 GB


def test_max_pixels_is_respected():
    data = jpeg_bytes(textured_rgb(40, 50))
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data, max_pixels=1999)
    assert info.value.reason == "too_many_pixels" and "max_pixels=1999" in str(info.value)
    assert decode_rgb(data, max_pixels=2000).shape == (40, 50, 3)
    png = png_bytes(Image.fromarray(textured_rgb(40, 50)))
    with pytest.raises(ImageDecodeError, match="too_many_pixels|max_pixels"):
        decode_rgb(png, max_pixels=1999)


# --- colour modes and formats --------------------------------------------------------------------------


def test_cmyk_jpeg_matches_pillow():
    rgb = textured_rgb(96, 128)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = decode_rgb(data)
    assert decoded.shape == (96, 128, 3)
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    assert decode_rgb(data, min_side=40).shape == (48, 64, 3)  # Pillow draft: 1/2 scale


def test_grayscale_jpeg_gives_three_equal_channels():
    gray = textured_rgb(64, 64)[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "JPEG", quality=95)
    decoded = decode_rgb(buffer.getvalue())
    assert decoded.shape == (64, 64, 3)
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 1])
    assert np.abs(decoded[:, :, 0].astype(int) - gray).mean() < 3


def test_sixteen_bit_png_keeps_high_byte():
    gray8 = textured_rgb(40, 60)[:, :, 0]
    ok, encoded = cv2.imencode(".png", gray8.astype(np.uint16) * 256 + 100)
    assert ok
    decoded = decode_rgb(encoded.tobytes())
    assert np.array_equal(decoded[:, :, 1], gray8)
    rgb8 = textured_rgb(40, 60, seed=3)
    ok, encoded = cv2.imencode(".png", rgb8[:, :, ::-1].astype(np.uint16) * 257)  # cv2 writes BGR
    assert np.array_equal(decode_rgb(encoded.tobytes()), rgb8)


def test_alpha_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :, 0] = 200  # red 200
    rgba[0, :, 3] = 0  # transparent row -> white
    rgba[1, :, 3] = 255  # opaque row -> the colour
    rgba[2, :, 3] = 128  # half -> halfway to white
    decoded = decode_rgb(png_bytes(Image.fromarray(rgba, "RGBA")))
    assert (decoded[0] == 255).all()
    assert (decoded[1] == (200, 0, 0)).all()
    assert np.abs(decoded[2].astype(int) - (228, 127, 127)).max() <= 1
    la = Image.fromarray(rgba[:, :, [1, 3]], "LA")
    assert (decode_rgb(png_bytes(la))[0] == 255).all()


def test_palette_with_transparency():
    palette_image = Image.new("P", (8, 8), 1)
    palette_image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette_image.paste(0, (0, 0, 4, 8))
    decoded = decode_rgb(png_bytes(palette_image, transparency=0))
    assert (decoded[:, :4] == 255).all()
    assert (decoded[:, 4:] == (10, 20, 30)).all()
    gif = io.BytesIO()
    palette_image.save(gif, "GIF", transparency=0)
    assert (decode_rgb(gif.getvalue())[:, 4:] == (10, 20, 30)).all()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip(fmt):
    rgb = textured_rgb(30, 50)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert np.array_equal(decode_rgb(buffer.getvalue()), rgb)


# --- DCT-domain downscaling ----------------------------------------------------------------------------


def test_min_side_picks_smallest_sufficient_dct_scale():
    data = jpeg_bytes(textured_rgb(600, 800))
    assert decode_rgb(data, min_side=224).shape == (225, 300, 3)  # 3/8
    assert decode_rgb(data, min_side=256).shape == (300, 400, 3)  # 4/8
    assert decode_rgb(data, min_side=75).shape == (75, 100, 3)  # 1/8
    assert decode_rgb(data, min_side=601).shape == (600, 800, 3)  # never upscaled
    full = decode_rgb(data).astype(np.float32)
    small = decode_rgb(data, min_side=256).astype(np.float32)
    reference = cv2.resize(full, (400, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(small - reference).mean() < 3


def test_min_side_reduces_other_formats():
    data = png_bytes(Image.fromarray(textured_rgb(600, 800)))
    assert decode_rgb(data, min_side=200).shape == (200, 267, 3)  # reduce(3), Pillow rounds up
    assert decode_rgb(data, min_side=400).shape == (600, 800, 3)  # factor 1
