"""Rater files (CSV, JSONL, Parquet) → validated judgment rows, or quarantine records with reasons.

Columns: ``query_id`` (a query image id, or a path/URL of the query image), ``product_id``, ``rater_id``,
``grade`` (integer 0–4), optional ``ts`` (ISO 8601; naive means UTC), ``comment`` and ``batch`` (defaults to the
file name). Reading reuses the catalog's format readers (same UTF-8 and JSON checks, same line numbers).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visprep.catalog.readers import read_catalog_file
from visprep.catalog.validate import normalize_url
from visprep.labels.rubric import MAX_GRADE, MIN_GRADE
from visprep.workspace import QuarantineRecord

REQUIRED = ("query_id", "product_id", "rater_id", "grade")
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class RaterRow:
    """One valid rater line; `query_ref` is an image id or an absolute path/URL still to resolve."""

    query_ref: str
    product_id: str
    rater_id: str
    grade: int
    ts: dt.datetime | None
    comment: str | None
    batch: str
    source: str
    line: int


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _has_surrogate(value: Any) -> bool:
    # A walk with a stack of our own: JSON nested nearly as deep as the parser allows must not overflow here.
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


def _shown(value: Any) -> str:
    """`value` as text with each lone surrogate written as \\uNNNN, at most 200 characters."""
    text = value if isinstance(value, str) else repr(value)
    return "".join(f"\\u{ord(ch):04x}" if "\ud800" <= ch <= "\udfff" else ch for ch in text[:200])


def parse_grade(value: Any) -> int:
    """Parse a grade: a whole number (3, "3", "3.0" and 3.0 are accepted); TypeError for a boolean, ValueError
    for anything else that is not a whole number. The range is checked by the caller."""
    if isinstance(value, bool):
        raise TypeError(f"grade {value!r} is a boolean, not a grade")
    if isinstance(value, int) and not -(2**53) <= value <= 2**53:  # float() of a 400-digit int overflows
        # str() of an int past 4,300 digits raises: show its size instead.
        shown = value if value.bit_length() <= 64 else f"of about {int(value.bit_length() * 0.30103) + 1} digits"
        raise ValueError(f"grade {shown} is far outside any rubric")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = _text(value)
        if text is None:
            raise ValueError("grade is empty")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"grade {text!r} is not a number") from None
    if not math.isfinite(number):  # "1e999", or an integer literal of hundreds of digits
        raise ValueError(f"grade {value!r} is not a finite number")
    if not number.is_integer():
        raise ValueError(f"grade {value!r} is not a whole number")
    return int(number)


def parse_ts(value: Any) -> dt.datetime | None:
    """Parse an optional timestamp (ISO 8601 text or a datetime); naive times are taken as UTC."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dt.datetime):
        ts = value
    else:
        ts = dt.datetime.fromisoformat(str(value).strip())  # Python >= 3.11 reads a trailing "Z"
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


def resolve_query_ref(ref: str, *, base_dir: Path) -> str:
    """Return an image id unchanged, anything else as an absolute path or URL (relative paths: to the file)."""
    if IMAGE_ID.match(ref):
        return ref
    return normalize_url(ref, base_dir=base_dir)


def read_rater_file(path: Path) -> Iterator[RaterRow | QuarantineRecord]:
    """Yield a `RaterRow` per valid line and a `QuarantineRecord` per refused one (one reason each)."""
    batch_default = path.name
    for raw in read_catalog_file(path):
        where = f"{raw.source}:{raw.line}"
        if raw.error:
            yield QuarantineRecord(reason=raw.error, detail=raw.error_detail or raw.error, source=raw.source,
                                   line=raw.line, field=raw.fields.get("_bad_field"),
                                   value=raw.fields.get("_bad_value"))
            continue
        f = raw.fields
        # JSON may spell a lone surrogate ("\ud800"): valid JSON, but no UTF-8 text can hold it.
        bad = next((k for k, v in f.items() if _has_surrogate(k) or _has_surrogate(v)), None)
        if bad is not None:
            shown = _shown(f[bad])
            yield QuarantineRecord(reason="invalid_utf8", detail=f"{where}: field {_shown(bad)!r} holds a lone "
                                   f"surrogate, which UTF-8 cannot encode: {shown}", source=raw.source,
                                   line=raw.line, field=_shown(bad), value=shown)
            continue
        missing = [c for c in REQUIRED if _text(f.get(c)) is None]
        if missing:
            yield QuarantineRecord(reason=f"missing_{missing[0]}", detail=f"{where}: required field "
                                   f"{missing[0]!r} is empty or absent", source=raw.source, line=raw.line,
                                   record_id=_text(f.get("product_id")), field=missing[0], value=None)
            continue
        pid = _text(f["product_id"])
        try:
            grade = parse_grade(f["grade"])
        except (ValueError, TypeError) as exc:
            yield QuarantineRecord(reason="unparsable_grade", detail=f"{where}: {exc}", source=raw.source,
                                   line=raw.line, record_id=pid, field="grade", value=str(f["grade"]))
            continue
        if not MIN_GRADE <= grade <= MAX_GRADE:
            yield QuarantineRecord(reason="grade_out_of_range", detail=f"{where}: grade {grade} is outside the "
                                   f"rubric {MIN_GRADE}–{MAX_GRADE}", source=raw.source, line=raw.line,
                                   record_id=pid, field="grade", value=str(f["grade"]))
            continue
        try:
            ts = parse_ts(f.get("ts"))
        except (ValueError, TypeError) as exc:
            yield QuarantineRecord(reason="unparsable_ts", detail=f"{where}: ts {f.get('ts')!r}: {exc}",
                                   source=raw.source, line=raw.line, record_id=pid, field="ts", value=str(f.get("ts")))
            continue
        try:
            ref = resolve_query_ref(_text(f["query_id"]) or "", base_dir=path.parent)
        except ValueError as exc:
            yield QuarantineRecord(reason="bad_query_ref", detail=f"{where}: query_id {f['query_id']!r}: {exc}",
                                   source=raw.source, line=raw.line, record_id=pid, field="query_id",
                                   value=str(f["query_id"]))
            continue
        yield RaterRow(query_ref=ref, product_id=pid or "", rater_id=_text(f["rater_id"]) or "", grade=grade,
                       ts=ts, comment=_text(f.get("comment")), batch=_text(f.get("batch")) or batch_default,
                       source=raw.source, line=raw.line)
