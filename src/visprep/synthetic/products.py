"""Synthetic colour variants as products: ids, colour names, `products` rows and the link to their source.

A colour variant (grade 3, "same style, different colour") is another SKU, so it is a row of `products` of its
own: ``source_file = "synthetic"``, ``color`` = its new colour, and ``attributes.synthetic`` = where it came from
(``source_product_id``, ``source_image_id``, ``op``, ``recipe``, ``generator``). The split stage reads that link
to put a variant in its source's group (same split, never a negative of it); catalog re-ingest keeps a variant
while its source product exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SYNTHETIC_SOURCE_FILE = "synthetic"
"""`products.source_file` of synthetic products (catalog files are absolute paths, so it cannot collide)."""

# Hue bins (degrees, upper bounds) of the basic colour names; red wraps around 360.
_HUE_NAMES = ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
              (290, "purple"), (345, "pink"), (360, "red"))


def variant_product_id(source_product_id: str, op: str, recipe_json: str) -> str:
    """Deterministic id of a variant: the source id, the op and a hash of the full recipe."""
    return f"{source_product_id}~{op}-{hashlib.sha256(recipe_json.encode()).hexdigest()[:10]}"


def color_name(rgb: np.ndarray, mask: np.ndarray | None = None) -> str:
    """Basic colour name (red, orange, ..., white, grey, black, brown) of the pixels of `rgb` under `mask`.

    Chromatic pixels vote for their hue weighted by saturation (a circular mean, so reds on both sides of 0°
    agree); a mostly grey product is named by its median brightness.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"color_name needs (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.float64)
    if mask is not None:
        hsv = hsv[np.asarray(mask, bool).reshape(-1)]
    if len(hsv) == 0:
        raise ValueError("color_name: the mask selects no pixel")
    h, s, v = hsv[:, 0] * (2 * np.pi / 256.0), hsv[:, 1] / 255.0, hsv[:, 2] / 255.0
    chroma = s * v  # dark pixels carry no reliable hue
    if np.median(chroma) < 0.12:
        med_v = float(np.median(v))
        return "black" if med_v < 0.25 else "white" if med_v > 0.8 else "grey"
    angle = float(np.degrees(np.arctan2((chroma * np.sin(h)).sum(), (chroma * np.cos(h)).sum())) % 360.0)
    name = next(n for bound, n in _HUE_NAMES if angle < bound)
    if name in ("orange", "red") and float(np.median(v[chroma >= 0.12])) < 0.5:
        return "brown"
    return name


def _swap_color(text: str | None, old: str | None, new: str) -> str | None:
    """`text` with the word `old` replaced by `new` (case-insensitive, whole words); unchanged without `old`."""
    if not text or not old:
        return text
    return re.sub(rf"\b{re.escape(old)}\b", new, text, flags=re.IGNORECASE)


def variant_color(new_name: str, source_color: str | None, hue_shift_deg: float | None) -> str:
    """The declared colour of a variant: its colour name, qualified when it reads like the source's."""
    if source_color and new_name.lower() == source_color.strip().lower():
        return f"{new_name} (hue {hue_shift_deg:+g} deg)" if hue_shift_deg is not None else f"{new_name} (variant)"
    return new_name


def variant_product_row(source: dict[str, Any], *, product_id: str, color: str, url: str, source_image_id: str,
                        op: str, recipe: dict[str, Any], generator: str, updated_run: str) -> dict[str, Any]:
    """The `products` row of one colour variant: the source's row, recoloured, marked synthetic, linked to it."""
    old_color = source.get("color")
    title = _swap_color(source["title"], old_color, color)
    if title == source["title"]:
        title = f"{source['title']} ({color})"
    try:
        attributes = json.loads(source["attributes"]) if source.get("attributes") else {}
    except json.JSONDecodeError:
        attributes = {"source_attributes": source["attributes"]}
    if not isinstance(attributes, dict):
        attributes = {"source_attributes": attributes}
    attributes["synthetic"] = {"source_product_id": source["product_id"], "source_image_id": source_image_id,
                               "op": op, "recipe": recipe, "generator": generator}
    row = {**source, "product_id": product_id, "title": title, "color": color,
           "description": _swap_color(source.get("description"), old_color, color),
           "inventory": None, "image_urls": [url], "attributes": json.dumps(attributes, sort_keys=True),
           "source_file": SYNTHETIC_SOURCE_FILE, "source_line": None}
    content = {k: v for k, v in row.items() if k not in ("row_hash", "updated_run")}
    row["row_hash"] = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    row["updated_run"] = updated_run
    return row


def is_synthetic_product(products: pa.Table) -> pa.ChunkedArray:
    """Boolean mask of the synthetic rows of a `products` table (needs its `source_file` column)."""
    return pc.fill_null(pc.equal(products.column("source_file"), SYNTHETIC_SOURCE_FILE), False)


def synthetic_sources(products: pa.Table) -> dict[str, str]:
    """Synthetic product id -> its source product id, read from `attributes.synthetic` (needs product_id,
    source_file and attributes)."""
    syn = products.filter(is_synthetic_product(products))
    if syn.num_rows == 0:
        return {}
    from visprep.views.db import connect

    con = connect()
    try:
        con.register("p", syn.select(["product_id", "attributes"]))
        rows = con.sql("SELECT product_id, json_extract_string(attributes, '$.synthetic.source_product_id') "
                       "FROM p").fetchall()
    finally:
        con.close()
    return {pid: src for pid, src in rows if src}


def is_stage_view_row(product_images: pa.Table, store_uri: str) -> pa.ChunkedArray:
    """Boolean mask of the `product_images` rows the synth stage wrote: ``source = "synthetic"`` and a URL in
    the workspace's image store (`store_uri`), unlike synthetic images a catalog file declares itself."""
    prefix = store_uri.rstrip("/") + "/"
    return pc.and_(pc.fill_null(pc.equal(product_images.column("source"), "synthetic"), False),
                   pc.fill_null(pc.starts_with(product_images.column("url"), prefix), False))
