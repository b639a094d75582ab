"""Where query photos come from: paths and URLs given directly, or listed in a CSV/JSONL file."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SOURCE_COLUMNS = ("source", "url", "path", "image", "image_url", "image_path")
"""Columns of a listing that may name a photo, first present wins."""

LISTING_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class QuerySource:
    """One photo to clean.

    Attributes:
        source: a local path or a URL (as given, or resolved against the listing's folder when relative).
        listing: the CSV/JSONL that named it, or None.
        line: 1-based data line/row in that listing, or None.
    """

    source: str
    listing: str | None = None
    line: int | None = None


def _is_url(text: str) -> bool:
    scheme = urlsplit(text).scheme
    return len(scheme) > 1  # a Windows drive letter is not a scheme


def expand_sources(items: Iterable[str | Path]) -> list[QuerySource]:
    """Turn command-line items into photos: a `.csv`/`.jsonl` file is a listing, anything else is one photo.

    Raises:
        FileNotFoundError: a listing does not exist.
        ValueError: a listing has no column naming the photo (the error names the valid columns), or a row
            has an empty one (the error names the file and line).
    """
    out: list[QuerySource] = []
    for item in items:
        text = str(item)
        if not _is_url(text) and Path(text).suffix.lower() in LISTING_SUFFIXES:
            out.extend(read_listing(Path(text)))
        else:
            out.append(QuerySource(text))
    return out


def read_listing(path: Path) -> list[QuerySource]:
    """Read a CSV (header row) or JSONL listing of photos; relative paths are taken relative to the listing."""
    if not path.is_file():
        raise FileNotFoundError(f"query listing not found: {path}")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [(i + 2, r) for i, r in enumerate(reader)]  # line 1 is the header
    else:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{i}: not valid JSON: {exc}") from None
                    if not isinstance(value, dict):
                        raise ValueError(f"{path}:{i}: expected a JSON object, got {type(value).__name__}")
                    rows.append((i, value))
    if not rows:
        return []
    columns = set().union(*(r.keys() for _, r in rows))
    column = next((c for c in SOURCE_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(f"{path}: no column naming the photo; found {sorted(columns)}, "
                         f"expected one of {', '.join(SOURCE_COLUMNS)}")
    out = []
    for line, row in rows:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}:{line}: field {column!r} is empty or not a string: {value!r}")
        value = value.strip()
        if not _is_url(value) and not Path(value).is_absolute():
            value = str((path.parent / value).resolve())
        out.append(QuerySource(value, listing=str(path), line=line))
    return out
