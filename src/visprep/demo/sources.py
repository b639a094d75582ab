"""Write a realistic, deliberately imperfect demo product catalog (spec "Source 1" and "Source 4").

`write_demo_sources` turns the bundled real data into a catalog a visual-search pipeline can ingest offline:

* **Products.** Each Fashion-MNIST garment (a real Zalando photo) becomes a *style*; a style is sold in 1–3
  colours, each colour its own SKU, all sharing one ``family_id`` (grade 3, "same style, different colour",
  between them). The catalog ("hero") image of a SKU is the garment colourised and composited on a light
  studio backdrop (``source="catalog"``, standing in for the studio photo). Each SKU also has 1–3 further
  views made by `visprep.synthetic.views` from its hero (``source="synthetic"``, with the recipe). The two
  OpenCV same-object photo pairs become two more products with two REAL views each (``source="catalog"``).
* **Image references** are a mix of paths relative to the catalog file, absolute paths and ``file://`` URLs. A
  few "marketplace" SKUs reuse another SKU's very image file (same path, another spelling) or a byte-identical
  copy of it, to exercise content-addressed dedup.
* **Catalog files** in three formats, each holding a different part of the catalog (like feeds from different
  systems): ``catalog_main.csv``, ``catalog_feed.jsonl``, ``catalog_partner.parquet``.
* **Bad input**, one or two rows per reason in `BAD_ROW_REASONS`, so the quarantine has something to show.

Columns (all formats): product_id, title, description, category ('>'-separated taxonomy path), brand, color,
material, size, price (decimal string), seller, inventory (int), season (an extra attribute column),
family_id, image_urls (list), image_sources (list, parallel: "catalog" | "synthetic"), image_recipes (list,
parallel: recipe or null). In the CSV the three lists are JSON text; in JSONL they are JSON arrays (recipes
are objects); in Parquet they are list<string> (recipes as JSON text, null for catalog images). Missing values
are empty strings in the CSV and nulls elsewhere.

A synthetic image's recipe is ``{"derived_from": <hero path relative to image_dir>, "mask":
"studio_clipping_path", "steps": [<op recipe>, ...]}``, each step as returned by `visprep.synthetic.views`;
the mask of a ``replace_background`` step is the hero's rendering opacity > 0.5 (what a studio's clipping path
gives; `visprep.synthetic.views.foreground_mask` on the hero recovers nearly the same mask), moved along by a
preceding ``reframe`` step.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visprep.demo import FashionMnistSubset, data_dir, load_fashion_mnist_subset
from visprep.synthetic.views import reframe, replace_background, upscale

BAD_ROW_REASONS: dict[str, str] = {
    "missing_product_id": "row without a product_id (empty in the CSV)",
    "missing_title": "row whose title is null (JSONL)",
    "no_images": "row whose image_urls list is empty (JSONL)",
    "bad_price": "row whose price '12,3x' is not a decimal number (Parquet)",
    "conflicting_duplicate_sku": "two rows (CSV and JSONL) with one product_id but different title and "
    "price; neither can be trusted, so both count",
    "invalid_utf8": "CSV row whose title holds a Latin-1 byte (0xE9) that is not valid UTF-8",
    "corrupt_image": "product whose only image is a JPEG truncated mid-scan (no EOI marker): strict decoders "
    "(PIL Image.load, simplejpeg) reject it, cv2.imdecode fills the rest grey with only a warning",
    "not_an_image": "product whose only image is an HTML error page saved as .jpg",
}
"""Reason codes of `DemoSources.expected_bad_rows`, with what the demo writes for each (counts are rows)."""

CATALOG_FILES = ("catalog_main.csv", "catalog_feed.jsonl", "catalog_partner.parquet")
COLUMNS = (
    "product_id", "title", "description", "category", "brand", "color", "material", "size", "price", "seller",
    "inventory", "season", "family_id", "image_urls", "image_sources", "image_recipes",
)
HERO_SIZE = 256
_GARMENT_SIZE = 224
_STUDIO_TOP = (248, 247, 245)
_STUDIO_BOTTOM = (232, 231, 228)
_MIN_PRODUCTS = 20
_MAX_PRODUCTS = 4000
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class DemoSources:
    """What `write_demo_sources` wrote, and what a correct pipeline should find in it.

    Attributes:
        root: the destination directory.
        catalog_files: the catalog files (CSV, JSONL, Parquet), in that order.
        image_dir: directory holding every image file.
        n_products: distinct good products (SKUs) a correct ingest keeps.
        expected_bad_rows: reason code (see `BAD_ROW_REASONS`) -> number of catalog rows.
        corrupt_images: image files that exist but are not decodable images.
        n_exact_duplicate_rows: rows repeating another row exactly (same SKU, same content): harmless, merged.
        n_families: distinct family_id values among good products.
        n_images: distinct image files referenced by good products.
        opencv_product_ids: SKUs of the products with two real photos each.
        shared_image_product_ids: SKUs whose image is another SKU's file or a byte-identical copy of it.
    """

    root: Path
    catalog_files: list[Path]
    image_dir: Path
    n_products: int
    expected_bad_rows: dict[str, int]
    corrupt_images: list[Path]
    n_exact_duplicate_rows: int = 0
    n_families: int = 0
    n_images: int = 0
    opencv_product_ids: list[str] = field(default_factory=list)
    shared_image_product_ids: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ vocabulary

_CLASS_INFO: dict[int, dict[str, Any]] = {
    0: {
        "category": "Apparel > Tops > T-shirts", "code": "TSH",
        "nouns": ["T-Shirt", "Tee", "Top", "Tank Top"],
        "styles": ["Crew-Neck", "V-Neck", "Relaxed-Fit", "Slim-Fit", "Boxy", "Ribbed", "Pocket"],
        "materials": ["Cotton", "Organic Cotton", "Jersey", "Linen-Blend", "Modal"],
        "sizes": ["XS-XL", "S-XXL", "S-L"], "price": (9.0, 45.0),
        "features": ["Soft single-jersey knit with a clean finish", "Taped neck seam that keeps its shape",
                     "Cut for easy layering"],
    },
    1: {
        "category": "Apparel > Bottoms > Trousers", "code": "TRS",
        "nouns": ["Trousers", "Chinos", "Joggers", "Wide-Leg Pants", "Slacks"],
        "styles": ["Straight-Leg", "Tapered", "High-Rise", "Pleated", "Drawstring"],
        "materials": ["Cotton Twill", "Wool-Blend", "Stretch Denim", "Linen", "Corduroy"],
        "sizes": ["W28-W38", "XS-XL", "EU 34-46"], "price": (29.0, 120.0),
        "features": ["Belt loops and a zip fly", "Side pockets and two back welt pockets",
                     "A touch of stretch for comfort"],
    },
    2: {
        "category": "Apparel > Tops > Pullovers", "code": "PUL",
        "nouns": ["Pullover", "Sweater", "Jumper", "Sweatshirt"],
        "styles": ["Crew-Neck", "Cable-Knit", "Oversized", "Roll-Neck", "Fine-Gauge"],
        "materials": ["Merino Wool", "Cashmere-Blend", "Cotton Fleece", "Lambswool", "Recycled Polyester"],
        "sizes": ["XS-XL", "S-XXL"], "price": (25.0, 160.0),
        "features": ["Ribbed cuffs and hem", "Dropped shoulders for a relaxed drape",
                     "Brushed inside for warmth"],
    },
    3: {
        "category": "Apparel > Dresses", "code": "DRS",
        "nouns": ["Dress", "Midi Dress", "Maxi Dress", "Shift Dress", "Wrap Dress"],
        "styles": ["Sleeveless", "A-Line", "Pleated", "Belted", "Tiered"],
        "materials": ["Viscose", "Silk-Blend", "Cotton Poplin", "Crepe", "Linen"],
        "sizes": ["XS-XL", "EU 34-44"], "price": (35.0, 190.0),
        "features": ["Concealed side zip", "Fully lined bodice", "Falls just below the knee"],
    },
    4: {
        "category": "Apparel > Outerwear > Coats", "code": "COA",
        "nouns": ["Coat", "Parka", "Overcoat", "Trench Coat", "Puffer Jacket"],
        "styles": ["Double-Breasted", "Hooded", "Quilted", "Longline", "Belted"],
        "materials": ["Wool", "Water-Repellent Nylon", "Cotton Gabardine", "Recycled Down", "Wool-Cashmere"],
        "sizes": ["XS-XL", "S-XXL"], "price": (79.0, 390.0),
        "features": ["Two-way front zip under a storm flap", "Inner chest pocket", "Warm, breathable lining"],
    },
    5: {
        "category": "Footwear > Sandals", "code": "SAN",
        "nouns": ["Sandals", "Slides", "Strappy Sandals", "Espadrilles"],
        "styles": ["Flat", "Cross-Strap", "Platform", "Buckled", "Slingback"],
        "materials": ["Leather", "Suede", "Vegan Leather", "Canvas", "Rubber"],
        "sizes": ["EU 36-42", "EU 37-41", "EU 39-46"], "price": (19.0, 110.0),
        "features": ["Cushioned footbed", "Adjustable ankle strap", "Grippy rubber outsole"],
    },
    6: {
        "category": "Apparel > Tops > Shirts", "code": "SHT",
        "nouns": ["Shirt", "Oxford Shirt", "Overshirt", "Blouse", "Button-Down Shirt"],
        "styles": ["Long-Sleeve", "Short-Sleeve", "Regular-Fit", "Camp-Collar", "Slim-Fit"],
        "materials": ["Cotton Oxford", "Poplin", "Flannel", "Chambray", "Linen"],
        "sizes": ["XS-XL", "S-XXL", "38-46"], "price": (19.0, 95.0),
        "features": ["Mother-of-pearl-look buttons", "Curved hem, wear tucked or untucked",
                     "Chest patch pocket"],
    },
    7: {
        "category": "Footwear > Sneakers", "code": "SNK",
        "nouns": ["Sneakers", "Trainers", "Running Shoes", "Court Sneakers"],
        "styles": ["Low-Top", "High-Top", "Lace-Up", "Slip-On", "Retro"],
        "materials": ["Leather", "Knit Mesh", "Suede", "Canvas", "Recycled Mesh"],
        "sizes": ["EU 36-46", "EU 38-47", "UK 4-12"], "price": (39.0, 180.0),
        "features": ["Padded collar and tongue", "Removable cushioned insole", "Durable cupsole"],
    },
    8: {
        "category": "Accessories > Bags", "code": "BAG",
        "nouns": ["Tote Bag", "Shoulder Bag", "Crossbody Bag", "Backpack", "Handbag"],
        "styles": ["Structured", "Slouchy", "Mini", "Zip-Top", "Quilted"],
        "materials": ["Leather", "Canvas", "Nylon", "Vegan Leather", "Suede"],
        "sizes": ["One Size"], "price": (25.0, 320.0),
        "features": ["Magnetic snap closure", "Inner zip pocket", "Detachable adjustable strap"],
    },
    9: {
        "category": "Footwear > Boots > Ankle Boots", "code": "BOT",
        "nouns": ["Ankle Boots", "Chelsea Boots", "Lace-Up Boots", "Heeled Boots"],
        "styles": ["Block-Heel", "Side-Zip", "Lug-Sole", "Pointed", "Water-Resistant"],
        "materials": ["Leather", "Suede", "Nubuck", "Vegan Leather"],
        "sizes": ["EU 36-42", "EU 39-46"], "price": (59.0, 240.0),
        "features": ["Elastic side panels", "Cushioned leather insole", "Stacked heel"],
    },
}

# name, code, RGB
_COLORS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("Black", "BLK", (32, 32, 34)), ("Navy", "NAV", (28, 42, 92)), ("Charcoal", "CHA", (70, 72, 76)),
    ("Burgundy", "BUR", (110, 26, 44)), ("Red", "RED", (190, 36, 40)), ("Olive", "OLV", (104, 110, 50)),
    ("Forest Green", "FGR", (30, 90, 52)), ("Camel", "CML", (193, 154, 107)), ("Tan", "TAN", (172, 128, 86)),
    ("Grey", "GRY", (140, 140, 144)), ("Sky Blue", "SKY", (110, 164, 216)),
    ("Mustard", "MUS", (212, 168, 40)), ("Blush Pink", "BLS", (222, 150, 160)),
    ("Teal", "TEA", (22, 122, 128)), ("Chocolate Brown", "BRN", (88, 56, 36)),
    ("Khaki", "KHA", (176, 164, 118)), ("Cobalt", "COB", (30, 70, 190)), ("Rust", "RST", (170, 74, 38)),
)
_BRANDS: tuple[tuple[str, str], ...] = (
    ("Nordhaven", "NRD"), ("Alder & Finch", "ALF"), ("Corvo", "CRV"), ("Maison Lumière", "MLU"),
    ("Kestrel Works", "KST"), ("Bellwether", "BLW"), ("Oakline", "OAK"), ("Sable & Stone", "SBS"),
    ("Tidewater", "TDW"), ("Marlow Row", "MRW"), ("Fjellstad", "FJS"), ("Ortega Hermanos", "ORT"),
    ("Kōyō Studio", "KYO"), ("Pinecrest", "PNC"),
)
_SELLERS = ("Northwind Retail", "Harbor Street Goods", "Urban Loft Marketplace", "Brightside Commerce")
_MARKET_SELLERS = ("Bargain Bazaar Ltd", "QuickShip Resale", "Second Aisle Outlet")
_SEASONS = ("SS24", "AW24", "SS25", "AW25", "All-season")
_CARE = ("Machine wash cold.", "Hand wash only.", "Dry clean recommended.", "Wipe clean with a damp cloth.",
         "Gentle machine wash at 30 °C.")
_FOOTWEAR_OR_BAG = {5, 7, 8, 9}

_OPENCV_PRODUCTS: tuple[dict[str, Any], ...] = (
    {
        "product_id": "PDC-BIS-250G", "title": "Pan Ducale Bastoncini Crisp Almond Cookies 250 g",
        "description": "Crisp Italian almond biscuits (cantuccini alla mandorla), product of Italy. "
        "Net wt 250 g.",
        "category": "Grocery > Snacks > Cookies", "brand": "Pan Ducale", "color": None, "material": None,
        "size": "250 g", "price": "4.49", "season": "All-season", "files": ("box.png", "box_in_scene.png"),
    },
    {
        "product_id": "PLY-FIG-SUZ01", "title": "Polyform Studio Grey Resin Low-Poly Monkey Head Figurine",
        "description": "Faceted low-poly sculpture of Suzanne, the Blender mascot. Matte grey resin, "
        "desk size.",
        "category": "Home > Decor > Figurines", "brand": "Polyform Studio", "color": "Grey",
        "material": "Resin",
        "size": "One Size", "price": "24.00", "season": "All-season",
        "files": ("Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg"),
    },
)
_N_SHARED_PATH = 3  # marketplace SKUs pointing at another SKU's very image file
_N_SHARED_COPY = 2  # marketplace SKUs with a byte-identical copy of another SKU's image
_HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway"
    b"</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n"
)


# ------------------------------------------------------------------------------------------------ rendering


def _studio_backdrop() -> np.ndarray:
    """Light studio sweep: vertical gradient plus a faint vignette, (HERO_SIZE, HERO_SIZE, 3) float32."""
    t = np.linspace(0.0, 1.0, HERO_SIZE, dtype=np.float32)[:, None, None]
    base = np.asarray(_STUDIO_TOP, np.float32) * (1 - t) + np.asarray(_STUDIO_BOTTOM, np.float32) * t
    yy, xx = np.mgrid[0:HERO_SIZE, 0:HERO_SIZE].astype(np.float32)
    r2 = ((xx - HERO_SIZE / 2) ** 2 + (yy - HERO_SIZE / 2) ** 2) / (HERO_SIZE / 2) ** 2
    return (base * (1.0 - 0.025 * r2)[..., None]).astype(np.float32)


@dataclass(frozen=True)
class _Garment:
    """Per-style rendering inputs, shared by a family's colour variants: hero = rgb * fabric + backdrop."""

    fabric: np.ndarray  # (S, S, 1) float32: shading x opacity, multiplied by the garment colour
    backdrop: np.ndarray  # (S, S, 3) float32: studio backdrop with contact shadow, times (1 - opacity)
    mask: np.ndarray  # (S, S) bool: opacity > 0.5, the studio's clipping path


