"""Shared by the user-photo tests (shift, mix): the real OpenCV sample photos and a small content embedder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from visprep.embed.registry import Embedder
from visprep.images.decode import decode_rgb

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
