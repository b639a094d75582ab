"""Crop/border-tolerant image signatures and foreground colours of image rows, for the candidate pairs' checks.

The signature itself (`visprep.images.signature`: trimmed, trimmed centre 70 % and centre 50 % pHashes, foreground
CIELAB colour) is computed once per image by `inspect` and stored in the `images` table; dedup reads it from there.
`image_signature` recomputes it from encoded bytes through the same code (`inspect_image`), for images inspected
before those columns existed or at another trimming tolerance (docs/dedup.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from visprep.images.decode import DEFAULT_MAX_PIXELS
from visprep.images.facts import inspect_image, small_rgb
from visprep.images.signature import (
    CODE_COLUMNS,
    CODES,
    COLOR_COLUMNS,
    TRIM_TOLERANCE,
    signature_of_rgb,
    trim_box,
)
from visprep.workspace import image_file

__all__ = [
    "CODES",
    "Signatures",
    "color_distance",
    "image_signature",
    "image_signatures",
    "normalize_color",
    "signature_batch",
    "signature_row",
    "signatures_from_table",
    "trim_box",
]


@dataclass(frozen=True)
class Signatures:
    """Per image row: its `CODES` pHashes, foreground colour (L* minus the backdrop's L*, a*, b*; OpenCV 8-bit Lab scale)
    and whether it is known."""

    codes: np.ndarray  # (M, len(CODES)) uint64
    color: np.ndarray  # (M, 3) float32
    ok: np.ndarray  # (M,) bool

    @classmethod
    def empty(cls, n_rows: int) -> Signatures:
        """`n_rows` unknown signatures."""
        return cls(codes=np.zeros((n_rows, len(CODES)), np.uint64), color=np.full((n_rows, 3), np.nan, np.float32),
                   ok=np.zeros(n_rows, bool))


def image_signature(data: bytes, *, tolerance: int = TRIM_TOLERANCE,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[int], np.ndarray]:
    """(the `CODES` pHashes, foreground median Lab colour with L* relative to the backdrop) of encoded image bytes,
    exactly as `inspect` stores them; ValueError (ImageDecodeError) when they do not decode."""
    if tolerance == TRIM_TOLERANCE:
        info = inspect_image(data, max_pixels=max_pixels)
        return list(info.signature_codes), np.asarray(info.fg_color, np.float32)
    return signature_of_rgb(small_rgb(data, max_pixels=max_pixels), tolerance=tolerance)


def signatures_from_table(table: pa.Table) -> Signatures:
    """The signatures in an `images`-like table's `CODE_COLUMNS` and `COLOR_COLUMNS`, one per row; a row with any of
    them null is unknown (inspected before they existed)."""
    n = table.num_rows
    sig = Signatures.empty(n)
    ok = np.ones(n, bool)
    for k, name in enumerate(CODE_COLUMNS):
        col = table.column(name)
        ok &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        sig.codes[:, k] = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
    for k, name in enumerate(COLOR_COLUMNS):
        col = table.column(name)
        ok &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        sig.color[:, k] = col.fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
    sig.ok[:] = ok
    sig.color[~ok] = np.nan
    return sig


def signature_batch(items: Sequence[tuple[str, str]], *, tolerance: int = TRIM_TOLERANCE) -> list[dict]:
    """Signature rows of `(image_id, path)` items, one per item (`signature_row`): what dedup computes for the image
    rows of its candidate pairs that have no stored signature. Nothing is written; a bad item never raises."""
    return [signature_row(image_id, image_file(path).read_bytes, tolerance=tolerance) for image_id, path in items]


def signature_row(image_id: str, read: Callable[[], bytes], *, tolerance: int = TRIM_TOLERANCE) -> dict:
    """{image_id, status, reason, the `CODE_COLUMNS` and `COLOR_COLUMNS`} of one image whose bytes `read()` returns:
    status "ok", "unreadable" (reading raised OSError or ValueError) or "undecodable" (signature columns null, reason says why)."""
    empty = dict.fromkeys(CODE_COLUMNS + COLOR_COLUMNS)
    try:
        data = read()
    except (OSError, ValueError) as exc:
        return {"image_id": image_id, "status": "unreadable", "reason": f"{image_id}: {type(exc).__name__}: {exc}",
                **empty}
    try:
        code, col = image_signature(data, tolerance=tolerance)
    except (OSError, ValueError, cv2.error) as exc:  # ImageDecodeError is a ValueError
        return {"image_id": image_id, "status": "undecodable", "reason": f"{image_id}: {type(exc).__name__}: {exc}",
                **empty}
    return {"image_id": image_id, "status": "ok", "reason": None, **dict(zip(CODE_COLUMNS, (int(c) for c in code))),
            **dict(zip(COLOR_COLUMNS, (float(c) for c in col)))}


def image_signatures(load: Callable[[int], bytes], rows: Sequence[int], n_rows: int, *, workers: int = 2,
                     tolerance: int = TRIM_TOLERANCE,
                     compute: Callable[[list[int]], list[dict]] | None = None) -> Signatures:
    """Signatures of image rows `rows` (of `n_rows`), loading each row's bytes with `load(row)` (`signature_row`);
    other rows and rows that fail to load or decode get ok = False. Threads: the JPEG decode and OpenCV release the
    GIL. With `compute`, the rows' `signature_row`s come from it instead (one per row, in order: an engine's
    workers decode them, `signature_batch`), and `load` is not called."""
    out = Signatures.empty(n_rows)

    def one(row: int) -> tuple[int, dict]:
        return row, signature_row(str(row), lambda: load(row), tolerance=tolerance)

    rows = [int(r) for r in rows]
    if compute is not None:
        results = list(zip(rows, compute(rows), strict=True))
    elif workers > 1 and len(rows) > 64:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, rows, chunksize=32))
    else:
        results = [one(r) for r in rows]
    for row, res in results:
        if res["status"] == "ok":
            out.codes[row] = np.asarray([res[c] for c in CODE_COLUMNS], np.uint64)
            out.color[row] = np.asarray([res[c] for c in COLOR_COLUMNS], np.float32)
            out.ok[row] = True
    return out


def color_distance(a: np.ndarray, b: np.ndarray, *, lightness_weight: float = 0.0) -> np.ndarray:
    """Distance of (N, 3) colours from `image_signature`: Euclidean over (w * L, a*, b*); NaN where either is
    unknown."""
    d = (a - b).astype(np.float32)
    return np.sqrt(d[:, 1] ** 2 + d[:, 2] ** 2 + (lightness_weight * d[:, 0]) ** 2).astype(np.float32)


def normalize_color(value: str | None) -> str | None:
    """A declared colour (or brand) compared across products: lower-cased words; '' and None are 'not declared'."""
    if value is None:
        return None
    words = " ".join(value.casefold().replace("-", " ").replace("/", " ").split())
    return words or None
