"""Read event sources in bounded chunks: JSON lines (exact line numbers, malformed lines kept) and Parquet rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: Fields of an event record, as the producer sends them (all read as text, then validated).
EVENT_FIELDS = ("event_id", "ts", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id",
                "position")

_BLOCK_BYTES = 32 << 20


def _lines_table(lines: list[bytes], first_line: int) -> pa.Table:
    """A (line, text) table; blank lines are skipped, invalid UTF-8 becomes U+FFFD (and then fails JSON checks)."""
    numbers = [first_line + i for i, ln in enumerate(lines) if ln.strip()]
    kept = [ln for ln in lines if ln.strip()]
    arr = pa.array(kept, type=pa.binary())
    try:
        text = arr.cast(pa.string())
    except pa.ArrowInvalid:
        text = pa.array([ln.decode("utf-8", errors="replace") for ln in kept], type=pa.string())
    return pa.table({"line": pa.array(numbers, pa.int64()), "text": text})


def iter_json_lines(path: Path, *, block_bytes: int = _BLOCK_BYTES) -> Iterator[pa.Table]:
    """Yield `(line, text)` tables of `path`, about `block_bytes` of input each; `line` is 1-based.

    Splitting happens on bytes in C (`bytes.split`), so a chunk costs no per-record Python logic.
    """
    next_line = 1
    rest = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(block_bytes)
            if not block:
                break
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            lines = data[:cut].split(b"\n")
            rest = data[cut + 1:]
            yield _lines_table(lines, next_line)
            next_line += len(lines)
    if rest.strip():
        yield _lines_table([rest], next_line)


def iter_parquet_rows(path: Path, *, batch_rows: int) -> Iterator[pa.Table]:
    """Yield tables of `path`'s event columns (missing ones as nulls) with a 1-based `line` (row number)."""
    pf = pq.ParquetFile(path)
    present = [f for f in EVENT_FIELDS if f in pf.schema_arrow.names]
    first = 1
    for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
        t = pa.Table.from_batches([batch])
        cols = {"line": pa.array(range(first, first + t.num_rows), pa.int64())}
        for f in EVENT_FIELDS:
            col = t.column(f) if f in present else pa.nulls(t.num_rows, pa.string())
            if pa.types.is_timestamp(col.type) and col.type.tz is None:
                col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))  # naive times are UTC
            cols[f] = col
        first += t.num_rows
        yield pa.table(cols)


def detect_format(path: Path) -> str:
    """Return 'jsonl' or 'parquet' from the file name; anything else raises ValueError listing the valid ones."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: unknown event file format; valid: .jsonl, .ndjson, .json (JSON lines), .parquet")
