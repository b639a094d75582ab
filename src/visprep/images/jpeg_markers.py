"""Read a JPEG's header segments (size, progressive flag, EXIF orientation) without decoding any pixels.

Walking the marker segments in Python costs a few microseconds, much less than `PIL.Image.open`, and it is the
only place where we learn the EXIF orientation and the progressive flag on the fast (simplejpeg) path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_EXIF_ORIENTATION_TAG = 0x0112
# Start-of-frame markers; C4 (DHT), C8 (JPG extension) and CC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# Markers without a length field: TEM, RST0..RST7 (SOI and EOI are handled explicitly).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class JpegHeaderError(ValueError):
    """The JPEG header segments cannot be walked.

    Attributes:
        reason: "truncated" when the data ends inside the header, "corrupt" when a segment is malformed.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class JpegHeader:
    """What the header segments of a JPEG say, before EXIF orientation is applied.

    Attributes:
        width: stored width in pixels (SOF), before EXIF orientation.
        height: stored height in pixels (SOF).
        components: 1 (grayscale), 3 (YCbCr or RGB) or 4 (CMYK or YCCK).
        progressive: True for a progressive (SOF2/6/10/14) frame.
        orientation: EXIF orientation 1..8; 1 when absent or unreadable.
        adobe_transform: the APP14 "Adobe" colour transform byte, None when there is no such segment.
    """

    width: int
    height: int
    components: int
    progressive: bool
    orientation: int
    adobe_transform: int | None


def scan_jpeg_header(data: bytes) -> JpegHeader:
    """Walk the marker segments of a JPEG up to the first start-of-scan.

    Args:
        data: the whole file, or at least its header segments; must start with the SOI marker FF D8.

    Returns:
        The header facts; see `JpegHeader`.

    Raises:
        JpegHeaderError: the data is not a JPEG, ends inside the header ("truncated"), or has a malformed
            segment or no frame header before the scan ("corrupt").
    """
    view = memoryview(data)
    size = len(view)
    if size < 4 or view[0] != 0xFF or view[1] != 0xD8:
        raise JpegHeaderError("corrupt", f"not a JPEG: starts with {bytes(view[:4])!r}, expected FF D8")
    pos = 2
    frame: tuple[int, int, int, bool] | None = None
    orientation = 1
    adobe_transform: int | None = None
    while True:
        if pos >= size:
            raise JpegHeaderError("truncated", f"JPEG ends at byte {size} inside the header segments")
        if view[pos] != 0xFF:
            raise JpegHeaderError(
                "corrupt", f"JPEG marker expected at byte {pos}, found 0x{view[pos]:02X}"
            )
        while pos < size and view[pos] == 0xFF:  # fill bytes may pad any marker
            pos += 1
        if pos >= size:
            raise JpegHeaderError("truncated", f"JPEG ends at byte {size} inside a marker")
        marker = view[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker < 0xC0:  # 0x02..0xBF are reserved: this is not a JPEG header, whatever its first bytes say
            raise JpegHeaderError("corrupt", f"invalid JPEG marker 0x{marker:02X} at byte {pos - 1}")
        if marker == 0xD9:
            raise JpegHeaderError("corrupt", "JPEG end-of-image marker before any scan")
        if pos + 2 > size:
            raise JpegHeaderError("truncated", f"JPEG ends at byte {size} inside segment 0x{marker:02X}")
        length = (view[pos] << 8) | view[pos + 1]
        if length < 2:
            raise JpegHeaderError("corrupt", f"JPEG segment 0x{marker:02X} at byte {pos} has length {length}")
        if marker == 0xDA:  # start of scan: the header is over
            break
        end = pos + length
        if end > size:
            raise JpegHeaderError(
                "truncated", f"JPEG segment 0x{marker:02X} needs {end} bytes, the data has {size}"
            )
        payload = view[pos + 2 : end]
        if marker in _SOF_MARKERS and frame is None:
            if len(payload) < 6:
                raise JpegHeaderError("corrupt", f"JPEG frame header 0x{marker:02X} is {len(payload)} bytes")
            height = (payload[1] << 8) | payload[2]
            width = (payload[3] << 8) | payload[4]
            frame = (width, height, payload[5], marker in _PROGRESSIVE_SOF)
        elif marker == 0xE1 and orientation == 1 and bytes(payload[:6]) == b"Exif\x00\x00":
            orientation = orientation_from_tiff(bytes(payload[6:]))
        elif marker == 0xEE and bytes(payload[:5]) == b"Adobe" and len(payload) >= 12:
            adobe_transform = payload[11]
        pos = end
    if frame is None:
        raise JpegHeaderError("corrupt", "JPEG has no frame header (SOF) before its first scan")
    width, height, components, progressive = frame
    if width == 0 or height == 0:
        # A zero height means "defined by a later DNL marker"; libjpeg-turbo does not support that either.
        raise JpegHeaderError("corrupt", f"JPEG frame header declares size {width}x{height}")
    return JpegHeader(width, height, components, progressive, orientation, adobe_transform)


def orientation_from_tiff(tiff: bytes) -> int:
    """Return the EXIF orientation (1..8) stored in IFD0 of a TIFF-structured EXIF block, 1 when unreadable.

    Args:
        tiff: the EXIF payload after the "Exif\\0\\0" prefix (byte-order mark, magic 42, IFD0 offset, ...).
    """
    if tiff[:2] == b"II":
        endian = "<"
    elif tiff[:2] == b"MM":
        endian = ">"
    else:
        return 1
    try:
        (ifd,) = struct.unpack_from(endian + "I", tiff, 4)
        (count,) = struct.unpack_from(endian + "H", tiff, ifd)
        for index in range(count):
            entry = ifd + 2 + 12 * index
            tag, kind = struct.unpack_from(endian + "HH", tiff, entry)
            if tag != _EXIF_ORIENTATION_TAG:
                continue
            if kind == 3:  # SHORT, the type the standard prescribes
                (value,) = struct.unpack_from(endian + "H", tiff, entry + 8)
            elif kind == 4:  # LONG, written by a few broken encoders
                (value,) = struct.unpack_from(endian + "I", tiff, entry + 8)
            else:
                return 1
            return value if 1 <= value <= 8 else 1
    except struct.error:  # offsets pointing past the block: a damaged EXIF must never fail the image
        return 1
    return 1
