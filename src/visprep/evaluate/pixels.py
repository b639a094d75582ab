"""A pixel baseline "embedding": each image downsampled to a tiny RGB thumbnail, flattened and mean-centred.

It is NOT a trained model: it exists so the evaluation path can be exercised (and numbers printed) before an
embedder exists. Any trained embedder should beat it by a wide margin.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from visprep.images.sniff import extension_for
from visprep.workspace import Workspace


def pixel_vector(data: bytes, *, size: int = 8) -> np.ndarray | None:
    """(size*size*3,) float32 vector of an encoded image, or None when it does not decode."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1) / 255.0
    return small - small.mean()


def pixel_embeddings(ws: Workspace, images: Sequence[tuple[str, str]], *, sizes: Sequence[int] = (8,)
                     ) -> dict[int, tuple[list[str], np.ndarray]]:
    """Embed stored images given as (image_id, format) at each thumbnail size, decoding each image once;
    images that fail to decode are skipped. Returns size -> (ids, (n, size*size*3) float32)."""
    out: dict[int, tuple[list[str], list[np.ndarray]]] = {s: ([], []) for s in sizes}
    for iid, fmt in images:
        img = cv2.imdecode(np.frombuffer(ws.store.get(iid, extension_for(fmt)), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            continue
        for s in sizes:
            small = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1) / 255.0
            out[s][0].append(iid)
            out[s][1].append(small - small.mean())
    return {s: (ids, np.stack(rows) if rows else np.zeros((0, s * s * 3), np.float32))
            for s, (ids, rows) in out.items()}


def workspace_images(ws: Workspace) -> list[tuple[str, str]]:
    """(image_id, format) of every stored catalog image that decodes, and of every eval query image."""
    t = ws.sql("SELECT DISTINCT u.image_id, u.format FROM u JOIN i ON i.image_id = u.image_id AND i.status = 'ok' "
               "WHERE u.status = 'ok' ORDER BY 1", u=ws.latest_urls(), i=ws.read_table("images", ["image_id", "status"]))
    out = dict(zip(t.column("image_id").to_pylist(), t.column("format").to_pylist()))
    q = ws.read_table("eval_queries", ["query_id", "format"])
    for iid, fmt in zip(q.column("query_id").to_pylist(), q.column("format").to_pylist()):
        if fmt:
            out.setdefault(iid, fmt)
    return sorted(out.items())
