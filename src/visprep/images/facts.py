"""One-pass image inspection: full-resolution size, format, EXIF orientation, colour mode, pHash, blur and the
crop/border-tolerant signature (`visprep.images.signature`) near-duplicate detection uses."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from visprep.images.blur import BLUR_SIDE, blur_score
from visprep.images.decode import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageDecodeError,
    apply_exif_orientation,
    decode_image,
)
from visprep.images.phash import hamming64, phash64
from visprep.images.resize import resize_shorter_side
from visprep.images.signature import CODE_COLUMNS, COLOR_COLUMNS, TRIM_TOLERANCE, signature_of_rgb

__all__ = ["ImageDecodeError", "ImageInfo", "blur_score", "facts_row", "hamming64", "inspect_image", "phash64",
           "small_rgb"]


@dataclass(frozen=True)
class ImageInfo:
    """What `inspect_image` learns about one image.

    Attributes:
        width: full-resolution width in pixels, after EXIF orientation (as a viewer shows it).
        height: full-resolution height in pixels, after EXIF orientation.
        format: "jpeg", "png", "webp", "gif", "bmp", "tiff" or "avif".
        exif_orientation: 1..8 (1 = stored upright or no EXIF).
        phash: 64-bit unsigned pHash of the upright image (see `phash64`).
        blur: Laplacian variance at a shorter side of BLUR_SIDE px (see `blur_score`); higher = sharper.
        progressive: progressive JPEG, or interlaced PNG/GIF.
        mode: source colour mode in Pillow's names: "RGB", "L", "CMYK", "RGBA", "P", "I;16", ...
        signature_codes: the `signature.CODES` pHashes (trimmed, trimmed centre 70 %, centre 50 %) of the upright
            image, each a 64-bit unsigned int.
        fg_color: foreground median CIELAB colour (L* minus the backdrop's L*, a*, b*; OpenCV 8-bit Lab scale).
    """

    width: int
    height: int
    format: str
    exif_orientation: int
    phash: int
    blur: float
    progressive: bool
    mode: str
    signature_codes: tuple[int, int, int]
    fg_color: tuple[float, float, float]


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> ImageInfo:
    """Inspect an encoded image with a single, downscaled decode.

    JPEGs are decoded in colour at the smallest DCT scale whose shorter side is >= BLUR_SIDE; the size comes from
    the header. pHash and blur are computed from that small image's gray, the
    signature (`visprep.images.signature`) from its colour: one colour decode costs less than a gray decode plus a
    colour one (measured in docs/dedup.md).

    Args:
        data: the encoded image file.
        max_pixels: largest width*height accepted, checked from the header before decoding.
        max_decoded_bytes: largest memory the decode may take (`decode.DecodeSize`), checked from the header before
            decoding.

    Raises:
        ImageDecodeError: see `decode_rgb` for the reasons.
    """
    decoded, rgb = _decode_small(data, max_pixels, max_decoded_bytes)
    gray = resize_shorter_side(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), BLUR_SIDE)
    codes, color = signature_of_rgb(rgb, tolerance=TRIM_TOLERANCE)
    width, height = decoded.width, decoded.height
    if decoded.orientation >= 5:  # orientations 5..8 swap the axes
        width, height = height, width
    return ImageInfo(
        width=width,
        height=height,
        format=decoded.format,
        exif_orientation=decoded.orientation,
        phash=phash64(gray),
        blur=blur_score(gray),
        progressive=decoded.progressive,
        mode=decoded.mode,
        signature_codes=(codes[0], codes[1], codes[2]),
        fg_color=(float(color[0]), float(color[1]), float(color[2])),
    )


def facts_row(image_id: str, data: bytes, *, fmt: str | None, max_pixels: int = DEFAULT_MAX_PIXELS,
              max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> dict:
    """The `images` row of one stored image's bytes (what inspect records, and synth for its views), without run_id:
    the facts of `inspect_image`, or status = the decode failure's reason when it does not decode."""
    row: dict = {"image_id": image_id, "format": fmt, "bytes": len(data)}
    try:
        info = inspect_image(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
    except ImageDecodeError as exc:
        row.update(status=exc.reason, reason=f"{image_id}: {exc}")
        return row
    row.update(status="ok", reason=None, format=info.format, width=info.width, height=info.height,
               exif_orientation=info.exif_orientation, phash=info.phash, blur=info.blur,
               progressive=info.progressive, mode=info.mode,
               **dict(zip(CODE_COLUMNS, info.signature_codes)), **dict(zip(COLOR_COLUMNS, info.fg_color)))
    return row


def small_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """The upright RGB pixels `inspect_image` works on: one decode, at the smallest DCT scale whose shorter side is
    >= BLUR_SIDE."""
    return _decode_small(data, max_pixels, max_decoded_bytes)[1]


def _decode_small(data: bytes, max_pixels: int, max_decoded_bytes: int) -> tuple[DecodedImage, np.ndarray]:
    # One colour decode: the gray for pHash and blur is derived from it rather than decoded a second time.
    decoded = decode_image(data, min_side=BLUR_SIDE, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes,
                           gray=False)
    return decoded, apply_exif_orientation(decoded.pixels, decoded.orientation)

