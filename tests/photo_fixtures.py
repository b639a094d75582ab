"""Shared by the user-photo tests (shift, mix): the real OpenCV sample photos and a small content embedder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from visprep.embed.registry import Embedder
from visprep.images.decode import ImageDecodeError, decode_rgb
from visprep.quality.shift import simulate_upload
from visprep.schema import QUERIES
from visprep.workspace import Workspace

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
#: Photos the demo catalog already uses (not to be reused as user photos).
IN_DEMO = {"box.png", "box_in_scene.png", "Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg"}


class ThumbEmbedder(Embedder):
    """A small content embedder: the 16 x 16 RGB thumbnail (a real function of the pixels, unlike a hash)."""

    dim = 768
    modality = "image"
    model_id = "thumb16@test"

    def _embed(self, inputs):
        out = [cv2.resize(decode_rgb(bytes(d), min_side=32), (16, 16), interpolation=cv2.INTER_AREA)
               .astype(np.float32).ravel() / 255.0 for d in inputs]
        return np.stack(out) - 0.5


def write_user_photos(ws: Workspace, photos: list[Path], *, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Store `photos` degraded as phone uploads and write them to `tables/queries` as the queries stage leaves
    accepted uploads (cleaned image in the store, sha256 of the bytes as uploaded); return the rows."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for p in photos:
        raw = p.read_bytes()
        try:
            rgb = decode_rgb(raw)
        except ImageDecodeError:  # a sample file the decoder refuses is not a user photo
            continue
        image_id = ws.store.put(simulate_upload(rgb, rng), "jpg")
        rows.append({"source": str(p), "input_sha256": hashlib.sha256(raw).hexdigest(), "image_id": image_id,
                     "status": "accepted", "width": 0, "height": 0})
        if limit is not None and len(rows) == limit:
            break
    ws.write_table("queries", pa.Table.from_pylist(rows, schema=QUERIES))
    return rows
