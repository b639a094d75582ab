"""Decode image bytes to an upright RGB array: size limit first, EXIF orientation applied, DCT-domain downscaling.

JPEGs go through simplejpeg (libjpeg-turbo), which can decode straight to 1/8 .. 8/8 of the stored size; CMYK
JPEGs and every other format go through Pillow (`draft` for JPEG, `reduce` for the rest).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from visprep.images.jpeg_markers import JpegHeader, JpegHeaderError, orientation_from_tiff, scan_jpeg_header
from visprep.images.sniff import sniff_format

DEFAULT_MAX_PIXELS = 89_478_485
"""Same default as Pillow's `Image.MAX_IMAGE_PIXELS` (about 0.25 GiB of RGBA)."""

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP",
                   "avif": "AVIF"}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_REDUCIBLE_MODES = frozenset({"RGB", "RGBA", "L", "LA", "CMYK"})


class ImageDecodeError(ValueError):
    """The bytes cannot be turned into pixels.

    Attributes:
        reason: short code for counting and quarantine tables: "empty", "unsupported_format", "truncated",
            "corrupt" or "too_many_pixels".
    """

    REASONS = ("empty", "unsupported_format", "truncated", "corrupt", "too_many_pixels")

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown ImageDecodeError reason {reason!r}; valid: {', '.join(self.REASONS)}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """Pixels plus the header facts learnt while decoding them (internal to `visprep.images`).

    Attributes:
        pixels: (H, W, 3) RGB or (H, W) gray uint8, possibly downscaled, EXIF orientation NOT yet applied.
        width: full-resolution stored width, before EXIF orientation.
        height: full-resolution stored height, before EXIF orientation.
        format: as returned by `sniff_format`.
        mode: source colour mode in Pillow's names ("RGB", "L", "CMYK", "RGBA", "P", "I;16", ...).
        orientation: EXIF orientation 1..8.
        progressive: progressive JPEG, or interlaced PNG/GIF.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    mode: str
    orientation: int
    progressive: bool


def read_exif_orientation(data: bytes) -> int:
    """Return the EXIF orientation (1..8) of an encoded image; 1 when absent, invalid or unreadable.

    Never raises on bad input: a damaged EXIF block must not cost the image. For PNG only an eXIf chunk
    before the image data is seen (reading a later one would mean decoding the whole image).

    Args:
        data: the encoded image file.
    """
    fmt = sniff_format(bytes(data[:32]))
    if fmt == "jpeg":
        try:
            return scan_jpeg_header(data).orientation
        except JpegHeaderError:
            return 1
    if fmt is None:
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
        if fmt == "png" and "exif" not in image.info:
            return 1
        return _pillow_orientation(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1


def decode_rgb(data: bytes, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to upright RGB pixels.

    Args:
        data: the encoded image file (JPEG, PNG, WebP, GIF, BMP, TIFF; AVIF when Pillow supports it).
        min_side: when given, the image may be decoded smaller: JPEGs at the smallest DCT scale (n/8) whose
            shorter side is still >= `min_side`, other formats reduced by the largest integer factor that keeps
            the shorter side >= `min_side`. Images already smaller are returned at full size.
        max_pixels: largest width*height accepted, checked from the header before any pixel is decoded.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous, with the EXIF orientation applied (all 8 orientations). Alpha is
        composited on white; 16-bit samples keep their high byte; CMYK is converted with Pillow.

    Raises:
        ImageDecodeError: `reason` is "empty", "unsupported_format", "truncated", "corrupt" or "too_many_pixels".
        TypeError: `data` is not bytes-like.
        ValueError: `min_side` or `max_pixels` is not a positive int.
    """
    decoded = decode_image(data, min_side=min_side, max_pixels=max_pixels, gray=False)
    return apply_exif_orientation(decoded.pixels, decoded.orientation)


def apply_exif_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright according to an EXIF orientation.

    Args:
        pixels: (H, W) or (H, W, C) array as stored in the file.
        orientation: EXIF orientation 1..8 (1 = already upright).

    Returns:
        A C-contiguous array; the input itself when `orientation` is 1 and it is already contiguous.
    """
    return np.ascontiguousarray(exif_oriented_view(pixels, orientation))


def exif_oriented_view(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Like `apply_exif_orientation`, but return a (possibly non-contiguous) view instead of a copy."""
    if orientation == 1:
        return pixels
    if orientation == 2:  # mirrored left-right
        return pixels[:, ::-1]
    if orientation == 3:  # rotated 180
        return pixels[::-1, ::-1]
    if orientation == 4:  # mirrored top-bottom
        return pixels[::-1]
    swapped = pixels.swapaxes(0, 1)
    if orientation == 5:  # transposed
        return swapped
    if orientation == 6:  # stored rotated 90 CCW: turn 90 CW
        return swapped[:, ::-1]
    if orientation == 7:  # transversed
        return swapped[::-1, ::-1]
    if orientation == 8:  # stored rotated 90 CW: turn 90 CCW
        return swapped[::-1]
    raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")


