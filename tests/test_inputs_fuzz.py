"""Property tests of the event and rater file readers through their stages, on hostile files made at test time;
and split names in the config, which become folder names.

Arbitrary field values, wrong types, invalid UTF-8, lone surrogates, huge numbers, garbage lines. Whatever the
input: no exception escapes the stage, and every record read is accounted for: stored, quarantined (with a reason)
or dropped as a duplicate, per the stage's own result counts. Each example runs on a fresh workspace.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from labels_fixtures import image_id_of, png, tiny_workspace

from visprep.events.normalize import EVENT_TYPES
from visprep.events.readers import EVENT_FIELDS
from visprep.events.stage import ingest_event_files
from visprep.labels.readers import parse_grade
from visprep.labels.stage import labels_stage
from visprep.workspace import Workspace

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

_BAD_BYTES = [b"\xff", b"caf\xe9", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"a\x80b"]
_MARK = "@@BAD@@"  # a field value replaced by invalid UTF-8 once the line is encoded

_text = st.text(max_size=12)
_huge = st.sampled_from([2**63, -(2**63) - 1, 10**30, -(10**400), 10**400, 1e308, -1e308, 5e-324])
_encodable = st.one_of(
    st.none(), st.booleans(), _text, _huge,
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_text, st.integers(), max_size=2),
)
_wrong = st.one_of(_encodable, st.just("\ud800"))  # a lone surrogate: valid JSON as an escape, not UTF-8


def _fresh(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _non_blank(lines: list[bytes]) -> list[int]:
    """1-based numbers of the lines that hold a record (a blank line is none)."""
    return [i + 1 for i, ln in enumerate(lines) if ln.strip()]


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def _json_line(draw: st.DrawFn, fields: dict[str, st.SearchStrategy]) -> bytes:
    """One line of a JSON-lines file: an object with plausible or hostile fields, invalid bytes, or garbage."""
    kind = draw(st.sampled_from(["object", "object", "object", "bad_utf8", "garbage", "not_object", "blank"]))
    if kind == "garbage":
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    if kind == "not_object":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), _text))).encode()
    if kind == "blank":
        return draw(st.sampled_from([b"", b"  ", b"\t\r"]))
    record = {}
    for name, good in fields.items():
        choice = draw(st.sampled_from(["good", "good", "wrong", "absent"]))
        if choice != "absent":
            record[name] = draw(good if choice == "good" else _wrong)
    if draw(st.booleans()):
        record[draw(_text)] = draw(_wrong)  # an unknown field
    if kind == "bad_utf8":
        record[draw(st.sampled_from(sorted(fields)))] = _MARK
    ascii_only = draw(st.booleans())
    line = json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return line.replace(_MARK.encode(), draw(st.sampled_from(_BAD_BYTES)))


# ------------------------------------------------------------------------------------------------------- events

_EVENT_GOOD = {
    "event_id": st.sampled_from(["e1", "e2", "e3", " e1 "]),
    "ts": st.sampled_from(["2024-03-01T10:00:00Z", 1709287200000, "2024-03-01", "1709287200000", "yesterday"]),
    "user_id": st.sampled_from(["u1", "u2"]),
    "session_id": st.sampled_from(["s1", "s2"]),
    "type": st.sampled_from([*EVENT_TYPES, "CLICK", "hover"]),
    "query_id": st.sampled_from(["q1", "q2"]),
    "query_image_id": st.sampled_from(["i1", ""]),
    "product_id": st.sampled_from(["p1", "p2"]),
    "position": st.sampled_from([1, 2, "3", 0, 2.5]),
}
assert set(_EVENT_GOOD) == set(EVENT_FIELDS)


def _check_events(ws: Workspace, r, lines_with_records: list[int], bad_utf8: set[int]) -> None:
    assert r.records == len(lines_with_records)
    assert r.records == r.events_new + r.duplicates + r.quarantined
    assert ws.read_table("events").num_rows == r.events_new
    q = ws.read_table("quarantine").to_pylist()
    assert len(q) == r.quarantined
    assert all(row["reason"] and row["detail"] and row["line"] in lines_with_records for row in q)
    assert {row["line"] for row in q if row["reason"] == "invalid_utf8"} == bad_utf8


_SEARCH = b'"session_id": "s1", "type": "search", "query_id": "q1", "ts": "2024-03-01T10:00:00Z"'


@FUZZ
@given(lines=st.lists(_json_line(_EVENT_GOOD), max_size=12))
@example(lines=[b'{"event_id": "e1", "user_id": "caf\xe9", ' + _SEARCH + b"}"])
@example(lines=[b'{"event_id": "e1", "user_id": "\\ud800", ' + _SEARCH + b"}", b'{"event_id": "e2", "position": 1e400}'])
@example(lines=[b"[" * 100_000 + b"\xff", b'{"event_id": ' + b"[" * 100_000, b'{"position": 1' + b"0" * 5000 + b"}"])
def test_event_json_lines_are_stored_or_quarantined_never_lost(tmp_path: Path, lines: list[bytes]) -> None:
    root = _fresh(tmp_path)
    path = root / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    r = ingest_event_files(ws, [path], rebuild_pairs=False)
    records = _non_blank(lines)
    _check_events(ws, r, records, {n for n in records if not _decodes(lines[n - 1])})


_PARQUET_TYPES = {
    "string": (pa.string(), st.one_of(st.none(), _text)),
    "int64": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "float64": (pa.float64(), st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))),
    "bool": (pa.bool_(), st.one_of(st.none(), st.booleans())),
    "timestamp": (pa.timestamp("ms", tz="UTC"), st.one_of(st.none(), st.integers(-(2**50), 2**50))),
    "binary": (pa.binary(), st.one_of(st.none(), st.binary(max_size=8))),
}


@st.composite
def _event_table(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 8))
    columns = {}
    for name in EVENT_FIELDS:
        kind = draw(st.sampled_from(["good", "good", "absent", *_PARQUET_TYPES]))
        if kind == "absent":
            continue
        if kind == "good":
            values = [draw(_EVENT_GOOD[name]) for _ in range(n)]
            columns[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        else:
            arrow_type, values = _PARQUET_TYPES[kind]
            columns[name] = pa.array([draw(values) for _ in range(n)], arrow_type)
    return pa.table(columns) if columns else pa.table({"other": pa.array([1] * n, pa.int64())})


@settings(FUZZ, max_examples=30)
@given(table=_event_table())
# Found by this test: abs() of the smallest int64 time overflowed in DuckDB and failed the whole ingest.
@example(table=pa.table({"event_id": ["e1"], "ts": pa.array([-(2**63)], pa.int64()), "user_id": ["u1"],
                         "session_id": ["s1"], "type": ["search"], "query_image_id": ["i1"], "product_id": ["p1"],
                         "position": ["1"]}))
def test_event_parquet_rows_are_stored_or_quarantined_never_lost(tmp_path: Path, table: pa.Table) -> None:
    root = _fresh(tmp_path)
    path = root / "events.parquet"
    pq.write_table(table, path)
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    r = ingest_event_files(ws, [path], rebuild_pairs=False)
    _check_events(ws, r, list(range(1, table.num_rows + 1)), set())


def test_invalid_utf8_in_an_event_field_is_quarantined_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = {"event_id": "e1", "ts": "2024-03-01T10:00:00Z", "user_id": "u1", "session_id": "s1", "type": "search",
            "query_id": "q1"}
    path.write_bytes(b"\n".join([
        json.dumps(good).encode(),
        json.dumps({**good, "event_id": "e2", "user_id": _MARK}).encode().replace(_MARK.encode(), b"caf\xe9"),
        b"\xff\xfe not even json",
    ]) + b"\n")
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    r = ingest_event_files(ws, [path], rebuild_pairs=False)
    assert (r.events_new, r.by_reason) == (1, {"invalid_utf8": 2})
    q = {row["line"]: row for row in ws.read_table("quarantine").to_pylist()}
    assert (q[2]["field"], q[2]["value"]) == ("user_id", "caf\\xe9")
    assert q[2]["detail"].endswith("events.jsonl:2: field 'user_id' is not valid UTF-8: caf\\xe9")
    assert (q[3]["field"], q[3]["value"]) == (None, "\\xff\\xfe not even json")
    assert "\ufffd" not in json.dumps(ws.read_table("events").to_pylist(), default=str)


# ------------------------------------------------------------------------------------------------------- labels

_LABEL_GOOD = {
    "query_id": st.sampled_from(["q1.png", "KNOWN", "0" * 64, "missing.png", ""]),
    "product_id": st.sampled_from(["p00", "p01", "p05", "nope", ""]),
    "rater_id": st.sampled_from(["alice", "bob", " carol "]),
    "grade": st.sampled_from([0, 1, 3, 4, "2", "3.0", 4.0, 5, -1, "x"]),
    "ts": st.sampled_from(["2026-01-01T10:00:00", "2026-01-02T10:00:00Z", "", "yesterday"]),
    "comment": _text,
    "batch": st.sampled_from(["b1", "b2", ""]),
}
_LABEL_COLUMNS = list(_LABEL_GOOD)
# Free text that cannot name a URL scheme or leave the raters' folder: no fetch off this machine.
_path_safe_text = st.text(alphabet=st.characters(exclude_characters=":/\\", exclude_categories=("Cs",)), max_size=12)


@pytest.fixture(scope="module")
def labels_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small workspace (built once, copied per example) and the image id of one of its catalog images."""
    root = tmp_path_factory.mktemp("labels_template")
    ws = tiny_workspace(root / "ws", n_products=8)
    (root / "raters").mkdir()
    (root / "raters" / "q1.png").write_bytes(png(100))
    return root, image_id_of(ws, "p05")