def _prepare_garment(gray28: np.ndarray, backdrop: np.ndarray) -> _Garment:
    intensity = upscale(gray28, _GARMENT_SIZE, interpolation="cubic").image[..., 0].astype(np.float32) / 255.0
    pad = (HERO_SIZE - _GARMENT_SIZE) // 2
    intensity = cv2.copyMakeBorder(intensity, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0)
    alpha = np.clip((intensity - 0.03) / 0.10, 0.0, 1.0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=2.0)  # soften the 8x-upscaled staircase edge
    shade = 0.45 + 0.75 * intensity
    shadow = 1.0 - 0.18 * cv2.GaussianBlur(np.roll(alpha, (6, 4), axis=(0, 1)), (0, 0), sigmaX=6.0)
    return _Garment((shade * alpha)[..., None], backdrop * (shadow * (1.0 - alpha))[..., None], alpha > 0.5)


def _render_hero(garment: _Garment, rgb: tuple[int, int, int]) -> np.ndarray:
    return cv2.convertScaleAbs(garment.fabric * np.asarray(rgb, np.float32) + garment.backdrop)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def _synthetic_view(
    hero: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """One extra view of the same SKU: a new framing, a new background, or both. Returns (image, steps).

    With both, the reframe comes first and the clipping-path mask is moved with the same parameters.
    """
    plan = ("background", "reframe", "both")[int(rng.integers(0, 3))]
    img, steps = hero, []
    if plan in ("reframe", "both"):
        params = {
            "scale": round(float(rng.uniform(0.72, 1.3)), 3),
            "dx": round(float(rng.uniform(-0.1, 0.1)), 3),
            "dy": round(float(rng.uniform(-0.08, 0.08)), 3),
        }
        img, recipe = reframe(img, **params, pad_color=_STUDIO_BOTTOM)
        steps.append(recipe)
        if plan == "both":
            mask_rgb = np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2)
            moved = reframe(mask_rgb, **params, pad_color=(0, 0, 0))
            mask = moved.image[..., 0] > 127
    if plan in ("background", "both"):
        kind = ("solid", "gradient", "texture")[int(rng.integers(0, 3))]
        img, recipe = replace_background(img, mask, kind=kind, rng=rng)
        steps.append(recipe)
    return img, steps


