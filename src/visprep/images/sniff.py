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


def sniff_format(head: bytes) -> str | None:
    """Return the image format ("jpeg", "png", "webp", "gif", "bmp", "tiff", "avif") of `head`, or None."""
    for magic, offset, name, _ in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def extension_for(fmt: str) -> str:
    """Return the file extension the image store uses for format `fmt` (as returned by `sniff_format`)."""
    for _, _, name, ext in _SIGNATURES:
        if name == fmt:
            return ext
    if fmt in ("webp", "avif"):
        return fmt
    raise ValueError(f"unknown image format {fmt!r}")
