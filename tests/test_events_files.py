"""Events from files: validation and quarantine, day parts, dedup across files and runs, no-op reruns, kill -9."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from visprep.cli import EXIT_BUSY, app
from visprep.events.checkpoint import EventLog, part_bucket
from visprep.events.interactions import pair_groups
from visprep.events.simulate import SimConfig, simulate
from visprep.events.stage import ingest_event_files
from visprep.workspace import Workspace, WorkspaceLocked


def _ev(eid: str, typ: str, **kw: object) -> dict:
    base = {"event_id": eid, "ts": "2024-03-01T10:00:00Z", "user_id": "u1", "session_id": "s1", "type": typ}
    return {**base, **kw}


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _tables(ws: Workspace) -> tuple[list[dict], list[dict]]:
    ev = ws.read_table("events").sort_by("event_id").to_pylist()
    pairs = ws.read_table("interaction_pairs").to_pylist()
    return ev, pairs


def _assert_parts_hold_only_their_users(parts: list[Path]) -> None:
    """Every event part holds only the users of the bucket its name declares."""
    con = duckdb.connect()
    for p in parts:
        g, of = part_bucket(p.name)
        assert con.execute(f"SELECT count(*) FROM read_parquet('{p}') WHERE hash(user_id) % {of} <> {g}"
                           ).fetchall()[0][0] == 0, p.name


def _same_pairs(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k, v in x.items():
            if isinstance(v, float):
                assert y[k] == pytest.approx(v, rel=1e-9), (k, x, y)
            else:
                assert y[k] == v, (k, x, y)


def test_bad_records_are_quarantined_with_reasons(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "a.jsonl", [
        _ev("e1", "search", query_id="q1"),
        _ev("e2", "impression", query_id="q1", product_id="p1", position=1, ts=1709287200000),  # epoch ms
        _ev("e3", "click", query_id="q1", product_id="p1", position="1", ts="2024-03-01T12:00:00+02:00"),
        "{not json",
        _ev("e4", "hover", product_id="p1"),
        {"event_id": "e5", "ts": "2024-03-01T10:00:00Z", "user_id": "u1", "type": "view", "product_id": "p1"},
        _ev("e6", "view", product_id="p1", ts="yesterday"),
        _ev("e7", "view", product_id="p1", ts=1709287200),  # epoch seconds read as ms: 1970
        _ev("e8", "impression", query_id="q1", product_id="p2", position=0),
        _ev("e9", "impression", query_id="q1", product_id="p2"),
        _ev("e10", "click", query_id="q1"),
        "",
        _ev("e2", "impression", query_id="q1", product_id="p1", position=1, ts=1709287200000),  # duplicate
        _ev("e11", "view", product_id="p3", ts="2024-03-02T00:00:01Z"),
    ])
    ws = Workspace(tmp_path / "ws")
    r = ingest_event_files(ws, [f])
    assert (r.records, r.events_new, r.duplicates, r.quarantined) == (13, 4, 1, 8)
    q = {row["line"]: row for row in ws.read_table("quarantine").to_pylist()}
    assert {ln: (row["reason"], row["field"]) for ln, row in q.items()} == {
        4: ("malformed_json", None), 5: ("unknown_type", "type"), 6: ("missing_field", "session_id"),
        7: ("bad_timestamp", "ts"), 8: ("bad_timestamp", "ts"), 9: ("bad_position", "position"),
        10: ("missing_field", "position"), 11: ("missing_field", "product_id")}
    assert q[5]["value"] == "hover" and "a.jsonl:5" in q[5]["detail"] and q[5]["record_id"] == "e4"
    assert all(row["stage"] == "events" for row in q.values())
    ev = {row["event_id"]: row for row in ws.read_table("events").to_pylist()}
    assert sorted(ev) == ["e1", "e11", "e2", "e3"]
    assert ev["e3"]["ts"].isoformat() == "2024-03-01T10:00:00+00:00" and ev["e3"]["position"] == 1
    assert ev["e2"]["ts"] == ev["e1"]["ts"]  # epoch ms and ISO agree
    # Partitioned by UTC day; plain pyarrow reads the folder.
    parts = sorted(p.name for p in ws.table_path("events").glob("part-*.parquet"))
    assert [p[5:15] for p in parts] == ["2024-03-01", "2024-03-02"]
    assert pq.read_table(ws.table_path("events")).num_rows == 4


def test_unknown_products_keep_or_quarantine(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "a.jsonl", [_ev("e1", "view", product_id="p1"), _ev("e2", "view", product_id="zz")])
    ws = Workspace(tmp_path / "ws")
    ws.write_table("products", pa.table({"product_id": ["p1"], "title": ["t"], "category": ["c"]}))
    assert ingest_event_files(ws, [f]).events_new == 2  # default: keep
    ws2 = Workspace(tmp_path / "ws2")
    ws2.root.mkdir()
    ws2.config_path.write_text('[events]\nunknown_product = "quarantine"\n')
    ws2.write_table("products", pa.table({"product_id": ["p1"], "title": ["t"], "category": ["c"]}))
    r = ingest_event_files(ws2, [f])
    assert (r.events_new, r.by_reason) == (1, {"unknown_product": 1})
    assert ws2.read_table("quarantine")["value"].to_pylist() == ["zz"]


def test_bad_config_value_is_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text('[events]\nunknown_product = "drop"\n')
    with pytest.raises(ValueError, match="unknown_product"):
        _ = ws.config


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sim")
    ev, _ = simulate(SimConfig(searches=1500, duplicate_rate=0.02, seed=3))
    half = ev.num_rows // 2
    a, b = d / "a.parquet", d / "b.jsonl"
    pq.write_table(ev.slice(0, half + 200), a)  # overlapping event ids across the two files
    b.write_text("\n".join(json.dumps(r) for r in ev.slice(half).to_pylist()) + "\n")
    return a, b


def test_incremental_equals_one_run_and_reruns_change_nothing(tmp_path: Path, sim_files: tuple[Path, Path]) -> None:
    a, b = sim_files
    one = Workspace(tmp_path / "one")
    r1 = ingest_event_files(one, [a, b])
    inc = Workspace(tmp_path / "inc")
    ingest_event_files(inc, [a])
    r2 = ingest_event_files(inc, [a, b])
    assert r2.files_already == 1 and r2.files_read == 1
    ev1, p1 = _tables(one)
    ev2, p2 = _tables(inc)
    assert [{k: v for k, v in e.items() if k != "source"} for e in ev1] == \
           [{k: v for k, v in e.items() if k != "source"} for e in ev2]
    _same_pairs(p1, p2)
    ids = pc.count_distinct(one.read_table("events")["event_id"]).as_py()
    assert ids == len(ev1) and r1.events_new == len(ev1) and r1.duplicates > 200
    # Re-running over the same files touches no file in the tables folder.
    before = {p: p.stat().st_mtime_ns for p in one.tables_dir.rglob("*")}
    r3 = ingest_event_files(one, [b, a])
    assert (r3.files_already, r3.events_new, r3.pairs_rebuilt) == (2, 0, False)
    assert {p: p.stat().st_mtime_ns for p in one.tables_dir.rglob("*")} == before


@pytest.mark.parametrize("point", ["after_output", "after_checkpoint"])
def test_kill_during_file_ingest_then_resume(tmp_path: Path, sim_files: tuple[Path, Path], point: str) -> None:
    a, b = sim_files
    ref = Workspace(tmp_path / "ref")
    ingest_event_files(ref, [a, b])
    ws = Workspace(tmp_path / "ws")
    ingest_event_files(ws, [a], rebuild_pairs=False)
    code = ("import sys; from visprep.workspace import Workspace; from visprep.events.stage import "
            "ingest_event_files as f; f(Workspace(sys.argv[1]), sys.argv[2:], _crash_at=sys.argv[0])")
    proc = subprocess.run([sys.executable, "-c", code.replace("sys.argv[0]", repr(point)), str(ws.root), str(b)],
                          check=False, capture_output=True)
    assert proc.returncode == -9
    r = ingest_event_files(ws, [a, b])
    assert r.files_read == (1 if point == "after_output" else 0)
    assert r.recovered_parts > 0 if point == "after_output" else r.recovered_parts == 0
    ev_ref, p_ref = _tables(ref)
    ev, p = _tables(ws)
    assert ev == ev_ref
    _same_pairs(p_ref, p)
    assert ws.read_table("quarantine").num_rows == ref.read_table("quarantine").num_rows


def test_conflicting_duplicates_are_quarantined_naming_fields(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [
        _ev("e1", "view", product_id="p1"),
        _ev("e1", "view", product_id="p1"),  # identical: counted once
        _ev("e2", "view", product_id="p2"),
        _ev("e2", "view", product_id="p9", ts="2024-03-01T11:00:00Z"),  # same id, two fields differ
    ])
    b = _jsonl(tmp_path / "b.jsonl", [
        _ev("e1", "view", product_id="p1", user_id="u2"),  # differs from the committed e1
        _ev("e2", "view", product_id="p2"),  # identical to the committed e2
        _ev("e3", "view", product_id="p3"),
    ])
    ws = Workspace(tmp_path / "ws")
    r1 = ingest_event_files(ws, [a])
    assert (r1.events_new, r1.duplicates, r1.quarantined, r1.by_reason) == (2, 1, 1, {"conflicting_duplicate": 1})
    r2 = ingest_event_files(ws, [b])
    assert (r2.events_new, r2.duplicates, r2.quarantined) == (1, 1, 1)
    q = {(Path(row["source"]).name, row["line"]): row for row in ws.read_table("quarantine").to_pylist()}
    assert set(q) == {("a.jsonl", 4), ("b.jsonl", 1)}
    assert (q[("a.jsonl", 4)]["reason"], q[("a.jsonl", 4)]["field"]) == ("conflicting_duplicate", "ts,product_id")
    assert "a.jsonl:3" in q[("a.jsonl", 4)]["detail"] and "product_id=p9 vs p2" in q[("a.jsonl", 4)]["value"]
    assert (q[("b.jsonl", 1)]["field"], q[("b.jsonl", 1)]["record_id"]) == ("user_id", "e1")
    ev = {e["event_id"]: e for e in ws.read_table("events").to_pylist()}
    assert sorted(ev) == ["e1", "e2", "e3"] and ev["e1"]["user_id"] == "u1" and ev["e2"]["product_id"] == "p2"
    # One run over both files: the same events and the same refused records.
    one = Workspace(tmp_path / "one")
    r = ingest_event_files(one, [a, b])
    assert (r.events_new, r.duplicates, r.quarantined) == (3, 2, 2)
    assert sorted((e["event_id"], e["user_id"], e["product_id"]) for e in one.read_table("events").to_pylist()) == \
           sorted((e["event_id"], e["user_id"], e["product_id"]) for e in ev.values())


def _parquet(path: Path, records: list[dict], types: dict[str, pa.DataType] | None = None) -> Path:
    """Write event records as a Parquet file, every field as text unless `types` says otherwise."""
    fields = ["event_id", "ts", "user_id", "session_id", "type", "query_id", "query_image_id", "product_id",
              "position"]
    types = types or {}
    cols = {}
    for f in fields:
        t = types.get(f, pa.string())
        vals = [r.get(f) for r in records]
        cols[f] = pa.array([None if v is None else (str(v) if t == pa.string() else v) for v in vals], t)
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_records_take_the_same_path_as_json_lines(tmp_path: Path) -> None:
    """Parquet files are streamed (only possible duplicates and refused records are staged); JSON lines are
    staged whole. The same records in both formats give the same events, counts and refused records, across two
    files whose ids overlap (duplicates and conflicts against the committed index)."""
    first = [
        _ev("e1", "search", query_id="q1"),
        _ev("e2", "impression", query_id="q1", product_id="p1", position=1),
        _ev("e3", "click", query_id="q1", product_id="p1", position=1),
        _ev("e4", "hover", product_id="p1"),  # unknown type
        _ev("e5", "view", product_id="p1", user_id=None),  # missing user
        _ev("e6", "view", product_id="p1", ts="yesterday"),
        _ev("e7", "view", product_id="p1", ts="1709287200"),  # epoch seconds read as ms: 1970
        _ev("e8", "impression", query_id="q1", product_id="p2", position=0),
        _ev("e9", "impression", query_id="q1", product_id="p2"),  # no position
        _ev("", "view", product_id="p1"),  # empty id
        _ev(" e2 ", "impression", query_id="q1", product_id="p1", position=1),  # padded: the same as e2
        _ev("e10", "view", product_id="p3", ts="2024-03-02T00:00:01Z"),
        _ev("e10", "view", product_id="p4", ts="2024-03-02T00:00:01Z"),  # conflicting
        _ev("e11", "view", product_id="p5"),
    ]
    second = [
        _ev("e11", "view", product_id="p5"),  # committed, identical
        _ev("e3", "click", query_id="q1", product_id="p1", position=2),  # committed, conflicting
        _ev("e12", "view", product_id="p6"),
        _ev("e12", "view", product_id="p6"),
        _ev("e13", "purchase", query_id="q1", product_id="p1"),
    ]
    got = {}
    for fmt in ("jsonl", "parquet"):
        ws = Workspace(tmp_path / fmt)
        counts = []
        for k, rows in enumerate((first, second)):
            rows = [{f: v for f, v in r.items() if v is not None} for r in rows]
            path = tmp_path / f"{fmt}{k}.{fmt}"
            _jsonl(path, rows) if fmt == "jsonl" else _parquet(path, rows, {"position": pa.int32()})
            r = ingest_event_files(ws, [path])
            counts.append((r.records, r.events_new, r.duplicates, r.quarantined, r.by_reason))
        events = [{k: v for k, v in e.items() if k != "source"} for e in ws.read_table("events").sort_by("event_id")
                  .to_pylist()]
        quarantine = sorted((Path(q["source"]).suffix, q["line"], q["reason"], q["field"], q["record_id"], q["value"])
                            for q in ws.read_table("quarantine").to_pylist())
        got[fmt] = (counts, events, [q[1:] for q in quarantine], _tables(ws)[1])
    assert got["parquet"] == got["jsonl"]
    counts, events, quarantine, _ = got["parquet"]
    assert counts[0] == (14, 5, 1, 8, {"unknown_type": 1, "missing_field": 3, "bad_timestamp": 2,
                                       "bad_position": 1, "conflicting_duplicate": 1})
    assert counts[1] == (5, 2, 2, 1, {"conflicting_duplicate": 1})
    assert [e["event_id"] for e in events] == ["e1", "e10", "e11", "e12", "e13", "e2", "e3"]
    assert (5, "missing_field", "user_id", "e5", None) in quarantine
    assert (2, "conflicting_duplicate", "position", "e3", "position=2 vs 1") in quarantine


_VARIANTS = {"product_id": ["p1", "p2"], "user_id": ["u1", "u2"], "ts": ["2024-03-01T10:00:00Z", 1709290800000]}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 1), st.integers(0, 1),
                          st.integers(0, 2)), min_size=1, max_size=25), st.booleans())
@example(recs=[(0, 0, 0, 0, 0), (0, 0, 1, 0, 1), (0, 0, 1, 0, 2)], one_run=True)  # two files, same bytes
def test_dedup_and_conflicts_match_a_brute_force_oracle(tmp_path: Path, fmt: str, recs: list[tuple[int, ...]],
                                                        one_run: bool) -> None:
    """Random ids and versions over up to three files: the vectorised dedup equals a record-by-record oracle
    (JSON lines are staged whole; Parquet files are streamed, with only possibly repeated ids staged), whether the
    files come one per run (each run loads the committed id hashes) or all in one run (the run extends them)."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example, also when hypothesis replays one
    files: list[list[dict]] = [[], [], []]
    for i, pv, uv, tv, f in recs:
        files[f].append(_ev(f"e{i}", "view", product_id=_VARIANTS["product_id"][pv],
                            user_id=_VARIANTS["user_id"][uv], ts=_VARIANTS["ts"][tv]))
    paths = [_jsonl(root / f"f{k}.jsonl", rows) if fmt == "jsonl" else _parquet(root / f"f{k}.parquet", rows)
             for k, rows in enumerate(files) if rows]
    # Oracle: files in order, lines in order; the first version of an id is kept, identical repeats are dropped,
    # differing ones are refused naming the differing fields.
    kept: dict[str, dict] = {}
    want_q = []
    contents: set[bytes] = set()
    for p in paths:
        if p.read_bytes() in contents:
            continue  # a file whose content was ingested before is skipped whole (exactly once, by sha256)
        contents.add(p.read_bytes())
        for line, row in enumerate(files[int(p.stem[1:])]):
            ref = kept.get(row["event_id"])
            ts = row["ts"] if isinstance(row["ts"], int) else 1709287200000
            norm = (row["user_id"], row["product_id"], ts)
            if ref is None:
                kept[row["event_id"]] = {"norm": norm}
            elif ref["norm"] != norm:
                fields = [f for f, x, y in zip(("user_id", "product_id", "ts"), norm, ref["norm"]) if x != y]
                order = ["ts", "user_id", "product_id"]
                want_q.append((p.name, line + 1, ",".join(sorted(fields, key=order.index))))
    ws = Workspace(root / "ws")
    for run in [paths] if one_run else [[p] for p in paths]:  # the committed side of the dedup is exercised too
        ingest_event_files(ws, run, rebuild_pairs=False)
    ev = ws.read_table("events")
    got_ev = {e["event_id"]: (e["user_id"], e["product_id"], int(e["ts"].timestamp() * 1000))
              for e in ev.to_pylist()}
    assert ev.num_rows == len(got_ev) == len(kept)
    assert got_ev == {k: v["norm"] for k, v in kept.items()}
    got_q = sorted((Path(r["source"]).name, r["line"], r["field"]) for r in ws.read_table("quarantine").to_pylist())
    assert got_q == sorted(want_q)