# ------------------------------------------------------------------------------------------------ planning


@dataclass
class _Product:
    row: dict[str, Any]
    garment_pos: int | None = None  # index into the Fashion-MNIST subset
    rgb: tuple[int, int, int] | None = None
    n_views: int = 0  # synthetic views besides the hero
    feed: int = 0  # index into CATALOG_FILES
    images: list[tuple[str, str, dict | None]] = field(default_factory=list)  # (rel path, source, recipe)


def _price(rng: np.random.Generator, lo: float, hi: float) -> str:
    value = float(rng.uniform(lo, hi))
    return f"{np.floor(value) + (0.99 if rng.random() < 0.7 else 0.0):.2f}"


def _plan_family(
    family_no: int, garment_pos: int, label: int, rng: np.random.Generator, n_variants: int
) -> list[_Product]:
    info = _CLASS_INFO[label]
    brand, brand_code = _BRANDS[int(rng.integers(0, len(_BRANDS)))]
    noun = info["nouns"][int(rng.integers(0, len(info["nouns"])))]
    style = info["styles"][int(rng.integers(0, len(info["styles"])))] if rng.random() < 0.75 else ""
    material = info["materials"][int(rng.integers(0, len(info["materials"])))]
    size = info["sizes"][int(rng.integers(0, len(info["sizes"])))]
    price = _price(rng, *info["price"])
    seller = _SELLERS[int(rng.integers(0, len(_SELLERS)))]
    season = _SEASONS[int(rng.integers(0, len(_SEASONS)))]
    feature = info["features"][int(rng.integers(0, len(info["features"])))]
    care = _CARE[3] if label in _FOOTWEAR_OR_BAG else _CARE[int(rng.integers(0, 3))]
    if label in _FOOTWEAR_OR_BAG and material in ("Suede", "Nubuck"):
        care = "Brush clean; protect with a suede spray."
    family_id = f"FAM-{brand_code}-{info['code']}-{family_no:05d}"
    feed = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    colors = rng.choice(len(_COLORS), size=n_variants, replace=False)
    products = []
    for c in colors:
        color, color_code, rgb = _COLORS[int(c)]
        words = [brand, color, material, style, noun]
        desc_style = f"{style.lower()} " if style else ""
        products.append(
            _Product(
                row={
                    "product_id": f"{brand_code}-{info['code']}-{family_no:05d}-{color_code}",
                    "title": " ".join(w for w in words if w),
                    "description": f"{brand} {desc_style}{noun.lower()} in {color.lower()} "
                    f"{material.lower()}. {feature}. {care}",
                    "category": info["category"],
                    "brand": brand,
                    "color": color,
                    "material": material,
                    "size": size,
                    "price": price,
                    "seller": seller,
                    "inventory": int(rng.integers(0, 400)),
                    "season": season,
                    "family_id": family_id,
                },
                garment_pos=garment_pos,
                rgb=rgb,
                n_views=int(rng.integers(1, 4)),
                feed=feed,
            )
        )
    return products


