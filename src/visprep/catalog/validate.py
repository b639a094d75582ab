"""Validation of one raw catalog row into a normalized product, or the reasons it is refused."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from visprep.catalog.readers import DEFAULT_MAX_FIELD_CHARS, HugeInt, RawRow, has_surrogates, parse_json
from visprep.workspace import QuarantineRecord

KNOWN_COLUMNS = (
    "product_id", "title", "category", "image_urls", "description", "brand", "color", "material", "size",
    "price", "seller", "inventory", "image_sources", "image_recipes",
)
TEXT_FIELDS = ("title", "category", "description", "brand", "color", "material", "size", "seller")
NUMBER_FIELDS = ("price", "inventory")
LIST_FIELDS = ("image_urls", "image_sources", "image_recipes")
IMAGE_SOURCES = ("catalog", "synthetic", "user")
URL_SCHEMES = ("http", "https", "file", "s3")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_NESTING = 32  # levels of objects/lists in one field; json.dumps of much deeper values hits the recursion limit
SHOWN_CHARS = 200  # how much of a refused value its quarantine record keeps
_PRICE = re.compile(r"^[\$€£¥]?\s*(\d+(?:\.\d+)?)\s*(?:[A-Z]{3})?$")
_DIGITS = re.compile(r"^[+-]?\d+$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Product:
    """A validated catalog row, ready for the products and product_images tables."""

    row: dict[str, Any]
    images: list[dict[str, Any]]


class _Refused(ValueError):
    """A value refused with a reason code; the caller adds the record, the field and the value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def shown(value: Any) -> str | None:
    """Render `value` for a quarantine record: at most about SHOWN_CHARS characters, always UTF-8-encodable."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 640:
        text = f"<integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"  # str() may refuse it
    elif isinstance(value, (dict, list, tuple)):
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (ValueError, RecursionError):
            text = f"<{type(value).__name__}>"
    else:
        text = repr(value) if isinstance(value, (bytes, bytearray)) else str(value)
    if len(text) > SHOWN_CHARS:
        text = f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"
    if has_surrogates(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def structure_problem(value: Any, *, max_chars: int) -> _Refused | None:
    """The first problem anywhere inside `value` that no column can store: too long, out of range, unencodable, too
    deep. Walks level by level, so a deeply nested value cannot exhaust the stack."""
    level = [value]
    for depth in range(MAX_NESTING + 1):
        deeper: list[Any] = []
        for v in level:
            if isinstance(v, str):
                if len(v) > max_chars:
                    return _Refused("field_too_long", f"is {len(v)} characters, the limit is {max_chars}")
                if _SURROGATE.search(v):
                    return _Refused("invalid_utf8", "holds an unpaired surrogate (a bad \\uD800-style escape), not UTF-8")
            elif isinstance(v, bool) or v is None:
                continue
            elif isinstance(v, int):
                if not INT64_MIN <= v <= INT64_MAX:
                    return _Refused("out_of_range", "holds an integer outside int64")
            elif isinstance(v, float):
                if math.isinf(v):
                    return _Refused("out_of_range", "holds a number outside the float64 range")
            elif isinstance(v, HugeInt):
                return _Refused("out_of_range", f"holds an integer of {len(v.text.lstrip('-'))} digits, outside int64")
            elif isinstance(v, (bytes, bytearray)):
                if len(v) > max_chars:
                    return _Refused("field_too_long", f"is {len(v)} bytes, the limit is {max_chars}")
            elif isinstance(v, dict):
                deeper.extend(v.keys())
                deeper.extend(v.values())
            elif isinstance(v, (list, tuple)):
                deeper.extend(v)
        if not deeper:
            return None
        level = deeper
    return _Refused("too_deeply_nested", f"is nested more than {MAX_NESTING} levels deep")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a list", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _type_problem(name: str, value: Any) -> _Refused | None:
    """Refuse a value of the wrong shape for a known column, rather than storing its Python repr."""
    if value is None:
        return None
    if name == "product_id":
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return None
        hint = "; a float id loses digits, write ids as strings" if isinstance(value, float) else ""
        return _Refused("wrong_type", f"must be text or an integer, got {_kind(value)}{hint}")
    if name in TEXT_FIELDS or name in NUMBER_FIELDS:
        if isinstance(value, (str, int, float, Decimal)) and not isinstance(value, bool):
            return None
        return _Refused("wrong_type", f"must be {'text' if name in TEXT_FIELDS else 'a number'}, got {_kind(value)}")
    if name in LIST_FIELDS:
        if isinstance(value, (str, list, tuple)) or hasattr(value, "tolist"):
            return None
        return _Refused("wrong_type", f"must be a list (or one URL / a JSON list as text), got {_kind(value)}")
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = " ".join(str(value).split())
    return text or None


def _product_id(value: Any) -> str | None:
    """Ids are kept exact: only leading/trailing whitespace goes ("p  3" and "p 3" are two products)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _record_id(value: Any) -> str | None:
    """The id a quarantine record names: the stripped text or the integer, shortened; None for other shapes."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return None
    return shown(str(value).strip()) or None


def _as_list(value: Any, *, field: str, max_chars: int) -> list[Any]:
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
            parsed = parse_json(text)
        except json.JSONDecodeError as exc:
            raise _Refused(f"invalid_{field}", f"{field} is not a valid JSON list ({exc.msg})") from None
        except RecursionError:
            raise _Refused("too_deeply_nested", f"{field} is a JSON list nested too deeply to parse") from None
        if not isinstance(parsed, list):
            raise _Refused(f"invalid_{field}", f"{field} must be a list")
        problem = structure_problem(parsed, max_chars=max_chars)
        if problem is not None:
            raise _Refused(problem.reason, f"{field} (a JSON list) {problem}")
        return parsed
    return [text]


def _price(value: Any) -> float | None:
    """Parse a price (a number, or text such as '$12.50' or '12.50 EUR'); None when absent."""
    if isinstance(value, (int, float)):
        price = float(value)
        if math.isnan(price):
            return None
    elif _text(value) is None:
        return None
    else:
        m = _PRICE.match(_text(value) or "")
        if m is None:
            raise _Refused("unparsable_price", f"price {shown(value)!r} is not a number")
        price = float(m.group(1))
    if math.isinf(price):
        raise _Refused("out_of_range", f"price {shown(value)!r} is outside the float64 range")
    if price < 0:
        raise _Refused("invalid_price", f"price {shown(value)!r} must be finite and >= 0")
    return price


def _inventory(value: Any) -> int | None:
    """Parse an inventory count, exactly (no float round trip for digit strings); None when absent."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, int):
        number: int | float = value
    else:
        text = _text(value)
        if text is None:
            return None
        if _DIGITS.match(text):
            digits = text.lstrip("+-").lstrip("0")
            # Compare lengths before int(): a 5,000-digit string makes int() raise, and int64 has 19 digits.
            if text.startswith("-") and digits:
                raise _Refused("unparsable_inventory", f"inventory {shown(value)!r} is not a non-negative integer")
            number = INT64_MAX + 1 if len(digits) > 19 else int(digits or "0")
        else:
            try:
                number = float(text)
            except ValueError:
                raise _Refused("unparsable_inventory",
                               f"inventory {shown(value)!r} is not a non-negative integer") from None
    if isinstance(number, float):
        if math.isinf(number):
            raise _Refused("out_of_range", f"inventory {shown(value)!r} is outside int64")
        if math.isnan(number) or not number.is_integer():
            raise _Refused("unparsable_inventory", f"inventory {shown(value)!r} is not a non-negative integer")
        number = int(number)
    if number < 0:
        raise _Refused("unparsable_inventory", f"inventory {shown(value)!r} is not a non-negative integer")
    if number > INT64_MAX:
        raise _Refused("out_of_range", f"inventory {shown(value)!r} is outside int64 (at most {INT64_MAX})")
    return number


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


