"""Decode image bytes to an upright RGB array: size limits first, EXIF orientation applied, DCT-domain downscaling.

JPEGs go through simplejpeg (libjpeg-turbo), which can decode straight to 1/8 .. 8/8 of the stored size; CMYK
JPEGs and every other format go through Pillow (`draft` for JPEG, `reduce` for the rest).

Two limits are checked from the header before any pixel is decoded: `max_pixels` (width x height) and
`max_decoded_bytes`, the memory the decoder's pixel buffers will take (`DecodeSize`, `check_decoded_bytes`). Pixels
alone miss the cost of 16-bit samples, alpha, progressive JPEG coefficients and decoders that hold several copies.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageMode, UnidentifiedImageError

from visprep.images.jpeg_markers import JpegHeader, JpegHeaderError, orientation_from_tiff, scan_jpeg_header
from visprep.images.sniff import describe_non_image, sniff_format

DEFAULT_MAX_PIXELS = 89_478_485
"""Same default as Pillow's `Image.MAX_IMAGE_PIXELS` (about 0.25 GiB of RGBA)."""

_MIB = 1 << 20
DEFAULT_MAX_DECODED_BYTES = 192 * _MIB
"""Default `max_decoded_bytes` (see `DecodeSize`): a decoding worker then stays under 400 MiB
(`decode_worker_bytes`: 224 MiB + 1.25 x 192 MiB). The limit is on memory, so what it refuses depends on the format.
An 8-bit RGB image at the pixel limit is 268 MB of pixels (256 MiB), and Pillow even holds it in 4 bytes a pixel
(341 MiB): as a PNG, TIFF or WebP that is refused. A JPEG, the catalog format, is decoded by inspect and export at a
DCT scale (1/8 for a large one), so a baseline JPEG at the pixel limit passes there with a few MiB; only full-size
decodes (`decode_rgb` without `min_side`) refuse it. Accepted at inspect/export scale: 8-bit RGB(A) or grey+alpha
PNGs up to ~50 Mpx, 16-bit grey PNGs up to the pixel limit (9400x9400: 169 MiB), progressive JPEGs up to ~67 Mpx
(4:2:0) or ~33 Mpx (4:4:4), WebPs up to ~12.5 Mpx (Pillow's decoder holds four 4-byte canvases)."""

DECODE_OVERHEAD = 1.25
"""Peak memory a decode adds over its `DecodeSize.nbytes`. Measured (tests/test_memory_bounds.py): 1.00 to 1.06 for
PNG (grey 1/8/16-bit, grey+alpha, RGB, RGBA, palette), TIFF (one strip), WebP, GIF and progressive JPEG through
`inspect_image` and `preprocess_uint8` (AVIF 0.8 to 1.0), plus up to ~10 MiB whatever the size (`WORKER_BASE_BYTES` has room for it).
Conversions run in bands of rows, so nothing but the decoder's buffers and the result is full-size."""

WORKER_BASE_BYTES = 224 * _MIB
"""Resident memory of a decoding worker besides its decodes: 146 to 198 MiB measured (two installs of the same
versions) once numpy, OpenCV, Pillow and pyarrow are imported and the worker has written its Parquet part (building
an Arrow table imports pandas), with room for the encoded bytes of the image in hand and the fixed cost of a
decode."""

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP",
                   "avif": "AVIF"}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_REDUCIBLE_MODES = frozenset({"RGB", "RGBA", "L", "LA", "CMYK"})


class ImageDecodeError(ValueError):
    """The bytes cannot be turned into pixels.

    Attributes:
        reason: short code for counting and quarantine tables: "empty", "unsupported_format", "truncated",
            "corrupt", "too_many_pixels" or "decoded_too_large".
    """

    REASONS = ("empty", "unsupported_format", "truncated", "corrupt", "too_many_pixels", "decoded_too_large")

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