def _plan(subset: FashionMnistSubset, n_fashion: int, rng: np.random.Generator) -> list[_Product]:
    order = rng.permutation(len(subset))
    products: list[_Product] = []
    family_no = 0
    while len(products) < n_fashion:
        if family_no >= len(order):
            raise ValueError(f"ran out of garment images ({len(order)}) for {n_fashion} products")
        pos = int(order[family_no])
        remaining = n_fashion - len(products)
        n_variants = min(remaining, int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25])))
        products += _plan_family(family_no, pos, int(subset.labels[pos]), rng, n_variants)
        family_no += 1
    return products


# ------------------------------------------------------------------------------------------------ writing


def _url(rel: str, root: Path, style: int) -> str:
    """Spell the image reference: 0 = relative to the catalog file, 1 = absolute path, 2 = file:// URL."""
    if style == 0:
        return rel
    absolute = (root / rel).resolve()
    return str(absolute) if style == 1 else absolute.as_uri()


def _catalog_row(p: _Product, root: Path, url_rng: np.random.Generator) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(p.row)
    styles = url_rng.choice(3, size=len(p.images), p=[0.6, 0.15, 0.25])
    row["image_urls"] = [_url(rel, root, int(s)) for (rel, _, _), s in zip(p.images, styles)]
    row["image_sources"] = [src for _, src, _ in p.images]
    row["image_recipes"] = [recipe for _, _, recipe in p.images]
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = {}
        for key in COLUMNS:
            value = row[key]
            if key in ("image_urls", "image_sources", "image_recipes"):
                out[key] = json.dumps(value, ensure_ascii=False, sort_keys=True)
            else:
                out[key] = "" if value is None else value
        writer.writerow(out)
    # surrogateescape turns the lone surrogate planted by the invalid_utf8 row back into its raw byte.
    path.write_bytes(buf.getvalue().encode("utf-8", errors="surrogateescape"))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [json.dumps({k: row[k] for k in COLUMNS}, ensure_ascii=False, sort_keys=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a core dependency
        raise ImportError("writing the demo Parquet catalog needs pyarrow: pip install pyarrow") from exc
    def arrow_type(column: str) -> pa.DataType:
        if column == "inventory":
            return pa.int64()
        return pa.list_(pa.string()) if column.startswith("image_") else pa.string()

    schema = pa.schema([(k, arrow_type(k)) for k in COLUMNS])
    columns: dict[str, list] = {k: [] for k in COLUMNS}
    for row in rows:
        for k in COLUMNS:
            value = row[k]
            if k == "image_recipes":
                value = [None if r is None else json.dumps(r, sort_keys=True) for r in value]
            columns[k].append(value)
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, compression="zstd")


_SPOILED = ("missing_product_id", "missing_title", "bad_price", "invalid_utf8", "conflicting_duplicate_sku",
            "corrupt_image", "not_an_image", "no_images")


def _render_images(products: list[_Product], subset: FashionMnistSubset, dest: Path, *, seed: int,
                   skip: _Product) -> None:
    """Write each product's hero and synthetic views; a per-product RNG keeps products independent."""
    backdrop = _studio_backdrop()
    garment_pos, garment = -1, None  # colour variants of a family are consecutive: prepare their garment once
    for ordinal, p in enumerate(products):
        if p is skip:
            continue
        prng = np.random.default_rng([seed, ordinal])
        if p.garment_pos != garment_pos:
            garment_pos, garment = p.garment_pos, _prepare_garment(subset.images[p.garment_pos], backdrop)
        hero = _render_hero(garment, p.rgb)
        sku = p.row["product_id"]
        hero_rel = f"images/{sku}-0.jpg"
        (dest / hero_rel).write_bytes(_encode_jpeg(hero))
        p.images.append((hero_rel, "catalog", None))
        for k in range(1, p.n_views + 1):
            view, steps = _synthetic_view(hero, garment.mask, prng)
            rel = f"images/{sku}-{k}.jpg"
            (dest / rel).write_bytes(_encode_jpeg(view))
            recipe = {
                "derived_from": hero_rel[len("images/"):], "mask": "studio_clipping_path", "steps": steps,
            }
            p.images.append((rel, "synthetic", recipe))


def _opencv_products(dest: Path, rng: np.random.Generator) -> list[_Product]:
    """The OpenCV same-object pairs as products with two real photos each, copied as is."""
    products = []
    for spec in _OPENCV_PRODUCTS:
        p = _Product(row={k: v for k, v in spec.items() if k != "files"}, feed=0)
        p.row.update(seller="Northwind Retail", inventory=int(rng.integers(5, 200)),
                     family_id=f"FAM-{spec['product_id']}")
        for name in spec["files"]:
            rel = f"images/{spec['product_id']}-{Path(name).stem}{Path(name).suffix.lower()}"
            shutil.copyfile(data_dir() / name, dest / rel)
            p.images.append((rel, "catalog", None))
        products.append(p)
    return products


def _marketplace_listings(regular: list[_Product], dest: Path, rng: np.random.Generator) -> list[_Product]:
    """Resale SKUs whose image is another SKU's very file, or a byte-identical copy of it."""
    listings = []
    donors = rng.choice(len(regular), size=_N_SHARED_PATH + _N_SHARED_COPY, replace=False)
    for i, d in enumerate(donors):
        donor = regular[int(d)]
        row = dict(donor.row)
        row.update(
            product_id=f"MKT-{i + 1:06d}",
            seller=_MARKET_SELLERS[i % len(_MARKET_SELLERS)],
            price=_price(rng, 5.0, float(donor.row["price"])),
            inventory=int(rng.integers(1, 20)),
            family_id=f"FAM-MKT-{i + 1:06d}",
            title=f"{donor.row['title']} (Resale)",
        )
        p = _Product(row=row, feed=int(rng.integers(0, 3)))
        hero_rel = donor.images[0][0]
        if i >= _N_SHARED_PATH:
            copy_rel = f"images/MKT-{i + 1:06d}-listing.jpg"
            shutil.copyfile(dest / hero_rel, dest / copy_rel)
            hero_rel = copy_rel
        p.images.append((hero_rel, "catalog", None))
        listings.append(p)
    return listings


def _spoil(bad: dict[str, _Product], feeds: list[list[dict[str, Any]]], dest: Path, root: Path,
           url_rng: np.random.Generator) -> list[Path]:
    """Turn one product per `BAD_ROW_REASONS` code into bad input, append its rows to ``feeds``.

    Returns the paths of the image files made undecodable.
    """
    rows = {reason: _catalog_row(p, root, url_rng) for reason, p in bad.items()}
    rows["missing_product_id"]["product_id"] = ""
    feeds[0].append(rows["missing_product_id"])
    rows["missing_title"]["title"] = None
    feeds[1].append(rows["missing_title"])
    rows["bad_price"]["price"] = "12,3x"
    feeds[2].append(rows["bad_price"])
    # A lone surrogate: `_write_csv` encodes it back to the raw byte 0xE9 (Latin-1 "é").
    rows["invalid_utf8"]["title"] = "Caf\udce9 Collection " + rows["invalid_utf8"]["title"]
    feeds[0].append(rows["invalid_utf8"])
    conflict = dict(rows["conflicting_duplicate_sku"])
    conflict.update(
        title=conflict["title"] + " - Limited Edition", price=f"{float(conflict['price']) + 15:.2f}"
    )
    feeds[0].append(rows["conflicting_duplicate_sku"])
    feeds[1].append(conflict)
    truncated = dest / bad["corrupt_image"].images[0][0]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 5])
    feeds[0].append(rows["corrupt_image"])
    html = dest / bad["not_an_image"].images[0][0]
    html.write_bytes(_HTML_ERROR_PAGE)
    feeds[1].append(rows["not_an_image"])
    for key in ("image_urls", "image_sources", "image_recipes"):
        rows["no_images"][key] = []
    feeds[1].append(rows["no_images"])
    return [truncated, html]


