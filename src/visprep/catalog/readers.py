"""Readers that turn catalog files into raw rows, each with its file and line, never losing a bad line."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: A CSV field or JSONL line longer than this many times `max_field_chars` is not read whole: the reader stops
#: there (an unclosed quote can otherwise pull the rest of a large file into one field) and refuses that record.
READ_LIMIT_FACTOR = 64
DEFAULT_MAX_FIELD_CHARS = 65_536

_SURROGATE = re.compile("[\ud800-\udfff]")
# csv.field_size_limit is process-wide: hold it only while this module's reader parses one record.
_CSV_LIMIT_LOCK = threading.Lock()


@dataclass
class RawRow:
    """One record as read: its source file, 1-based line (or row number) and fields; or why it could not be read."""

    source: str
    line: int
    fields: dict[str, Any]
    error: str | None = None  # reason code when the record could not be parsed at all
    error_detail: str | None = None


class HugeInt:
    """A JSON integer literal too long for int64, kept as its text so that no exact big int is ever built."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text  # readers that take values as text (labels) see the literal, as they did before

    def __repr__(self) -> str:
        return f"<integer of {len(self.text.lstrip('-'))} digits: {self.text[:24]}...>"


def has_surrogates(value: str) -> bool:
    """Tell whether `value` holds lone surrogates (undecodable bytes, or a bad \\uD800 escape): not UTF-8-encodable."""
    return _SURROGATE.search(value) is not None