@dataclass(frozen=True)
class DecodeSize:
    """The memory a decode will take, worked out from the image's header before any pixel is decoded.

    `nbytes` = width x height x bytes_per_pixel x buffers + extra_bytes.

    Attributes:
        width: width of the pixel buffer the decoder fills (a JPEG's DCT-scaled size), pixels.
        height: its height, pixels.
        bytes_per_pixel: channels x bytes per sample as the header declares them, or as the decoder holds them
            when that is more (Pillow keeps 2- and 3-channel 8-bit images in 4 bytes a pixel); samples under 8 bits
            count one byte, as decoders unpack them.
        buffers: full-size pixel buffers the decoder holds at once (Pillow's WebP decoder: 4, AVIF: 3).
        extra_bytes: decoder memory besides the pixel buffers: a progressive JPEG's coefficients (2 bytes per
            sample of every component, at full size), a TIFF's strip or tile buffer.
        detail: how the figure was worked out, for error messages (e.g. "PNG 16-bit grey: 1 channel x 2 bytes").
    """

    width: int
    height: int
    bytes_per_pixel: int
    buffers: int = 1
    extra_bytes: int = 0
    detail: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes the decode will hold at its peak, not counting the encoded input."""
        return self.width * self.height * self.bytes_per_pixel * self.buffers + self.extra_bytes


def check_decoded_bytes(size: DecodeSize, *, max_decoded_bytes: int, what: str = "image") -> int:
    """Refuse a decode whose memory (`size.nbytes`) is over `max_decoded_bytes`; every decode path calls this.

    Args:
        size: from the image's header (see `DecodeSize`).
        max_decoded_bytes: largest `size.nbytes` accepted.
        what: names the image in the error (e.g. "PNG (172 KB)").

    Returns:
        `size.nbytes`.

    Raises:
        ImageDecodeError: reason "decoded_too_large", with the computed figure and how it was reached.
    """
    nbytes = size.nbytes
    if nbytes > max_decoded_bytes:
        parts = f"{size.width}x{size.height} px x {size.bytes_per_pixel} bytes a pixel"
        if size.buffers > 1:
            parts += f" x {size.buffers} buffers"
        if size.extra_bytes:
            parts += f" + {size.extra_bytes:,}"
        raise ImageDecodeError(
            "decoded_too_large",
            f"{what}: decoding needs {nbytes:,} bytes ({parts}; {size.detail}), more than "
            f"max_decoded_bytes={max_decoded_bytes:,}",
        )
    return nbytes


def decode_worker_bytes(max_decoded_bytes: int) -> int:
    """Memory one worker process that decodes images one at a time may reach, bytes: `WORKER_BASE_BYTES` plus
    `DECODE_OVERHEAD` x `max_decoded_bytes` (its largest accepted decode)."""
    if not isinstance(max_decoded_bytes, int) or max_decoded_bytes < 1:
        raise ValueError(f"max_decoded_bytes must be a positive int, got {max_decoded_bytes!r}")
    return WORKER_BASE_BYTES + int(DECODE_OVERHEAD * max_decoded_bytes)


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


def decode_rgb(data: bytes, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Decode an image to upright RGB pixels.

    Args:
        data: the encoded image file (JPEG, PNG, WebP, GIF, BMP, TIFF; AVIF when Pillow supports it).
        min_side: when given, the image may be decoded smaller: JPEGs at the smallest DCT scale (n/8) whose
            shorter side is still >= `min_side`, other formats reduced by the largest integer factor that keeps
            the shorter side >= `min_side`. Images already smaller are returned at full size.
        max_pixels: largest width*height accepted, checked from the header before any pixel is decoded.
        max_decoded_bytes: largest memory the decode may take (`DecodeSize.nbytes`: pixel buffers at the decode
            scale, decoder buffers and the RGB result), checked from the header before any pixel is decoded.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous, with the EXIF orientation applied (all 8 orientations). Alpha is
        composited on white; 16-bit samples keep their high byte; CMYK is converted with Pillow.

    Raises:
        ImageDecodeError: `reason` is "empty", "unsupported_format", "truncated", "corrupt", "too_many_pixels" or
            "decoded_too_large".
        TypeError: `data` is not bytes-like.
        ValueError: `min_side`, `max_pixels` or `max_decoded_bytes` is not a positive int.
    """
    decoded = decode_image(data, min_side=min_side, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes,
                           gray=False)
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


@dataclass(frozen=True)
class _Limits:
    """The size arguments of one `decode_image` call, passed down to the format paths."""

    min_side: int | None
    max_pixels: int
    max_decoded_bytes: int