def write_demo_sources(dest: Path, *, n_products: int = 2400, seed: int = 0,
                       subset: FashionMnistSubset | None = None) -> DemoSources:
    """Write the demo catalog (three catalog files and an image directory) into ``dest``.

    Deterministic: the same ``seed`` gives identical images, and identical catalog files for the same ``dest``
    (absolute paths and ``file://`` URLs in them spell ``dest``). ``dest`` must be empty or not exist yet.
    A summary is also written to ``dest/demo_manifest.json``.

    Args:
        dest: output directory.
        n_products: number of good products (SKUs), including the two OpenCV-photo products, in [20, 4000] with
            the bundled subset; up to about 1.9 per garment image with a larger `subset`.
        seed: RNG seed.
        subset: garment images to build from (default the bundled subset; benchmarks pass Debian's full
            Fashion-MNIST, `visprep.demo.load_fashion_mnist_idx`).

    Returns:
        `DemoSources` describing what was written and what an ingest should keep and quarantine.

    Raises:
        ValueError: bad ``n_products`` or ``seed``, or ``dest`` is a non-empty directory.
    """
    if isinstance(n_products, bool) or not isinstance(n_products, int):
        raise ValueError(f"n_products must be an int, got {n_products!r}")
    most = _MAX_PRODUCTS if subset is None else max(_MAX_PRODUCTS, int(len(subset) * 1.9))
    if not _MIN_PRODUCTS <= n_products <= most:
        raise ValueError(f"n_products must be in [{_MIN_PRODUCTS}, {most}], got {n_products}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"dest {dest} must be an empty directory or not exist")
    image_dir = dest / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    subset = subset if subset is not None else load_fashion_mnist_subset()
    rng = np.random.default_rng(seed)
    n_regular = n_products - len(_OPENCV_PRODUCTS) - _N_SHARED_PATH - _N_SHARED_COPY
    # One extra product per bad-row reason, spoiled after rendering (plan order keeps them at the end).
    products = _plan(subset, n_regular + len(_SPOILED), rng)
    regular, bad = products[:n_regular], dict(zip(_SPOILED, products[n_regular:]))
    for reason, p in bad.items():
        p.row["family_id"] += "-X"  # keep spoiled rows out of the good families
        if reason in ("corrupt_image", "not_an_image", "no_images"):
            p.n_views = 0
    _render_images(products, subset, dest, seed=seed, skip=bad["no_images"])
    ocv_products = _opencv_products(dest, rng)
    shared = _marketplace_listings(regular, dest, rng)

    url_rng = np.random.default_rng([seed, 1 << 20])
    feeds: list[list[dict[str, Any]]] = [[], [], []]
    for p in regular + ocv_products + shared:
        feeds[p.feed].append(_catalog_row(p, root, url_rng))
    corrupt = _spoil(bad, feeds, dest, root, url_rng)
    feeds[2].append(dict(feeds[0][0]))  # one harmless exact repeat of a good row, in another feed

    # Shuffle each feed (bad rows must not all sit at the end), deterministically.
    for feed in feeds:
        perm = rng.permutation(len(feed))
        feed[:] = [feed[int(i)] for i in perm]
    catalog_files = [dest / name for name in CATALOG_FILES]
    _write_csv(catalog_files[0], feeds[0])
    _write_jsonl(catalog_files[1], feeds[1])
    _write_parquet(catalog_files[2], feeds[2])

    good = regular + ocv_products + shared
    expected = {reason: 1 for reason in _SPOILED}
    expected["conflicting_duplicate_sku"] = 2
    image_files = {rel for p in good for rel, _, _ in p.images}
    result = DemoSources(
        root=dest,
        catalog_files=catalog_files,
        image_dir=image_dir,
        n_products=len(good),
        expected_bad_rows=expected,
        corrupt_images=corrupt,
        n_exact_duplicate_rows=1,
        n_families=len({p.row["family_id"] for p in good}),
        n_images=len(image_files),
        opencv_product_ids=[p.row["product_id"] for p in ocv_products],
        shared_image_product_ids=[p.row["product_id"] for p in shared],
    )
    manifest = {
        "seed": seed,
        "catalog_files": [p.name for p in catalog_files],
        "image_dir": image_dir.name,
        "n_products": result.n_products,
        "n_families": result.n_families,
        "n_images": result.n_images,
        "expected_bad_rows": expected,
        "bad_row_reasons": BAD_ROW_REASONS,
        "corrupt_images": [str(p.relative_to(dest)) for p in corrupt],
        "n_exact_duplicate_rows": result.n_exact_duplicate_rows,
        "opencv_product_ids": result.opencv_product_ids,
        "shared_image_product_ids": result.shared_image_product_ids,
    }
    (dest / "demo_manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    return result
