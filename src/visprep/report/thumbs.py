"""Small inline JPEG thumbnails of stored images, each decoded once per report."""

from __future__ import annotations

import base64
import io
import logging

from visprep.workspace import Workspace

log = logging.getLogger(__name__)

THUMB_PX = 96
"""Longest side of a thumbnail in pixels: at JPEG quality 70 about 2-4 kB each."""


class Thumbnailer:
    """Makes `data:image/jpeg` thumbnails of images in a workspace's store, caching them by image id."""

    def __init__(self, ws: Workspace, *, size: int = THUMB_PX, quality: int = 70,
                 max_pixels: int = 40_000_000) -> None:
        if size < 8:
            raise ValueError(f"thumbnail size must be >= 8 px, got {size!r}")
        self.ws = ws
        self.size = size
        self.quality = quality
        self.max_pixels = max_pixels
        self._cache: dict[str, str | None] = {}
        self.made = 0
        self.failed = 0

    def data_uri(self, image_id: str | None, fmt: str | None) -> str | None:
        """The thumbnail of stored image `image_id` in format `fmt`; None when it is absent or does not decode."""
        if not image_id or not fmt:
            return None
        if image_id not in self._cache:
            self._cache[image_id] = self._make(image_id, fmt)
        return self._cache[image_id]

    def _make(self, image_id: str, fmt: str) -> str | None:
        from PIL import Image

        from visprep.images.decode import decode_rgb
        from visprep.images.sniff import extension_for

        try:
            data = self.ws.store.get(image_id, extension_for(fmt))
            # Decoding at a reduced DCT scale keeps a 4000 px photo as cheap as a small one; the pixel cap refuses
            # decompression bombs from the header, before any pixel is decoded.
            rgb = decode_rgb(data, min_side=self.size, max_pixels=self.max_pixels)
            img = Image.fromarray(rgb)
            img.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=self.quality, optimize=True)
        except (OSError, ValueError) as exc:  # missing file, unknown format, refused or corrupt image
            log.info("report: no thumbnail for image %s (%s): %s", image_id, fmt, exc)
            self.failed += 1
            return None
        self.made += 1
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
