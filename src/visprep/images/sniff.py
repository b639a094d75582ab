"""Recognise an image format from its leading bytes, never from a URL or a Content-Type header."""

from __future__ import annotations

# (magic prefix, offset, format name, file extension)
_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png", "png"),
    (b"GIF87a", 0, "gif", "gif"),
    (b"GIF89a", 0, "gif", "gif"),
    (b"BM", 0, "bmp", "bmp"),
    (b"II*\x00", 0, "tiff", "tif"),
    (b"MM\x00*", 0, "tiff", "tif"),
)

SNIFF_BYTES = 32
"""How many leading bytes `sniff_format` needs to decide."""

_DESCRIBE_BYTES = 512
# (start after leading whitespace, lower-cased; description): fixed words, so no byte of the data is repeated.
_NON_IMAGE_KINDS: tuple[tuple[bytes, str], ...] = (
    (b"<!doctype html", "looks like HTML"),
    (b"<html", "looks like HTML"),
    (b"<?xml", "looks like XML"),
    (b"<svg", "looks like SVG, which is not supported"),
    (b"{", "looks like JSON"),
    (b"[", "looks like JSON"),
    (b"%pdf", "looks like PDF"),
    (b"\x1f\x8b", "looks like gzip data"),
    (b"pk\x03\x04", "looks like a ZIP archive"),
)

# BITMAPINFOHEADER sizes the decoder (Pillow) reads: OS/2 1.x, Windows 3.x and its v4/v5 and OS/2 2.x variants.
_BMP_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def sniff_format(head: bytes) -> str | None:
    """Return the image format ("jpeg", "png", "webp", "gif", "bmp", "tiff", "avif") of `head`, or None."""
    for magic, offset, name, _ in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if name == "bmp" and not _is_bmp_header(head):
                continue
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def describe_non_image(data: bytes | bytearray) -> str:
    """Say what data that is no known image looks like ("looks like HTML", "text", "binary data").

    For reasons and logs: only fixed words come back, never a byte of `data`, which may be a secret file or a
    hostile server's body. Reads at most the first 512 bytes.
    """
    head = bytes(data[:_DESCRIBE_BYTES])
    start = head.lstrip(b" \t\r\n\xef\xbb\xbf").lower()  # whitespace and a UTF-8 byte-order mark
    for prefix, kind in _NON_IMAGE_KINDS:
        if start.startswith(prefix):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return "binary data"
        text = head[: exc.start].decode("utf-8")  # a multi-byte character cut by the 512-byte sample
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return "text" if printable >= 0.95 * max(1, len(text)) else "binary data"


def _is_bmp_header(head: bytes) -> bool:
    """Whether a "BM" start is followed by a bitmap header: two bytes of magic alone would let any text file that
    happens to start with "BM" (a key, a note) pass as an image and be stored whole."""
    if len(head) < 18:
        return False
    return int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES


def extension_for(fmt: str) -> str:
    """Return the file extension the image store uses for format `fmt` (as returned by `sniff_format`)."""
    for _, _, name, ext in _SIGNATURES:
        if name == fmt:
            return ext
    if fmt in ("webp", "avif"):
        return fmt
    raise ValueError(f"unknown image format {fmt!r}")