def _labels_run(template: tuple[Path, str], tmp_path: Path, name: str, data: bytes):
    root = _fresh(tmp_path)
    shutil.copytree(template[0], root, dirs_exist_ok=True)
    path = root / "raters" / name
    path.write_bytes(data.replace(b"KNOWN", template[1].encode()))
    ws = Workspace(root / "ws")
    r = labels_stage(ws, [path])
    assert r.rows_read == r.judgments + r.duplicate_identical + r.quarantined
    assert ws.read_table("judgments").num_rows == r.judgments
    q = ws.read_table("quarantine").to_pylist()
    assert len(q) == r.quarantined and all(row["reason"] and row["detail"] for row in q)
    return r, q


def _label_fields(text: st.SearchStrategy) -> dict[str, st.SearchStrategy]:
    return {k: st.one_of(v, text) if k in ("query_id", "product_id", "rater_id") else v
            for k, v in _LABEL_GOOD.items()}


@FUZZ
@given(lines=st.lists(_json_line(_label_fields(_path_safe_text)), max_size=10))
@example(lines=[b'{"query_id": "q1.png", "product_id": "p00", "rater_id": "alice", "grade": ' + b"1" * 400 + b"}"])
@example(lines=[b'{"query_id": "q1.png", "product_id": "p00", "rater_id": "\\ud800", "grade": 3}'])
@example(lines=[b'{"query_id": "q1.png", "product_id": "p00", "rater_id": "a", "grade": 3, "comment": '
                + b"[" * 990 + b"]" * 990 + b"}"])
