"""One-pass image inspection: full-resolution size, format, EXIF orientation, colour mode, pHash and blur."""

from __future__ import annotations

from dataclasses import dataclass

from visprep.images.blur import BLUR_SIDE, blur_score
from visprep.images.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, apply_exif_orientation, decode_image
from visprep.images.phash import hamming64, phash64
from visprep.images.resize import resize_shorter_side

__all__ = ["ImageInfo", "ImageDecodeError", "inspect_image", "phash64", "blur_score", "hamming64"]


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
    """

    width: int
    height: int
    format: str
    exif_orientation: int
    phash: int
    blur: float
    progressive: bool
    mode: str


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Inspect an encoded image with a single, downscaled decode.

    JPEGs are decoded straight to grayscale at the smallest DCT scale whose shorter side is >= BLUR_SIDE; the
    size comes from the header, and pHash and blur are computed from that small image.

    Args:
        data: the encoded image file.
        max_pixels: largest width*height accepted, checked from the header before decoding.

    Raises:
        ImageDecodeError: see `decode_rgb` for the reasons.
    """
    decoded = decode_image(data, min_side=BLUR_SIDE, max_pixels=max_pixels, gray=True)
    gray = resize_shorter_side(decoded.pixels, BLUR_SIDE)
    gray = apply_exif_orientation(gray, decoded.orientation)
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
    )
