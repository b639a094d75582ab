"""A small hand-built workspace (no pipeline run): products, stored images, urls and images tables."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from visprep.schema import IMAGES, PRODUCT_IMAGES, PRODUCTS, URLS
from visprep.workspace import Workspace, utcnow

CATEGORIES = [("Apparel", "Apparel>Tops"), ("Apparel", "Apparel>Coats"), ("Footwear", "Footwear>Boots")]


def png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def tiny_workspace(root: Path, *, n_products: int = 12, config: str = "") -> Workspace:
    """`n_products` products p00.. with one stored PNG each (urls are fake local paths), 3 categories,
    families of two (p00/p01, p02/p03, ...)."""
    ws = Workspace(root)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.config_path.write_text(config)
    prods, pimgs, urls, imgs = [], [], [], []
    for i in range(n_products):
        pid = f"p{i:02d}"
        top, cat = CATEGORIES[i % 3]
        url = str(root / "src" / f"{pid}.png")
        iid = ws.store.put(png(i), "png")
        prods.append({"product_id": pid, "title": f"product {i}", "category": cat, "top_category": top,
                      "category_path": cat.split(">"), "attributes": json.dumps({"family_id": f"f{i // 2}"}),
                      "image_urls": [url]})
        pimgs.append({"product_id": pid, "position": 0, "url": url, "source": "catalog"})
        urls.append({"url": url, "status": "ok", "image_id": iid, "format": "png", "bytes": 1, "attempts": 1,
                     "fetched_at": utcnow()})
        imgs.append({"image_id": iid, "status": "ok", "format": "png"})
    ws.write_table("products", pa.Table.from_pylist(prods, schema=PRODUCTS))
    ws.write_table("product_images", pa.Table.from_pylist(pimgs, schema=PRODUCT_IMAGES))
    ws.write_table("urls", pa.Table.from_pylist(urls, schema=URLS))
    ws.write_table("images", pa.Table.from_pylist(imgs, schema=IMAGES))
    return ws


def image_id_of(ws: Workspace, pid: str) -> str:
    u = ws.latest_urls()
    by_url = dict(zip(u.column("url").to_pylist(), u.column("image_id").to_pylist()))
    pi = ws.read_table("product_images")
    return by_url[dict(zip(pi.column("product_id").to_pylist(), pi.column("url").to_pylist()))[pid]]