def decode_image(
    data: bytes, *, min_side: int | None, max_pixels: int, gray: bool,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedImage:
    """Decode once, returning stored-orientation pixels (RGB, or gray when `gray`) and header facts.

    Shared by `decode_rgb`, `inspect_image`, `preprocess_uint8` and the queries stage; see `decode_rgb` for the
    arguments and errors.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if min_side is not None and (not isinstance(min_side, int) or min_side < 1):
        raise ValueError(f"min_side must be a positive int or None, got {min_side!r}")
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if not isinstance(max_decoded_bytes, int) or max_decoded_bytes < 1:
        raise ValueError(f"max_decoded_bytes must be a positive int, got {max_decoded_bytes!r}")
    if len(data) == 0:
        raise ImageDecodeError("empty", "image data is empty (0 bytes)")
    data = bytes(data) if not isinstance(data, bytes) else data
    fmt = sniff_format(data[:32])
    if fmt is None:
        raise ImageDecodeError(
            "unsupported_format", f"unrecognised image signature ({len(data)} bytes, {describe_non_image(data)})"
        )
    limits = _Limits(min_side, max_pixels, max_decoded_bytes)
    if fmt == "jpeg":
        try:
            header = scan_jpeg_header(data)
        except JpegHeaderError as exc:
            raise ImageDecodeError(exc.reason, f"JPEG header: {exc}") from None
        _check_pixels(header.width, header.height, max_pixels)
        if header.components in (1, 3):  # CMYK/YCCK: simplejpeg cannot convert them, Pillow can
            pixels = _decode_jpeg_turbo(data, header, limits, gray=gray)
            if pixels is not None:
                mode = "L" if header.components == 1 else "RGB"
                return DecodedImage(pixels, header.width, header.height, fmt, mode, header.orientation,
                                    header.progressive)
        return _decode_pillow(data, fmt, limits, gray=gray, header=header)
    return _decode_pillow(data, fmt, limits, gray=gray, header=None)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"image header declares {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}",
        )


# Samples per pixel summed over a JPEG's components, by TurboJPEG's subsampling name (chroma planes are smaller).
_JPEG_SAMPLES = {"444": 3.0, "422": 2.0, "440": 2.0, "420": 1.5, "411": 1.5, "441": 1.5, "Gray": 1.0}


def _jpeg_coefficient_bytes(header: JpegHeader, samples_per_pixel: float) -> int:
    """A progressive JPEG's whole-image coefficient buffer: libjpeg keeps every DCT coefficient (2 bytes) of every
    component until the last scan, at full size whatever the output scale."""
    if not header.progressive:
        return 0
    padded = (-(-header.width // 16) * 16) * (-(-header.height // 16) * 16)  # blocks fill whole MCUs
    return int(padded * samples_per_pixel * 2)


def _decode_jpeg_turbo(data: bytes, header: JpegHeader, limits: _Limits, *, gray: bool) -> np.ndarray | None:
    """Decode with libjpeg-turbo; None when its header reader rejects a file Pillow may still read."""
    min_side = limits.min_side
    scale = {"min_height": min_side, "min_width": min_side} if min_side else {}
    try:
        out_height, out_width, _, subsampling = simplejpeg.decode_jpeg_header(data, **scale)
    except ValueError:  # e.g. a subsampling layout TurboJPEG does not name; libjpeg via Pillow handles it
        return None
    samples = _JPEG_SAMPLES.get(subsampling, float(header.components))
    coefficients = _jpeg_coefficient_bytes(header, samples)
    detail = f"JPEG {header.width}x{header.height} {subsampling} decoded at {out_width}x{out_height}"
    if coefficients:
        detail += f"; progressive coefficients {coefficients:,} bytes"
    check_decoded_bytes(
        DecodeSize(out_width, out_height, 1 if gray else 3, extra_bytes=coefficients, detail=detail),
        max_decoded_bytes=limits.max_decoded_bytes, what=f"JPEG ({len(data)} bytes)",
    )
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if gray else "RGB", strict=True, **scale)
    except ValueError as exc:
        message = str(exc)
        reason = "truncated" if "Premature end" in message else "corrupt"
        raise ImageDecodeError(reason, f"JPEG ({len(data)} bytes): {message}") from None
    return pixels[:, :, 0] if gray else pixels


def _decode_pillow(
    data: bytes, fmt: str, limits: _Limits, *, gray: bool, header: JpegHeader | None
) -> DecodedImage:
    what = f"{fmt.upper()} ({len(data)} bytes)"
    min_side = limits.min_side
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
    _check_pixels(width, height, limits.max_pixels)
    mode = image.mode
    progressive = bool(image.info.get("progressive") or image.info.get("progression")
                       or image.info.get("interlace"))
    try:
        if min_side and image.format == "JPEG":
            image.draft(None, (min_side, min_side))  # sets the DCT-scaled size and mode, decodes nothing yet
        factor = min(image.size) // min_side if min_side else 1
        factor = factor if factor >= 2 else 1
        check_decoded_bytes(_pillow_decode_size(image, fmt, data, header, factor),
                            max_decoded_bytes=limits.max_decoded_bytes, what=what)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(_pillow_reason(exc), f"{what}: {exc}") from None
    orientation = header.orientation if header is not None else _pillow_orientation(image)
    pixels = _pillow_rgb_reduced(image, factor)
    if gray:
        import cv2  # noqa: PLC0415 - only the rare non-JPEG inspect path needs it here

        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    return DecodedImage(pixels, width, height, fmt, mode, orientation, progressive)


# Full-size pixel buffers a Pillow decoder holds at once. WebP (AnimDecoder, every file): its canvas, its
# previous-frame canvas, the frame bytes it hands over and Pillow's image, all 4 bytes a pixel (measured 16 B/px).
# AVIF: libavif's YUV planes and RGB(A) output, the bytes handed over and Pillow's image (measured 9.5-12 B/px).
_DECODER_BUFFERS = {"webp": 4, "avif": 3}
# PNG IHDR colour type -> channels (3 is a palette index).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_COLOURS = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def _pillow_decode_size(image: Image.Image, fmt: str, data: bytes, header: JpegHeader | None,
                        factor: int) -> DecodeSize:
    """`DecodeSize` of a lazily opened Pillow image (after `draft`), from its header: nothing is decoded."""
    width, height = image.size
    mode = image.mode
    stored = _stored_bytes_per_pixel(mode)
    channels, sample_bytes, source = _declared_samples(image, fmt, data)
    declared = channels * sample_bytes
    detail = f"{source}: {channels} channel{'s' if channels > 1 else ''} x {sample_bytes} byte" \
             f"{'s' if sample_bytes > 1 else ''}"
    if stored > declared:
        detail += f", held as {mode} in {stored} bytes a pixel"
    extras = []
    if fmt == "tiff":
        extras.append(("TIFF strip/tile buffer", _tiff_buffer_bytes(image, width, declared)))
    if header is not None:  # a JPEG through Pillow: CMYK/YCCK, or a layout TurboJPEG rejects
        extras.append(("progressive coefficients", _jpeg_coefficient_bytes(header, float(header.components))))
    out_w, out_h = -(-width // factor), -(-height // factor)
    extras.append((f"RGB result {out_w}x{out_h}", out_w * out_h * 3))  # beside the decoded image
    extra = sum(n for _, n in extras)
    detail += "".join(f"; {name} {n:,} bytes" for name, n in extras if n)
    buffers = _DECODER_BUFFERS.get(fmt, 1)
    return DecodeSize(width, height, max(stored, declared), buffers=buffers, extra_bytes=extra, detail=detail)


def _stored_bytes_per_pixel(mode: str) -> int:
    """Bytes a pixel of `mode` takes in a Pillow image: one sample for single-band modes, 4 bytes otherwise."""
    try:
        bands = len(ImageMode.getmode(mode).bands)
        sample = np.dtype(ImageMode.getmode(mode).typestr).itemsize
    except (KeyError, TypeError):
        return 4
    return sample if bands == 1 else 4


def _declared_samples(image: Image.Image, fmt: str, data: bytes) -> tuple[int, int, str]:
    """(channels, bytes per sample, source) as the file header declares them; samples under 8 bits count 1 byte."""
    if fmt == "png" and data[12:16] == b"IHDR" and len(data) >= 26:
        bit_depth, colour_type = data[24], data[25]
        channels = _PNG_CHANNELS.get(colour_type, 4)
        name = _PNG_COLOURS.get(colour_type, f"colour type {colour_type}")
        return channels, 2 if bit_depth > 8 else 1, f"PNG {bit_depth}-bit {name}"
    if fmt == "tiff":
        tags = getattr(image, "tag_v2", {})
        bits = tags.get(258, (8,))
        bits = max(bits) if isinstance(bits, tuple) and bits else bits if isinstance(bits, int) else 8
        channels = tags.get(277, len(image.getbands()))
        channels = channels if isinstance(channels, int) and channels > 0 else len(image.getbands())
        return channels, max(1, -(-int(bits) // 8)), f"TIFF {bits}-bit {image.mode}"
    try:
        sample = np.dtype(ImageMode.getmode(image.mode).typestr).itemsize
    except (KeyError, TypeError):
        sample = 1
    return len(image.getbands()), sample, f"{fmt.upper()} {image.mode}"


def _tiff_buffer_bytes(image: Image.Image, width: int, bytes_per_pixel: int) -> int:
    """libtiff decodes one strip or tile at a time into a buffer of its own, in the file's sample layout."""
    tags = getattr(image, "tag_v2", {})
    tile_w, tile_h = tags.get(322), tags.get(323)
    if isinstance(tile_w, int) and isinstance(tile_h, int):
        return tile_w * tile_h * bytes_per_pixel
    rows = tags.get(278, image.size[1])
    rows = min(rows, image.size[1]) if isinstance(rows, int) and rows > 0 else image.size[1]
    return rows * width * bytes_per_pixel


_BAND_PIXELS = 1 << 20
"""Pixels converted at a time: conversion temporaries stay a few MB whatever the image size."""


def _pillow_rgb_reduced(image: Image.Image, factor: int) -> np.ndarray:
    """(ceil(H/factor), ceil(W/factor), 3) uint8 RGB of a loaded image: box-reduced by `factor`, then converted as
    `pillow_to_rgb` does.

    Works one band of rows at a time, so nothing besides the decoded image and the result is full-size (converting
    a whole 16-bit, palette or alpha image used to take several full-size temporaries). Bands are whole multiples of
    `factor` rows, and a box reduce only averages within its block, so the result equals reducing the whole image.
    """
    width, height = image.size
    rows = max(1, _BAND_PIXELS // max(1, width) // factor) * factor
    if rows >= height:
        return pillow_to_rgb(_reduce(image, factor))
    out = np.empty((-(-height // factor), -(-width // factor), 3), np.uint8)
    for top in range(0, height, rows):
        part = _reduce(image.crop((0, top, width, min(height, top + rows))), factor)
        out[top // factor : top // factor + part.height] = pillow_to_rgb(part)
    return out


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """Box-reduce by `factor`; modes Pillow cannot reduce are first converted as `pillow_to_rgb` would."""
    if factor < 2:
        return image
    mode = image.mode
    if mode not in _REDUCIBLE_MODES:
        if mode.startswith("I;16") or mode in ("I", "F"):
            image = Image.fromarray(_gray8(image), "L")
        elif mode == "1":
            image = image.convert("L")
        elif mode in _ALPHA_MODES or "transparency" in image.info:
            image = image.convert("RGBA")  # reduced with premultiplied alpha, composited on white afterwards
        else:
            image = image.convert("RGB")
    return image.reduce(factor)


def pillow_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to (H, W, 3) uint8 RGB.

    Transparency (alpha channel, or a palette/tRNS transparent colour) is composited on white; 16- and 32-bit
    integer gray keeps its high byte (assuming a 16-bit range); float images are clipped to 0..255.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return np.repeat(_gray8(image)[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[:, :, 3:4].astype(np.uint16)
        # out = rgb*a/255 + 255*(1 - a/255) = 255 - (255 - rgb)*a/255, rounded
        inverse = (255 - rgba[:, :, :3]).astype(np.uint16)
        return (255 - (inverse * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def _gray8(image: Image.Image) -> np.ndarray:
    """(H, W) uint8 of a 16/32-bit integer image (its high byte, assuming a 16-bit range) or a float one (clipped
    to 0..255)."""
    wide = np.asarray(image)
    if image.mode == "F":
        return np.clip(wide, 0, 255).astype(np.uint8)
    if wide.dtype.kind == "u" and wide.dtype.itemsize == 2:  # I;16 (either byte order): no clip, no int64 copy
        return (wide >> 8).astype(np.uint8)
    return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)


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
