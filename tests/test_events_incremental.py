"""Incremental interaction pairs: random logs split into batches give the tables a whole-log build gives; a kill
during an update loses nothing; a change to what the partials depend on falls back to a full rebuild."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visprep.events.checkpoint import EventLog
from visprep.events.stage import build_interaction_pairs, ingest_event_files
from visprep.workspace import Workspace

# Small pools so that users, sessions, lists and products recur across batches; a small bounce / co-view window in
# seconds against timestamps minutes apart gives both outcomes.
_USERS, _SESSIONS, _QUERIES, _PRODUCTS = 5, 3, 3, 6
_TYPES = ("search", "impression", "impression", "impression", "click", "click", "add_to_cart", "purchase", "view")

_event = st.tuples(
    st.integers(0, _USERS - 1), st.integers(0, _SESSIONS - 1), st.sampled_from(_TYPES), st.integers(0, _QUERIES - 1),
    st.booleans(), st.integers(0, _PRODUCTS - 1), st.integers(1, 6), st.integers(0, 600), st.booleans())


def _record(i: int, e: tuple) -> dict:
    user, session, typ, query, has_query, product, position, second, has_position = e
    r = {"event_id": f"e{i}", "ts": f"2024-03-01T10:{second // 60:02d}:{second % 60:02d}Z", "user_id": f"u{user}",
         "session_id": f"s{session}", "type": typ}
    if typ != "search":
        r["product_id"] = f"p{product}"
    if typ in ("search", "impression") or (has_query and typ != "view"):
        r["query_id"] = f"q{query}"
        r["query_image_id"] = f"img{query % 2}" if query else None
    if typ == "impression" or (has_position and typ in ("click", "add_to_cart", "purchase")):
        r["position"] = position
    return r


def _build(ws: Workspace, run_id: str) -> dict:
    """The pairs build's metrics in the record of run `run_id`."""
    return json.loads((ws.runs_dir / f"{run_id}.json").read_text())["metrics"]["pairs_build"]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _ws(root: Path, config: str = "") -> Workspace:
    ws = Workspace(root)
    ws.root.mkdir(parents=True)
    ws.config_path.write_text("[events]\nbounce_s = 20\ncoview_window_s = 120\nharvest_min_support = 1\n" + config)
    return ws


def _tables(ws: Workspace) -> tuple[list[dict], list[dict]]:
    # Where an event came from (file, line) depends on how the input was cut; everything else must not.
    ev = [{k: v for k, v in e.items() if k not in ("source", "line")}
          for e in ws.read_table("events").sort_by("event_id").to_pylist()]
    return ev, ws.read_table("interaction_pairs").to_pylist()


def _same_pairs_approx(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k, v in x.items():
            assert y[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (k, x, y)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, min_size=1, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=3),
       dups=st.lists(st.integers(0, 59), max_size=5), policy=st.sampled_from(["discount", "drop", "keep"]))
