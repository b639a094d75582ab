"""Validation of one raw catalog row into a normalized product, or the reasons it is refused."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from visprep.catalog.readers import RawRow
from visprep.workspace import QuarantineRecord

KNOWN_COLUMNS = (
    "product_id", "title", "category", "image_urls", "description", "brand", "color", "material", "size",
    "price", "seller", "inventory", "image_sources", "image_recipes",
)
IMAGE_SOURCES = ("catalog", "synthetic", "user")
URL_SCHEMES = ("http", "https", "file", "s3")
_PRICE = re.compile(r"^[\$€£¥]?\s*(\d+(?:\.\d+)?)\s*(?:[A-Z]{3})?$")


@dataclass
class Product:
    """A validated catalog row, ready for the products and product_images tables."""

    row: dict[str, Any]
    images: list[dict[str, Any]]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = " ".join(str(value).split())
    return text or None


def _as_list(value: Any, *, field: str) -> list[Any]:
    """Accept a list, a JSON list in a string, or a single plain string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return list(value.tolist())
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{field} is not a valid JSON list ({exc.msg})") from None
        if not isinstance(parsed, list):
            raise ValueError(f"{field} must be a list")
        return parsed
    return [text]


def normalize_url(url: str, *, base_dir: Path) -> str:
    """Return `url` as an absolute URL or absolute local path; raise ValueError on an unsupported scheme."""
    url = url.strip()
    if not url:
        raise ValueError("empty URL")
    parts = urlsplit(url)
    if parts.scheme and len(parts.scheme) > 1:  # a Windows drive letter is not a scheme
        if parts.scheme.lower() not in URL_SCHEMES:
            raise ValueError(f"unsupported URL scheme {parts.scheme!r} (supported: {', '.join(URL_SCHEMES)}, or a local path)")
        if parts.scheme.lower() in ("http", "https", "s3") and not parts.netloc:
            raise ValueError("URL has no host")
        return url
    path = Path(url)
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def validate_row(raw: RawRow, *, separator: str = ">", require_category: bool = True,
                 max_images: int = 64) -> Product | list[QuarantineRecord]:
    """Validate one row; return the Product or every problem found, each naming the field and the value."""
    f = raw.fields
    pid = _text(f.get("product_id"))

    def bad(reason: str, field: str | None, value: Any, detail: str) -> QuarantineRecord:
        return QuarantineRecord(reason=reason, detail=f"{raw.source}:{raw.line}: {detail}", source=raw.source,
                                line=raw.line, record_id=pid, field=field,
                                value=None if value is None else str(value))

    if raw.error:
        return [QuarantineRecord(reason=raw.error, detail=raw.error_detail or raw.error, source=raw.source,
                                 line=raw.line, record_id=pid, field=f.get("_bad_field"), value=f.get("_bad_value"))]
    problems: list[QuarantineRecord] = []
    title = _text(f.get("title"))
    category = _text(f.get("category"))
    if pid is None:
        problems.append(bad("missing_product_id", "product_id", f.get("product_id"), "product_id is missing or empty"))
    if title is None:
        problems.append(bad("missing_title", "title", f.get("title"), "title is missing or empty"))
    path: list[str] = []
    if category is not None:
        path = [p.strip() for p in category.split(separator) if p.strip()]
        category = f" {separator} ".join(path)
    if not path and require_category:
        problems.append(bad("missing_category", "category", f.get("category"), "category is missing or empty"))

    price = None
    raw_price = f.get("price")
    if isinstance(raw_price, (int, float)) and not isinstance(raw_price, bool):
        price = float(raw_price)
        if math.isnan(price):
            price = None
    elif _text(raw_price) is not None:
        m = _PRICE.match(_text(raw_price) or "")
        if m is None:
            problems.append(bad("unparsable_price", "price", raw_price, f"price {raw_price!r} is not a number"))
        else:
            price = float(m.group(1))
    if price is not None and (price < 0 or math.isinf(price)):
        problems.append(bad("invalid_price", "price", raw_price, f"price {raw_price!r} must be finite and >= 0"))

    inventory = None
    raw_inv = f.get("inventory")
    if _text(raw_inv) is not None:
        try:
            inv_f = float(raw_inv)
            if inv_f != int(inv_f) or inv_f < 0:
                raise ValueError
            inventory = int(inv_f)
        except (TypeError, ValueError, OverflowError):
            problems.append(bad("unparsable_inventory", "inventory", raw_inv,
                                f"inventory {raw_inv!r} is not a non-negative integer"))

    urls: list[str] = []
    sources: list[Any] = []
    recipes: list[Any] = []
    try:
        raw_urls = _as_list(f.get("image_urls"), field="image_urls")
    except ValueError as exc:
        problems.append(bad("invalid_image_urls", "image_urls", f.get("image_urls"), str(exc)))
        raw_urls = None
    if raw_urls is not None:
        if not raw_urls:
            problems.append(bad("empty_image_list", "image_urls", f.get("image_urls"), "image_urls is empty"))
        elif len(raw_urls) > max_images:
            problems.append(bad("too_many_images", "image_urls", len(raw_urls),
                                f"{len(raw_urls)} image URLs, the limit is {max_images}"))
        base = Path(raw.source).parent
        for u in raw_urls:
            try:
                if not isinstance(u, str):
                    raise ValueError(f"expected a string, got {type(u).__name__}")
                urls.append(normalize_url(u, base_dir=base))
            except ValueError as exc:
                problems.append(bad("invalid_image_url", "image_urls", u, f"image URL {u!r}: {exc}"))
        for name, target in (("image_sources", sources), ("image_recipes", recipes)):
            try:
                values = _as_list(f.get(name), field=name)
            except ValueError as exc:
                problems.append(bad(f"invalid_{name}", name, f.get(name), str(exc)))
                continue
            if values and len(values) != len(raw_urls):
                problems.append(bad(f"invalid_{name}", name, f.get(name),
                                    f"{name} has {len(values)} entries, image_urls has {len(raw_urls)}"))
            target.extend(values)
        for s in sources:
            if s not in IMAGE_SOURCES:
                problems.append(bad("invalid_image_sources", "image_sources", s,
                                    f"image source {s!r} is not one of {', '.join(IMAGE_SOURCES)}"))
    if problems:
        return problems

    attributes = {k: v for k, v in f.items() if k not in KNOWN_COLUMNS and not k.startswith("_") and v not in (None, "")}
    row = {
        "product_id": pid,
        "title": title,
        "category": category or "",
        "category_path": path,
        "top_category": path[0] if path else "",
        "description": _text(f.get("description")),
        "brand": _text(f.get("brand")),
        "color": _text(f.get("color")),
        "material": _text(f.get("material")),
        "size": _text(f.get("size")),
        "price": price,
        "seller": _text(f.get("seller")),
        "inventory": inventory,
        "attributes": json.dumps(attributes, sort_keys=True, default=str, ensure_ascii=False),
        "image_urls": urls,
    }
    images = []
    for i, u in enumerate(urls):
        recipe = recipes[i] if recipes else None
        if recipe is not None and not isinstance(recipe, str):
            recipe = json.dumps(recipe, sort_keys=True)
        images.append({"product_id": pid, "position": i, "url": u,
                       "source": sources[i] if sources else "catalog", "recipe": recipe})
    row["row_hash"] = hashlib.sha256(
        json.dumps([row, images], sort_keys=True, default=str).encode()
    ).hexdigest()[:32]
    return Product(row=row, images=images)