def decode_image(
    data: bytes, *, min_side: int | None, max_pixels: int, gray: bool
) -> DecodedImage:
    """Decode once, returning stored-orientation pixels (RGB, or gray when `gray`) and header facts.

    Shared by `decode_rgb` and `inspect_image`; see `decode_rgb` for the arguments and errors.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if min_side is not None and (not isinstance(min_side, int) or min_side < 1):
        raise ValueError(f"min_side must be a positive int or None, got {min_side!r}")
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if len(data) == 0:
        raise ImageDecodeError("empty", "image data is empty (0 bytes)")
    data = bytes(data) if not isinstance(data, bytes) else data
    fmt = sniff_format(data[:32])
    if fmt is None:
        raise ImageDecodeError(
            "unsupported_format", f"unrecognised image signature {data[:12]!r} ({len(data)} bytes)"
        )
    if fmt == "jpeg":
        try:
            header = scan_jpeg_header(data)
        except JpegHeaderError as exc:
            raise ImageDecodeError(exc.reason, f"JPEG header: {exc}") from None
        _check_pixels(header.width, header.height, max_pixels)
        if header.components in (1, 3):  # CMYK/YCCK: simplejpeg cannot convert them, Pillow can
            pixels = _decode_jpeg_turbo(data, min_side=min_side, gray=gray)
            if pixels is not None:
                mode = "L" if header.components == 1 else "RGB"
                return DecodedImage(pixels, header.width, header.height, fmt, mode, header.orientation,
                                    header.progressive)
        return _decode_pillow(data, fmt, min_side=min_side, max_pixels=max_pixels, gray=gray, header=header)
    return _decode_pillow(data, fmt, min_side=min_side, max_pixels=max_pixels, gray=gray, header=None)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"image header declares {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}",
        )


def _decode_jpeg_turbo(data: bytes, *, min_side: int | None, gray: bool) -> np.ndarray | None:
    """Decode with libjpeg-turbo; None when its header reader rejects a file Pillow may still read."""
    scale = {"min_height": min_side, "min_width": min_side} if min_side else {}
    try:
        simplejpeg.decode_jpeg_header(data, **scale)
    except ValueError:  # e.g. a subsampling layout TurboJPEG does not name; libjpeg via Pillow handles it
        return None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB", strict=True, **scale)
    except ValueError as exc:
        message = str(exc)
        reason = "truncated" if "Premature end" in message else "corrupt"
        raise ImageDecodeError(reason, f"JPEG ({len(data)} bytes): {message}") from None
    return pixels[:, :, 0] if gray else pixels


def _decode_pillow(
    data: bytes, fmt: str, *, min_side: int | None, max_pixels: int, gray: bool, header: JpegHeader | None
) -> DecodedImage:
    what = f"{fmt.upper()} ({len(data)} bytes)"
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's warning; its hard error (2x its limit) remains.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", f"{what}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "unsupported_format" if fmt == "avif" else "corrupt", f"{what}: Pillow cannot read this {fmt} file"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(_pillow_reason(exc), f"{what}: {exc}") from None
    width, height = image.size
    _check_pixels(width, height, max_pixels)
    mode = image.mode
    progressive = bool(image.info.get("progressive") or image.info.get("progression")
                       or image.info.get("interlace"))
    try:
        if min_side and image.format == "JPEG":
            image.draft(None, (min_side, min_side))
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(_pillow_reason(exc), f"{what}: {exc}") from None
    orientation = header.orientation if header is not None else _pillow_orientation(image)
    if min_side and image.mode in _REDUCIBLE_MODES:
        factor = min(image.size) // min_side
        if factor >= 2:
            image = image.reduce(factor)
    pixels = pillow_to_rgb(image)
    if gray:
        import cv2  # noqa: PLC0415 - only the rare non-JPEG inspect path needs it here

        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    return DecodedImage(pixels, width, height, fmt, mode, orientation, progressive)


def pillow_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to (H, W, 3) uint8 RGB.

    Transparency (alpha channel, or a palette/tRNS transparent colour) is composited on white; 16- and 32-bit
    integer gray keeps its high byte (assuming a 16-bit range); float images are clipped to 0..255.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image)
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(image)
        gray8 = (np.clip(wide.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode == "F":
        gray8 = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[:, :, 3:4].astype(np.uint16)
        # out = rgb*a/255 + 255*(1 - a/255) = 255 - (255 - rgb)*a/255, rounded
        inverse = (255 - rgba[:, :, :3]).astype(np.uint16)
        return (255 - (inverse * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def _pillow_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on damaged tags; never fatal
        exif = image.info.get("exif")
        if isinstance(exif, bytes):
            return orientation_from_tiff(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pillow_reason(exc: BaseException) -> str:
    message = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in message or "premature" in message:
        return "truncated"
    return "corrupt"
