"""Readers that turn catalog files into raw rows, each with its file and line, never losing a bad line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


@dataclass
class RawRow:
    """One record as read: its source file, 1-based line (or row number) and fields; or why it could not be read."""

    source: str
    line: int
    fields: dict[str, Any]
    error: str | None = None  # reason code when the record could not be parsed at all
    error_detail: str | None = None


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _invalid_bytes(value: str) -> str:
    """Show the undecodable bytes of a surrogate-escaped string, e.g. 'Caf\\xe9'."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_csv(path: Path) -> Iterator[RawRow]:
    """Yield the rows of a CSV file with a header; fields with invalid UTF-8 are flagged, not dropped."""
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        for values in reader:
            line = start
            start = reader.line_num + 1
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield RawRow(
                    str(path), line, {}, "wrong_column_count",
                    f"{path}:{line}: {len(values)} fields, header has {len(header)}",
                )
                continue
            fields = dict(zip(header, values))
            bad = [k for k, v in fields.items() if _has_surrogates(v)]
            if bad:
                k = bad[0]
                yield RawRow(
                    str(path), line, {"product_id": fields.get("product_id"), "_bad_field": k,
                                      "_bad_value": _invalid_bytes(fields[k])},
                    "invalid_utf8", f"{path}:{line}: field {k!r} is not valid UTF-8: {_invalid_bytes(fields[k])!r}",
                )
                continue
            yield RawRow(str(path), line, fields)


def read_jsonl(path: Path) -> Iterator[RawRow]:
    """Yield the objects of a JSON-lines file; an undecodable or non-object line is flagged with its number."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                shown = raw.decode("utf-8", "backslashreplace").strip()
                yield RawRow(str(path), line_no, {"_bad_field": None, "_bad_value": shown[:200]}, "invalid_utf8",
                             f"{path}:{line_no}: not valid UTF-8 at byte {exc.start}: {shown[:200]!r}")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(str(path), line_no, {"_bad_value": text.strip()[:200]}, "invalid_json",
                             f"{path}:{line_no}: invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                yield RawRow(str(path), line_no, {"_bad_value": text.strip()[:200]}, "not_an_object",
                             f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield RawRow(str(path), line_no, obj)


def read_parquet(path: Path, *, batch_size: int = 65_536) -> Iterator[RawRow]:
    """Yield the rows of a Parquet file in batches (out of core); `line` is the 1-based row number."""
    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            row += 1
            yield RawRow(str(path), row, rec)


_READERS = {".csv": read_csv, ".jsonl": read_jsonl, ".ndjson": read_jsonl, ".parquet": read_parquet}


def read_catalog_file(path: Path) -> Iterator[RawRow]:
    """Dispatch on the file extension; an unknown extension raises listing the supported ones."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported catalog format {path.suffix!r}; supported: {', '.join(sorted(_READERS))}")
    return reader(path)