def _invalid_bytes(value: str) -> str:
    """Show the undecodable bytes of a surrogate-escaped string, e.g. 'Caf\\xe9'."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_json_int(text: str) -> int | HugeInt:
    """`json.loads` hook: an int, or a `HugeInt` past 19 digits (int() of 5,000 digits raises for the whole line)."""
    return HugeInt(text) if len(text.lstrip("-")) > 19 else int(text)


# One decoder for all lines: json.loads(text, parse_int=...) would build a new decoder per call.
_JSON_DECODER = json.JSONDecoder(parse_int=parse_json_int)


def parse_json(text: str) -> Any:
    """Parse JSON text with integer literals past int64 kept as `HugeInt`; JSONDecodeError/RecursionError as json."""
    return _JSON_DECODER.decode(text)


def _next_csv_record(reader: Iterator[list[str]], limit: int) -> list[str]:
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit(limit)
        try:
            return next(reader)
        finally:
            csv.field_size_limit(previous)


def read_csv(path: Path, *, max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> Iterator[RawRow]:
    """Yield the rows of a CSV file with a header; fields with invalid UTF-8 are flagged, not dropped.

    A field over `READ_LIMIT_FACTOR * max_field_chars` characters is not read: its record becomes a
    `field_too_long` row and reading goes on at the next line. Longer-than-`max_field_chars` fields under that
    limit are read whole and refused by validation, which can name the field.
    """
    limit = READ_LIMIT_FACTOR * max_field_chars
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = _next_csv_record(reader, limit)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RawRow(str(path), 1, {}, "invalid_header", f"{path}:1: the header cannot be read ({exc})")
            return
        header = [h.strip() for h in header]
        named = [h for h in header if h]
        twice = next((h for h in named if named.count(h) > 1), None) if len(set(named)) < len(named) else None
        problem = next((h for h in header if has_surrogates(h) or len(h) > max_field_chars), twice)
        if problem is not None:
            shown = _invalid_bytes(problem[:200])
            why = ("is not valid UTF-8" if has_surrogates(problem) else
                   f"is over {max_field_chars} characters" if len(problem) > max_field_chars else
                   "appears twice (which value would count?)")
            yield RawRow(str(path), 1, {"_bad_value": shown}, "invalid_header",
                         f"{path}:1: header column '{shown}' {why}; no row of this file is read")
            return
        start = reader.line_num + 1
        while True:
            line = start
            try:
                values = _next_csv_record(reader, limit)
            except StopIteration:
                return
            except csv.Error as exc:
                # The C reader drops the rest of the failing line and starts the next record on the next line.
                start = reader.line_num + 1
                too_long = "field limit" in str(exc)
                yield RawRow(
                    str(path), line, {}, "field_too_long" if too_long else "invalid_csv",
                    f"{path}:{line}: a field is over {limit} characters, not read (an unclosed quote?)" if too_long
                    else f"{path}:{line}: CSV record cannot be read: {exc}",
                )
                continue
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
            bad = [k for k, v in fields.items() if has_surrogates(v)]
            if bad:
                k = bad[0]
                shown = _invalid_bytes(fields[k][:200])
                pid = fields.get("product_id")
                yield RawRow(
                    str(path), line, {"product_id": pid if pid is None or not has_surrogates(pid) else None,
                                      "_bad_field": k, "_bad_value": shown},
                    "invalid_utf8", f"{path}:{line}: field {k!r} is not valid UTF-8: {shown!r}",
                )
                continue
            yield RawRow(str(path), line, fields)


def read_jsonl(path: Path, *, max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> Iterator[RawRow]:
    """Yield the objects of a JSON-lines file; an undecodable or non-object line is flagged with its number.

    A line over `READ_LIMIT_FACTOR * max_field_chars` bytes is skipped unread (`record_too_long`). Integer
    literals past int64 come back as `HugeInt`, for validation to refuse with the field's name.
    """
    limit = READ_LIMIT_FACTOR * max_field_chars
    with open(path, "rb") as fh:
        line_no = 0
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line without holding it
                    raw = fh.readline(1 << 20)
                yield RawRow(str(path), line_no, {}, "record_too_long",
                             f"{path}:{line_no}: line is over {limit} bytes, not read")
                continue
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                shown = raw[:400].decode("utf-8", "backslashreplace").strip()[:200]
                yield RawRow(str(path), line_no, {"_bad_field": None, "_bad_value": shown}, "invalid_utf8",
                             f"{path}:{line_no}: not valid UTF-8 at byte {exc.start}: {shown!r}")
                continue
            try:
                obj = parse_json(text)
            except json.JSONDecodeError as exc:
                yield RawRow(str(path), line_no, {"_bad_value": text.strip()[:200]}, "invalid_json",
                             f"{path}:{line_no}: invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            except RecursionError:
                yield RawRow(str(path), line_no, {"_bad_value": text.strip()[:200]}, "invalid_json",
                             f"{path}:{line_no}: invalid JSON: nested too deeply to parse")
                continue
            if not isinstance(obj, dict):
                yield RawRow(str(path), line_no, {"_bad_value": text.strip()[:200]}, "not_an_object",
                             f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield RawRow(str(path), line_no, obj)


def _decode_binary(path: Path, row: int, rec: dict[str, Any]) -> RawRow:
    """Turn top-level binary values (strings written without a UTF-8 annotation) into text, or flag them."""
    for key, value in rec.items():
        if isinstance(value, bytes):
            try:
                rec[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                shown = value[:200].decode("utf-8", "backslashreplace")
                return RawRow(str(path), row, {"product_id": rec.get("product_id"), "_bad_field": key,
                                               "_bad_value": shown},
                              "invalid_utf8", f"{path}:{row}: column {key!r} is not valid UTF-8: {shown!r}")
    return RawRow(str(path), row, rec)


def _unreadable_row(path: Path, row: int, batch: pa.RecordBatch, i: int) -> RawRow:
    """Convert row `i` of `batch` cell by cell, flagging the first cell Arrow cannot turn into a Python value."""
    rec: dict[str, Any] = {}
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            rec[name] = column[i].as_py()
        except (pa.ArrowException, ValueError, OverflowError) as exc:
            reason = "invalid_utf8" if isinstance(exc, UnicodeDecodeError) else "unreadable_value"
            return RawRow(str(path), row, {"product_id": rec.get("product_id"), "_bad_field": name,
                                           "_bad_value": None}, reason,
                          f"{path}:{row}: column {name!r} ({column.type}) cannot be read: {exc}")
    return _decode_binary(path, row, rec)


def read_parquet(path: Path, *, batch_size: int = 65_536) -> Iterator[RawRow]:
    """Yield the rows of a Parquet file in batches (out of core); `line` is the 1-based row number.

    A cell Arrow cannot convert (invalid UTF-8, an out-of-range timestamp) refuses its row, not the batch; a file
    that is not Parquet at all raises ValueError naming it.
    """
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    batches = pf.iter_batches(batch_size=batch_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: Parquet data after row {row} cannot be read ({exc})") from exc
        try:
            records = batch.to_pylist()
        except (pa.ArrowException, ValueError, OverflowError):
            records = None
        for i in range(batch.num_rows):
            row += 1
            if records is None:
                yield _unreadable_row(path, row, batch, i)
            else:
                yield _decode_binary(path, row, records[i])


_TEXT_READERS = {".csv": read_csv, ".jsonl": read_jsonl, ".ndjson": read_jsonl}
_FORMATS = sorted([*_TEXT_READERS, ".parquet"])


def read_catalog_file(path: Path, *, max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> Iterator[RawRow]:
    """Dispatch on the file extension; an unknown extension raises listing the supported ones."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        # Parquet values come out whole and bounded by the file's own pages; validation checks their length.
        return read_parquet(path)
    reader = _TEXT_READERS.get(suffix)
    if reader is None:
        raise ValueError(f"{path}: unsupported catalog format {path.suffix!r}; supported: {', '.join(_FORMATS)}")
    return reader(path, max_field_chars=max_field_chars)