def test_batches_give_the_whole_log_tables(events: list[tuple], cuts: list[int], dups: list[int],
                                           policy: str) -> None:
    records = [_record(i, e) for i, e in enumerate(events)]
    bounds = sorted({0, len(records), *(min(c, len(records)) for c in cuts)})
    batches = [records[a:b] for a, b in itertools.pairwise(bounds)]
    # Duplicates across batches: a record of an earlier batch sent again with the last one.
    batches[-1] = batches[-1] + [records[d] for d in dups if d < len(records)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = f'bounce_policy = "{policy}"\n'
        inc = _ws(root / "inc", config)
        for n, batch in enumerate(batches):
            r = ingest_event_files(inc, [_write(root / f"b{n}.jsonl", batch)])
            if n:
                assert r.pairs_rebuilt
        log = EventLog(inc)
        assert log.pairs_pending() == [] and log.pairs_state() is not None
        ev_inc, p_inc = _tables(inc)
        # The same partials rebuilt from the whole log: every row identical.
        build_interaction_pairs(inc)
        ev_full, p_full = _tables(inc)
        assert ev_inc == ev_full and p_inc == p_full
        # One run over all the input with the whole-log build (no partials): the same rows.
        one = _ws(root / "one", config + "incremental = false\n")
        ingest_event_files(one, [_write(root / "all.jsonl", [r for b in batches for r in b])])
        ev_one, p_one = _tables(one)
        assert ev_one == ev_inc
        _same_pairs_approx(p_one, p_inc)


def _sim_records(n_users: int, per_user: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n_users * per_user):
        e = (rng.randrange(n_users), rng.randrange(2), rng.choice(_TYPES), rng.randrange(4), rng.random() < 0.5,
             rng.randrange(20), rng.randint(1, 8), rng.randrange(3600), rng.random() < 0.5)
        out.append(_record(i, e))
    return out


def test_an_update_recomputes_only_the_touched_users(tmp_path: Path) -> None:
    records = _sim_records(200, 20, seed=1)
    inc = _ws(tmp_path / "inc")
    r0 = ingest_event_files(inc, [_write(tmp_path / "a.jsonl", records)])
    late = [{**r, "event_id": f"late{i}"} for i, r in enumerate(records) if r["user_id"] in ("u1", "u2")]
    r = ingest_event_files(inc, [_write(tmp_path / "b.jsonl", late)])
    assert r.events_new == len(late) and r.pairs_rebuilt
    first, update = _build(inc, r0.run_id), _build(inc, r.run_id)
    assert first["mode"] == "full" and first["full_reason"] == "no partial sums yet"
    assert update["mode"] == "incremental" and update["full_reason"] is None and update["touched_users"] == 2
    events = inc.read_table("events")
    assert first["touched_events"] == events.num_rows - len(late)
    assert update["touched_events"] == sum(u in ("u1", "u2") for u in events["user_id"].to_pylist())
    ev, p = _tables(inc)
    build_interaction_pairs(inc)
    assert _tables(inc) == (ev, p)


def test_an_update_recomputes_only_the_touched_sessions(tmp_path: Path) -> None:
    records = _sim_records(50, 20, seed=6)
    ws = _ws(tmp_path / "ws")
    ingest_event_files(ws, [_write(tmp_path / "a.jsonl", records)])
    # u1 comes back in a new session (s9), and u2 with a late event of one of its old sessions (s0).
    old_s0 = [r for r in records if r["user_id"] == "u2" and r["session_id"] == "s0"]
    assert old_s0
    again = [r for r in records if r["user_id"] == "u1"][:5]
    assert again
    late = [{**r, "event_id": f"new{i}", "session_id": "s9"} for i, r in enumerate(again)]
    late.append({**old_s0[0], "event_id": "late"})
    r = ingest_event_files(ws, [_write(tmp_path / "b.jsonl", late)])
    build = _build(ws, r.run_id)
    assert build["touched_users"] == 2 and build["touched_sessions"] == 2
    # Only those two sessions' events are read: u1's older sessions are not.
    assert build["touched_events"] == len(late) + len(old_s0)
    ev, p = _tables(ws)
    build_interaction_pairs(ws)
    assert _tables(ws) == (ev, p)


def test_a_changed_option_the_partials_depend_on_rebuilds_them_and_says_why(tmp_path: Path) -> None:
    records = _sim_records(50, 10, seed=2)
    ws = _ws(tmp_path / "ws")
    ingest_event_files(ws, [_write(tmp_path / "a.jsonl", records[:300])])
    ws.config_path.write_text(ws.config_path.read_text() + "bounce_weight = 0.5\n")
    ws = Workspace(ws.root)
    r = ingest_event_files(ws, [_write(tmp_path / "b.jsonl", records[300:])])
    build = _build(ws, r.run_id)
    assert build["mode"] == "full" and build["full_reason"] == "partials depend on changed bounce_weight"
    ev, p = _tables(ws)
    one = _ws(tmp_path / "one", "bounce_weight = 0.5\n")
    ingest_event_files(one, [_write(tmp_path / "all.jsonl", records)])
    assert _tables(one) == (ev, p)


@pytest.mark.parametrize("deltas", [False, True], ids=["merged", "delta"])
@pytest.mark.parametrize("point", ["pairs_after_partials", "pairs_after_table"])
def test_a_killed_update_resumes_to_the_same_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str,
                                                    deltas: bool) -> None:
    import visprep.events.incremental as inc_mod

    # delta: the update writes its change as a delta file (the killed run and the one that redoes it).
    share = 1e9 if deltas else 0.0
    monkeypatch.setattr(inc_mod, "DELTA_SHARE", share)
    records = _sim_records(100, 12, seed=3)
    # Sessions that span the boundary: the second batch continues the first one's sessions.
    first, second = _write(tmp_path / "a.jsonl", records[:800]), _write(tmp_path / "b.jsonl", records[780:])
    ref = _ws(tmp_path / "ref")
    ingest_event_files(ref, [first, second])
    ws = _ws(tmp_path / "ws")
    ingest_event_files(ws, [first])
    code = ("import sys; import visprep.events.incremental as m; from visprep.workspace import Workspace; "
            f"from visprep.events.stage import ingest_event_files as f; m.DELTA_SHARE = {share!r}; "
            f"f(Workspace(sys.argv[1]), sys.argv[2:], _crash_at={point!r})")
    proc = subprocess.run([sys.executable, "-c", code, str(ws.root), str(second)], check=False, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    log = EventLog(ws)
    assert log.pairs_pending(), "the killed update must leave its users pending"
    r = ingest_event_files(ws, [first, second])
    assert r.files_already == 2 and r.pairs_rebuilt
    assert r.recovered_parts > 0  # the killed run's partial files, never listed
    log = EventLog(ws)
    files = log.pairs_state()["files"]
    assert len(files["hs"]) == (2 if deltas else 1)
    listed = {f for names in files.values() for f in names}
    assert {p.name for p in log.pairs_dir.iterdir()} == listed
    assert _tables(ws) == _tables(ref)


def test_compaction_keeps_pending_parts_apart_from_settled_ones(tmp_path: Path) -> None:
    records = _sim_records(40, 10, seed=4)
    few = [r for r in records[200:] if int(r["user_id"][1:]) < 10]  # later batches from 10 of the 40 users
    ws = _ws(tmp_path / "ws")
    ingest_event_files(ws, [_write(tmp_path / "a.jsonl", records[:200])])
    ingest_event_files(ws, [_write(tmp_path / "b.jsonl", few[:20])], rebuild_pairs=False)
    ingest_event_files(ws, [_write(tmp_path / "c.jsonl", few[20:])], rebuild_pairs=False)
    log = EventLog(ws)
    pending = {p.name for p in log.pairs_pending()}
    settled = set(log.state["parts"]) - pending
    # b's and c's small parts merged with each other, never into a's.
    assert len(pending) == 1 and next(iter(pending)).startswith("part-2024-03-01-m") and len(settled) == 1
    r = ingest_event_files(ws, [_write(tmp_path / "d.jsonl", [{**few[0], "event_id": "late"}])])
    touched = {x["user_id"] for x in few}
    assert r.pairs_rebuilt and _build(ws, r.run_id)["touched_users"] == len(touched) < 40
    # Once the pairs are current every part is settled: the next run merges a's part with b-c-d's, and keeps its
    # own new part apart until its pairs are built.
    ingest_event_files(ws, [_write(tmp_path / "e.jsonl", [{**records[0], "event_id": "later"}])])
    log = EventLog(ws)
    e_part = next(n for n in log.state["parts"] if not n.startswith("part-2024-03-01-m"))
    assert len(log.state["parts"]) == 2 and e_part not in settled and log.pairs_pending() == []
    ev, p = _tables(ws)
    build_interaction_pairs(ws)
    assert _tables(ws) == (ev, p)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, min_size=2, max_size=50),
       cuts=st.lists(st.integers(1, 49), min_size=1, max_size=4), dups=st.lists(st.integers(0, 49), max_size=4),
       max_deltas=st.sampled_from([1, 2, 8]))