def test_second_writer_gets_a_clear_error_and_a_killed_holder_leaves_a_stale_lock(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "a.jsonl", [_ev("e1", "view", product_id="p1")])
    ws = Workspace(tmp_path / "ws")
    code = ("import sys, time; from visprep.workspace import Workspace\n"
            "with Workspace(sys.argv[1]).writer('events'):\n    print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ws.root)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(WorkspaceLocked, match=f'busy.*"pid": {holder.pid}'):
            ingest_event_files(ws, [f])
        out = CliRunner().invoke(app, ["events", "-w", str(ws.root), "--from", str(f)])
        assert out.exit_code == EXIT_BUSY and "busy" in out.output
        assert not ws.has_table("events")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    assert ws.lock_path.exists()
    assert ingest_event_files(ws, [f]).events_new == 1  # the stale lock is taken over


@pytest.mark.parametrize("point", ["compact_after_output", "compact_after_checkpoint"])
def test_small_parts_are_compacted_and_a_kill_during_compaction_loses_nothing(
        tmp_path: Path, sim_files: tuple[Path, Path], point: str) -> None:
    a, _ = sim_files
    ev = pq.read_table(a)
    pieces = []
    for k in range(4):  # four small files -> four small parts per day, merged at the end of the run
        p = tmp_path / f"piece{k}.parquet"
        pq.write_table(ev.slice(k * 500, 700), p)
        pieces.append(p)
    ref = Workspace(tmp_path / "ref")
    r = ingest_event_files(ref, pieces)
    assert r.compacted > 0
    days = {p.name[5:15] for p in ref.table_path("events").glob("part-*.parquet")}
    assert ref.part_count("events") == len(days)  # one part per day after compaction
    ws = Workspace(tmp_path / "ws")
    code = ("import sys; from visprep.workspace import Workspace; from visprep.events.stage import "
            f"ingest_event_files as f; f(Workspace(sys.argv[1]), sys.argv[2:], _crash_at={point!r})")
    proc = subprocess.run([sys.executable, "-c", code, str(ws.root), *map(str, pieces)], check=False,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    r2 = ingest_event_files(ws, pieces)
    assert r2.files_already == 4 and r2.recovered_parts > 0
    assert ws.part_count("events") == len(days)
    ev_ref, p_ref = _tables(ref)
    ev_ws, p_ws = _tables(ws)
    assert ev_ws == ev_ref
    _same_pairs(p_ref, p_ws)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_file_cut_into_user_buckets_gives_the_same_tables(tmp_path: Path, fmt: str) -> None:
    ev, _ = simulate(SimConfig(searches=1500, duplicate_rate=0.02, seed=3))
    a = tmp_path / f"all.{fmt}"
    if fmt == "parquet":
        pq.write_table(ev, a)
    else:
        _jsonl(a, ev.to_pylist())
    whole = Workspace(tmp_path / "whole")
    r1 = ingest_event_files(whole, [a])
    grouped = Workspace(tmp_path / "grouped")
    grouped.root.mkdir()
    grouped.config_path.write_text("[events]\npairs_group_events = 1000\ncompact_rows = 1000\n")
    r2 = ingest_event_files(grouped, [a])
    assert 16 * 1000 < ev.num_rows <= 32 * 1000  # 32 user buckets
    assert r1.duplicates > 0
    assert (r1.events_new, r1.duplicates, r1.quarantined) == (r2.events_new, r2.duplicates, r2.quarantined)
    ev1, p1 = _tables(whole)
    ev2, p2 = _tables(grouped)
    assert ev1 == ev2
    _same_pairs(p1, p2)
    assert sum(r2.pairs.values()) > 0 and r2.pairs == r1.pairs
    # A part per (day, user bucket): each holds only the users its name declares, which is what lets each
    # group of the pairs build read only its own parts.
    parts = sorted(grouped.table_path("events").glob("part-*.parquet"))
    assert {part_bucket(p.name)[1] for p in parts} == {32} and len(parts) > whole.part_count("events")
    _assert_parts_hold_only_their_users(parts)


def test_compaction_cuts_small_parts_into_user_buckets_and_survives_a_kill(tmp_path: Path) -> None:
    """Small batches (Kafka polls, small files) are not cut by user; compaction merges their parts into one part
    per day and user bucket, so the pairs build reads only its groups' parts on such a log too."""
    ev, _ = simulate(SimConfig(searches=1000, duplicate_rate=0.02, seed=5))
    pieces = []
    for k in range(8):
        p = tmp_path / f"piece{k}.parquet"
        pq.write_table(ev.slice(k * 1000, 1200), p)  # overlapping: duplicates across batches
        pieces.append(p)
    ref = Workspace(tmp_path / "ref")
    ingest_event_files(ref, pieces)
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text("[events]\npairs_group_events = 1000\ncompact_rows = 5000\n")
    code = ("import sys; from visprep.workspace import Workspace; from visprep.events.stage import "
            "ingest_event_files as f; f(Workspace(sys.argv[1]), sys.argv[2:], _crash_at='compact_after_output')")
    proc = subprocess.run([sys.executable, "-c", code, str(ws.root), *map(str, pieces)], check=False,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    r = ingest_event_files(ws, pieces)
    assert r.files_already == 8 and r.recovered_parts > 0 and r.compacted > 0
    parts = sorted(ws.table_path("events").glob("part-*.parquet"))
    groups = pair_groups(EventLog(ws).events_committed(), 1000)
    assert groups >= 8 and {part_bucket(p.name)[1] for p in parts} == {groups}
    _assert_parts_hold_only_their_users(parts)
    ev_ref, p_ref = _tables(ref)
    ev_ws, p_ws = _tables(ws)
    assert ev_ws == ev_ref
    _same_pairs(p_ref, p_ws)


def test_repeated_ids_found_in_hash_ranges_give_the_same_tables(tmp_path: Path, sim_files: tuple[Path, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A file with more ids than `_HASHES_IN_MEMORY` is searched for repeats in hash ranges (bounded memory): same
    events, duplicates and refused records as in one range, against the committed index too."""
    from visprep.events import batch

    a, b = sim_files
    ref = Workspace(tmp_path / "ref")
    r_ref = [ingest_event_files(ref, [f], rebuild_pairs=False) for f in (a, b)]
    monkeypatch.setattr(batch, "_HASHES_IN_MEMORY", 1000)
    ws = Workspace(tmp_path / "ws")
    r_ws = [ingest_event_files(ws, [f], rebuild_pairs=False) for f in (a, b)]
    assert pq.ParquetFile(a).metadata.num_rows > 5 * 1000
    assert [(r.events_new, r.duplicates, r.quarantined) for r in r_ws] == \
           [(r.events_new, r.duplicates, r.quarantined) for r in r_ref]
    assert r_ref[1].duplicates > 0  # b repeats ids committed from a
    assert ws.read_table("events").sort_by("event_id").to_pylist() == \
           ref.read_table("events").sort_by("event_id").to_pylist()


def _checkpoint(ws: Workspace) -> tuple[Path, dict]:
    path = ws.table_path("events") / "_checkpoint.json"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("why", ["older_layout", "other_duckdb_hash"])
def test_an_old_or_foreign_id_index_is_rebuilt_and_dedup_stays_exact(tmp_path: Path, why: str) -> None:
    """An id index written before it had the id hash `h`, or hashed by another DuckDB build, is rebuilt from the
    event parts on open; replays and conflicting versions of committed ids are then still found."""
    a = _jsonl(tmp_path / "a.jsonl", [_ev(f"e{i}", "view", product_id=f"p{i}") for i in range(6)])
    b = _parquet(tmp_path / "b.parquet", [
        _ev("e1", "view", product_id="p1"),  # replay
        _ev("e2", "view", product_id="p7"),  # conflicting version
        _ev("e8", "view", product_id="p8"),  # new
    ])
    ref = Workspace(tmp_path / "ref")
    want = [ingest_event_files(ref, [f]) for f in (a, b)]
    ws = Workspace(tmp_path / "ws")
    ingest_event_files(ws, [a])
    path, state = _checkpoint(ws)
    if why == "older_layout":  # the index as version 1 wrote it: (event_id, c), no layout version
        for f in EventLog(ws).id_files():
            pq.write_table(pq.read_table(f).select(["event_id", "c"]), f)
        state.pop("id_index_version")
    else:
        state["hash_canary"] = 12345
    path.write_text(json.dumps(state))
    got = ingest_event_files(ws, [b])
    assert (got.events_new, got.duplicates, got.quarantined) == \
           (want[1].events_new, want[1].duplicates, want[1].quarantined) == (1, 1, 1)
    assert ws.read_table("events").sort_by("event_id").to_pylist() == \
           ref.read_table("events").sort_by("event_id").to_pylist()
    assert _checkpoint(ws)[1]["id_index_version"] == 2
    for f in EventLog(ws).id_files():
        assert pq.read_schema(f).names == ["event_id", "c", "h"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_new_id_whose_hash_a_committed_id_shares_is_still_new(tmp_path: Path, fmt: str) -> None:
    """Committed ids are looked up by their 64-bit hash; an id whose hash collides with a committed id of other
    content is settled on the id strings, so the new event is kept (the collision is planted in the index)."""
    ws = Workspace(tmp_path / "ws")
    ingest_event_files(ws, [_jsonl(tmp_path / "a.jsonl", [_ev("e1", "view", product_id="p1")])])
    h9 = duckdb.sql("SELECT hash('e9')").fetchall()[0][0]
    log = EventLog(ws)
    fake = log.ids_dir / "planted.parquet"
    pq.write_table(pa.table({"event_id": ["not-e9"], "c": pa.array([123], pa.uint64()),
                             "h": pa.array([h9], pa.uint64())}), fake)
    path, state = _checkpoint(ws)
    state["ids"] = sorted(state["ids"] + [fake.name])
    path.write_text(json.dumps(state))
    recs = [_ev("e9", "view", product_id="p9"), _ev("e1", "view", product_id="p1")]
    b = _jsonl(tmp_path / "b.jsonl", recs) if fmt == "jsonl" else _parquet(tmp_path / "b.parquet", recs)
    r = ingest_event_files(ws, [b])
    assert (r.events_new, r.duplicates, r.quarantined) == (1, 1, 0)
    assert sorted(e["event_id"] for e in ws.read_table("events").to_pylist()) == ["e1", "e9"]


def test_the_checkpoint_keeps_recent_batches_only_and_loses_no_quarantine_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint is rewritten per commit, so it keeps the record of the recent batches only; totals and the
    batches owning a quarantine part stay exact, so recovery keeps every committed quarantine part. A checkpoint
    of the older form (every batch recorded) is read too."""
    from visprep.events import checkpoint

    monkeypatch.setattr(checkpoint, "BATCH_HISTORY", 2)
    ws = Workspace(tmp_path / "ws")
    files = [_jsonl(tmp_path / f"f{i}.jsonl", [_ev(f"e{i}", "view", product_id="p1"), _ev(f"x{i}", "nope")])
             for i in range(5)]
    for f in files:
        ingest_event_files(ws, [f], rebuild_pairs=False)
    path, state = _checkpoint(ws)
    assert len(state["batches"]) == 2 and state["events"] == 5 and len(state["quarantined_batches"]) == 5
    ingest_event_files(ws, [_jsonl(tmp_path / "g.jsonl", [_ev("e9", "view", product_id="p1")])])  # recovers
    assert ws.read_table("quarantine").num_rows == 5
    assert EventLog(ws).events_committed() == ws.read_table("events").num_rows == 6
    # The older form: no totals, every batch recorded.
    old = dict(state, batches={f"b{i}": {"parts": [], "events": 2, "quarantined": i % 2} for i in range(4)})
    for k in ("events", "quarantined_batches"):
        old.pop(k)
    path.write_text(json.dumps(old))
    log = EventLog(ws)
    assert log.events_committed() == 8 and log.state["quarantined_batches"] == ["b1", "b3"]
