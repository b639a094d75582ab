"""Read event sources in bounded chunks: JSON lines (exact line numbers, malformed lines kept) and Parquet rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

#: Fields of an event record, as the producer sends them (all read as text, then validated).
EVENT_FIELDS = ("event_id", "ts", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id",
                "position")

_BLOCK_BYTES = 32 << 20


#: The bytes `bytes.strip()` removes (a line of only these is blank), as a lookup table.
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8)] = True


def _lines_table(block: bytes, first_line: int) -> tuple[pa.Table, int]:
    """The `(line, text)` table of the lines of `block` (split on b"\n"; no newline at its end) and how many
    lines it had. Blank lines are skipped (their numbers too); invalid UTF-8 becomes U+FFFD (and then fails the
    JSON checks).

    Built from the block's bytes with numpy: the newlines are dropped in one copy and the Arrow offsets computed
    from their positions, so a 32 MB block costs no Python object per line (that cost 2.5 s per million lines).
    """
    buf = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(buf == 10)
    n = len(nl) + 1
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(buf)]])
    # A line starting with a non-blank byte is not blank; the few others (empty, or starting with whitespace) are
    # checked one by one.
    keep = ends > starts
    keep[keep] = ~_IS_SPACE[buf[starts[keep]]]
    for i in np.flatnonzero(~keep & (ends > starts)).tolist():
        keep[i] = bool(block[starts[i]:ends[i]].strip())
    offsets = np.concatenate([starts - np.arange(n), [len(buf) - (n - 1)]]).astype(np.int32)
    text = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf[buf != 10]))
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:  # invalid UTF-8 somewhere in the block: decode line by line, replacing
        text = pa.array([ln.decode("utf-8", errors="replace") for ln in block.split(b"\n")], pa.string())
    numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    mask = pa.array(keep)
    return pa.table({"line": pa.array(numbers).filter(mask), "text": text.filter(mask)}), n


def iter_json_lines(path: Path, *, block_bytes: int = _BLOCK_BYTES) -> Iterator[pa.Table]:
    """Yield `(line, text)` tables of `path`, about `block_bytes` of input each; `line` is 1-based."""
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
            rest = data[cut + 1:]
            table, n = _lines_table(data[:cut], next_line)
            next_line += n
            yield table
    if rest.strip():
        yield _lines_table(rest, next_line)[0]


def detect_format(path: Path) -> str:
    """Return 'jsonl' or 'parquet' from the file name; anything else raises ValueError listing the valid ones."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: unknown event file format; valid: .jsonl, .ndjson, .json (JSON lines), .parquet")