def validate_row(raw: RawRow, *, separator: str = ">", require_category: bool = True, max_images: int = 64,
                 max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> Product | list[QuarantineRecord]:
    """Validate one row; return the Product or every problem found, each naming the field and the value.

    A value no column can hold (over `max_field_chars`, an integer outside int64, an infinite number, nested
    where text belongs, invalid Unicode) refuses the row on its own: the later checks would only restate it.
    """
    f = raw.fields
    raw_id = f.get("product_id")

    def bad(reason: str, field: str | None, value: Any, detail: str) -> QuarantineRecord:
        return QuarantineRecord(reason=reason, detail=f"{raw.source}:{raw.line}: {detail}", source=raw.source,
                                line=raw.line, record_id=_record_id(raw_id), field=field, value=shown(value))

    if raw.error:
        return [QuarantineRecord(reason=raw.error, detail=raw.error_detail or raw.error, source=raw.source,
                                 line=raw.line, record_id=_record_id(raw_id), field=f.get("_bad_field"),
                                 value=f.get("_bad_value"))]
    problems: list[QuarantineRecord] = []
    for name, value in f.items():
        # Inline fast paths: short valid text and nulls are nearly every value of every row.
        key_problem = (structure_problem(name, max_chars=max_field_chars)
                       if len(name) > max_field_chars or _SURROGATE.search(name) else None)
        if key_problem is not None:
            problems.append(bad(key_problem.reason, shown(name), name, f"column name {shown(name)!r} {key_problem}"))
            continue
        kind = type(value)
        if name.startswith("_") or value is None or (
                kind is str and len(value) <= max_field_chars and not _SURROGATE.search(value)) or (
                kind is int and INT64_MIN <= value <= INT64_MAX and name not in LIST_FIELDS) or (
                kind is float and not math.isinf(value) and name != "product_id" and name not in LIST_FIELDS):
            continue
        problem = structure_problem(value, max_chars=max_field_chars) or _type_problem(name, value)
        if problem is not None:
            problems.append(bad(problem.reason, name, value, f"{name} {problem}: {shown(value)!r}"))
    if problems:
        return problems

    pid = _product_id(raw_id)
    title = _text(f.get("title"))
    category = _text(f.get("category"))
    if pid is None:
        problems.append(bad("missing_product_id", "product_id", raw_id, "product_id is missing or empty"))
    elif (control := _CONTROL.search(pid)) is not None:
        problems.append(bad("invalid_product_id", "product_id", raw_id,
                            f"product_id {shown(pid)!r} holds control character U+{ord(control.group()):04X}; ids "
                            f"are kept exact, so it would match nothing else"))
    if title is None:
        problems.append(bad("missing_title", "title", f.get("title"), "title is missing or empty"))
    path: list[str] = []
    if category is not None:
        path = [p.strip() for p in category.split(separator) if p.strip()]
        category = f" {separator} ".join(path)
    if not path and require_category:
        problems.append(bad("missing_category", "category", f.get("category"), "category is missing or empty"))

    price = inventory = None
    try:
        price = _price(f.get("price"))
    except _Refused as exc:
        problems.append(bad(exc.reason, "price", f.get("price"), str(exc)))
    try:
        inventory = _inventory(f.get("inventory"))
    except _Refused as exc:
        problems.append(bad(exc.reason, "inventory", f.get("inventory"), str(exc)))

    urls: list[str] = []
    sources: list[Any] = []
    recipes: list[Any] = []
    try:
        raw_urls = _as_list(f.get("image_urls"), field="image_urls", max_chars=max_field_chars)
    except _Refused as exc:
        problems.append(bad(exc.reason, "image_urls", f.get("image_urls"), str(exc)))
        raw_urls = None
    if raw_urls is not None:
        if not raw_urls:
            problems.append(bad("empty_image_list", "image_urls", f.get("image_urls"), "image_urls is empty"))
        elif len(raw_urls) > max_images:
            problems.append(bad("too_many_images", "image_urls", len(raw_urls),
                                f"{len(raw_urls)} image URLs, the limit is {max_images}"))
        base = Path(raw.source).parent
        for u in raw_urls[:max_images + 1]:
            try:
                if not isinstance(u, str):
                    raise ValueError(f"expected a string, got {_kind(u)}")
                urls.append(normalize_url(u, base_dir=base))
            except ValueError as exc:
                problems.append(bad("invalid_image_url", "image_urls", u, f"image URL {shown(u)!r}: {exc}"))
        for name, target in (("image_sources", sources), ("image_recipes", recipes)):
            try:
                values = _as_list(f.get(name), field=name, max_chars=max_field_chars)
            except _Refused as exc:
                problems.append(bad(exc.reason, name, f.get(name), str(exc)))
                continue
            if values and len(values) != len(raw_urls):
                problems.append(bad(f"invalid_{name}", name, f.get(name),
                                    f"{name} has {len(values)} entries, image_urls has {len(raw_urls)}"))
            target.extend(values)
        for s in sources:
            if not isinstance(s, str) or s not in IMAGE_SOURCES:
                problems.append(bad("invalid_image_sources", "image_sources", s,
                                    f"image source {shown(s)!r} is not one of {', '.join(IMAGE_SOURCES)}"))
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
            recipe = json.dumps(recipe, sort_keys=True, default=str)
        images.append({"product_id": pid, "position": i, "url": u,
                       "source": sources[i] if sources else "catalog", "recipe": recipe})
    row["row_hash"] = hashlib.sha256(
        json.dumps([row, images], sort_keys=True, default=str).encode()
    ).hexdigest()[:32]
    return Product(row=row, images=images)