def test_rater_json_lines_are_stored_or_quarantined_never_lost(labels_template: tuple[Path, str], tmp_path: Path,
                                                               lines: list[bytes]) -> None:
    # Free text is kept path-safe in query_id; the other fields may hold anything.
    r, q = _labels_run(labels_template, tmp_path, "batch.jsonl", b"\n".join(lines))
    records = _non_blank(lines)
    assert r.rows_read == len(records)
    bad = {n for n in records if not _decodes(lines[n - 1])}
    assert {row["line"] for row in q if row["reason"] == "invalid_utf8"} >= bad


@st.composite
def _csv_file(draw: st.DrawFn) -> tuple[bytes, int]:
    """A rater CSV (header + rows of text, some with invalid bytes or a wrong column count) and its record count."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_LABEL_COLUMNS)
    fields = _label_fields(_path_safe_text)
    records = 0
    for _ in range(draw(st.integers(0, 10))):
        row = []
        for name in _LABEL_COLUMNS:
            value = draw(st.one_of(fields[name], _encodable))
            row.append("" if value is None else str(value))
        if draw(st.integers(0, 5)) == 0:
            row[draw(st.integers(0, len(row) - 1))] = _MARK
        if draw(st.integers(0, 6)) == 0:
            row = row[: draw(st.integers(0, len(row) - 1))] + (["extra"] if draw(st.booleans()) else [])
        writer.writerow(row)
        records += 0 if all(not v.strip() for v in row) else 1
    data = out.getvalue().encode("utf-8").replace(_MARK.encode(), draw(st.sampled_from(_BAD_BYTES)))
    return data, records


@FUZZ
@given(csv_file=_csv_file())
def test_rater_csv_rows_are_stored_or_quarantined_never_lost(labels_template: tuple[Path, str], tmp_path: Path,
                                                             csv_file: tuple[bytes, int]) -> None:
    data, records = csv_file
    r, _ = _labels_run(labels_template, tmp_path, "batch.csv", data)
    assert r.rows_read == records


def test_a_lone_surrogate_in_a_rater_field_is_quarantined(labels_template: tuple[Path, str], tmp_path: Path) -> None:
    lines = [b'{"query_id": "q1.png", "product_id": "p00", "rater_id": "al\\ud800ice", "grade": 3}',
             b'{"query_id": "q1.png", "product_id": "p00", "rater_id": "bob", "grade": 3}']
    r, q = _labels_run(labels_template, tmp_path, "batch.jsonl", b"\n".join(lines))
    assert (r.judgments, r.by_reason) == (1, {"invalid_utf8": 1})
    assert (q[0]["line"], q[0]["field"], q[0]["value"]) == (1, "rater_id", "al\\ud800ice")


@pytest.mark.parametrize("grade", [10**400, -(10**30), float("inf"), "1e999"])
def test_grades_too_large_for_a_float_are_refused_as_values(grade: object) -> None:
    with pytest.raises(ValueError, match="far outside any rubric|not a finite number"):
        parse_grade(grade)


# ------------------------------------------------------------------------------------------ split names in config


@pytest.mark.parametrize(("toml", "field", "name"), [
    ('[split]\nfractions = { train = 0.9, "../../escape" = 0.1 }\n', "split.fractions", "../../escape"),
    ('[split]\nfractions = { train = 0.9, eval = 0.1 }\n[export]\nsplits = ["/abs"]\n', "export.splits", "/abs"),
    ('[sampling]\nsplits = ["train", "a/b"]\n', "sampling.splits", "a/b"),
    ('[training]\nsplit = ".."\n', "training.split", ".."),
    ('[labels]\neval_split = "eval-2"\n', "labels.eval_split", "eval-2"),
])
def test_unsafe_split_names_are_refused_at_config_load(tmp_path: Path, toml: str, field: str, name: str) -> None:
    from visprep.config import load_config

    path = tmp_path / "visprep.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=rf"invalid configuration: {re.escape(field)} = .*"
                                         rf"invalid split name {re.escape(repr(name))}"):
        load_config(path)
    path.write_text(toml.replace(name, "holdout_2"))
    if field != "export.splits":  # export.splits must also name a split of split.fractions
        load_config(path)


def test_config_split_names_are_the_shard_writers() -> None:
    from visprep.config import SPLIT_NAME_PATTERN
    from visprep.export.shards import SPLIT_PATTERN

    assert SPLIT_NAME_PATTERN.pattern == SPLIT_PATTERN.pattern