def test_updates_kept_as_delta_sums_give_the_rebuilt_tables(monkeypatch: pytest.MonkeyPatch,
                                                              events: list[tuple], cuts: list[int],
                                                              dups: list[int], max_deltas: int) -> None:
    # Every update writes a delta (never a merge for its size), up to `max_deltas` of them, then merges: random
    # batches whose sessions span the boundaries (small pools), late events (timestamps in any order across
    # batches) and duplicates of earlier batches' records.
    import visprep.events.incremental as inc_mod

    monkeypatch.setattr(inc_mod, "DELTA_SHARE", 1e9)
    monkeypatch.setattr(inc_mod, "MAX_DELTAS", max_deltas)
    records = [_record(i, e) for i, e in enumerate(events)]
    bounds = sorted({0, len(records), *(min(c, len(records)) for c in cuts)})
    batches = [records[a:b] for a, b in itertools.pairwise(bounds)]
    for n in range(1, len(batches)):
        batches[n] = batches[n] + [records[d] for d in dups if d < bounds[n]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = _ws(root / "inc")
        deltas_seen = 0
        for n, batch in enumerate(batches):
            ingest_event_files(ws, [_write(root / f"b{n}.jsonl", batch)])
            files = EventLog(ws).pairs_state()["files"]
            assert all(len(f) <= max_deltas + 1 for f in files.values())
            deltas_seen = max(deltas_seen, len(files["hs"]) - 1)
            listed = {f for names in files.values() for f in names}
            assert {p.name for p in EventLog(ws).pairs_dir.iterdir()} == listed
        shown = [any(r["type"] == "impression" for r in b) for b in batches]
        if shown[0] and any(shown[1:]):  # a base of impression counts, moved by a later batch's impression
            assert deltas_seen >= 1
        ev, p = _tables(ws)
        build_interaction_pairs(ws)
        assert _tables(ws) == (ev, p)


def test_a_delta_that_moves_a_count_but_not_the_key_count_is_kept(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    # A late click on another result of the list turns an earlier click into a bounce: its key's event count
    # stays, its bounce count moves. The delta must carry it (a delta kept by its first count only would not).
    import visprep.events.incremental as inc_mod

    monkeypatch.setattr(inc_mod, "DELTA_SHARE", 1e9)

    def ev(i: int, second: int, typ: str, product: int | None = None, position: int | None = None) -> dict:
        r = {"event_id": f"e{i}", "ts": f"2024-03-01T10:00:{second:02d}Z", "user_id": "u0", "session_id": "s0",
             "type": typ, "query_id": "q0"}
        return r | ({"product_id": f"p{product}"} if product is not None else {}) | (
            {"position": position} if position is not None else {})
    first = [ev(0, 0, "search"), ev(1, 1, "impression", 1, 1), ev(2, 1, "impression", 2, 2),
             ev(3, 5, "click", 1), {**ev(4, 0, "search"), "user_id": "u1"},
             {**ev(5, 1, "impression", 1, 1), "user_id": "u1"}]
    ws = _ws(tmp_path / "ws")
    ingest_event_files(ws, [_write(tmp_path / "a.jsonl", first)])
    ingest_event_files(ws, [_write(tmp_path / "b.jsonl", [ev(6, 9, "click", 2)])])
    assert len(EventLog(ws).pairs_state()["files"]["acc"]) == 2  # base + one delta
    ev_inc, p_inc = _tables(ws)
    assert {(p["product_id"], p["kind"], p["raw_weight"]) for p in p_inc if p["kind"] == "click"} == {
        ("p1", "click", 0.1), ("p2", "click", 1.0)}  # bounce_weight 0.1 (the default): p1's click bounced
    build_interaction_pairs(ws)
    assert _tables(ws) == (ev_inc, p_inc)
