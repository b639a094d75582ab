"""The vectorised JSON-lines reader against a line-by-line oracle: same line numbers, same text, same blanks."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visprep.events.readers import iter_json_lines


def _oracle(data: bytes) -> list[tuple[int, str]]:
    """Line by line: 1-based numbers, blank (whitespace-only) lines skipped, bad UTF-8 replaced per line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]  # a final newline ends the last line, it does not start another
    return [(i + 1, ln.decode("utf-8", errors="replace")) for i, ln in enumerate(lines) if ln.strip()]


_PIECES = [b'{"event_id": "e1"}', b"", b"   ", b"\t", b"\r", b'{"x": "caf\xc3\xa9"}', b"\xff\xfe broken",
           b"{not json", b'{"a": 1}\r', b" padded ", b"\x0b\x0c", b"x" * 40]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_PIECES), max_size=30), st.booleans(), st.integers(1, 64))
def test_json_lines_match_a_line_by_line_oracle(tmp_path: Path, pieces: list[bytes], final_newline: bool,
                                                block: int) -> None:
    data = b"\n".join(pieces) + (b"\n" if final_newline and pieces else b"")
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    got = [(ln, text) for t in iter_json_lines(path, block_bytes=block)
           for ln, text in zip(t.column("line").to_pylist(), t.column("text").to_pylist())]
    assert got == _oracle(data)


def test_prefetch_keeps_order_raises_where_the_reader_failed_and_stops_early() -> None:
    import pyarrow as pa
    import pytest

    from visprep.engines.local import prefetch

    tables = [pa.table({"x": [i]}) for i in range(20)]
    assert [t.column("x")[0].as_py() for t in prefetch(iter(tables), depth=3)] == list(range(20))

    def broken():
        yield tables[0]
        raise OSError("disk gone")

    it = prefetch(broken())
    assert next(it) is tables[0]
    with pytest.raises(OSError, match="disk gone"):
        next(it)

    it = prefetch(iter(tables))  # the consumer stops after one chunk: the reader thread must not hang
    next(it)
    it.close()
