"""Read event sources in bounded chunks: JSON lines (exact line numbers, malformed lines kept) and Parquet rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

#: Fields of an event record, as the producer sends them (all read as text, then validated).
EVENT_FIELDS = ("event_id", "ts", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id",
                "position")

_BLOCK_BYTES = 32 << 20


#: The bytes `bytes.strip()` removes (a line of only these is blank), as a lookup table.
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8)] = True


#: Columns of a lines chunk besides `line` and `text`: set (else null) on a line that is not valid UTF-8, whose
#: record is refused as `invalid_utf8|<field>` (field empty when the line is not a JSON object), showing
#: `utf8_value`.
UTF8_COLUMNS = ("utf8_problem", "utf8_value")


def _escaped(text: str) -> str:
    """`text` with each undecodable byte (a surrogate escape) shown as \\xNN, other lone surrogates as \\uNNNN."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return "".join(f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff"
                   else f"\\u{ord(ch):04x}" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def _has_undecodable(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_undecodable(k) or _has_undecodable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_undecodable(v) for v in value)
    return False


def utf8_problem(raw: bytes) -> tuple[str, str]:
    """For a line that is not valid UTF-8: (`invalid_utf8|<field>`, the field's value with the bad bytes escaped,
    at most 200 characters). The field is the first top-level key whose key or value holds an undecodable byte
    (escaped, `|` shown as \\x7c, at most 100 characters); empty, with the whole line shown, when the line is not
    a JSON object."""
    text = raw.decode("utf-8", "surrogateescape")
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            for key, value in obj.items():
                if _has_undecodable(key) or _has_undecodable(value):
                    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    field = _escaped(key[:100]).replace("|", "\\x7c")[:100]
                    return f"invalid_utf8|{field}", _escaped(shown[:200])[:200]
    except (ValueError, RecursionError):  # not JSON (or nested too deep to walk): the line as a whole is shown
        pass
    return "invalid_utf8|", _escaped(text.strip()[:200])[:200]


def _lines_table(block: bytes, first_line: int) -> tuple[pa.Table, int]:
    """The `(line, text, utf8_problem, utf8_value)` table of the lines of `block` (split on b"\n"; no newline at
    its end) and how many lines it had. Blank lines are skipped (their numbers too). A line that is not valid UTF-8
    gets `utf8_problem` / `utf8_value` (`utf8_problem`), and a `text` with U+FFFD for the bad bytes, for display
    only: its record is refused, never parsed from the replaced text.

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
    problem = value = pa.nulls(n, pa.string())
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:  # invalid UTF-8 somewhere in the block: decode line by line, flagging the bad lines
        texts, problems, values = [], [], []
        for ln in block.split(b"\n"):
            try:
                texts.append(ln.decode("utf-8"))
                problems.append(None)
                values.append(None)
            except UnicodeDecodeError:
                texts.append(ln.decode("utf-8", errors="replace"))
                why, shown = utf8_problem(ln)
                problems.append(why)
                values.append(shown)
        text, problem, value = (pa.array(c, pa.string()) for c in (texts, problems, values))
    numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    mask = pa.array(keep)
    return pa.table({"line": pa.array(numbers).filter(mask), "text": text.filter(mask),
                     "utf8_problem": problem.filter(mask), "utf8_value": value.filter(mask)}), n


def iter_json_lines(path: Path, *, block_bytes: int = _BLOCK_BYTES) -> Iterator[pa.Table]:
    """Yield `(line, text, utf8_problem, utf8_value)` tables of `path`, about `block_bytes` of input each; `line`
    is 1-based (see `_lines_table`)."""
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
