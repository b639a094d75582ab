"""Interaction pairs: every kind on hand-built logs, a brute-force skip-above oracle, the direction of the popularity
correction, the concentration report, and debiasing against the simulator's truth."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from events_fixtures import ingest_records, pairs_by_key

from visprep.events.debias import gini
from visprep.events.simulate import SimConfig, ranking_quality, simulate
from visprep.events.stage import ingest_event_files
from visprep.workspace import Workspace

T0 = 1709287200000  # 2024-03-01T10:00Z in ms


def _ev(eid: str, typ: str, t: int, *, user: str = "u1", session: str = "s1", **kw: object) -> dict:
    return {"event_id": eid, "ts": T0 + t * 1000, "user_id": user, "session_id": session, "type": typ, **kw}


def _run(tmp_path: Path, records: list[dict], config: str = "") -> Workspace:
    return ingest_records(tmp_path, records, config)


_pairs = pairs_by_key


def test_every_kind_on_a_hand_built_log(tmp_path: Path) -> None:
    imp = [_ev(f"i{k}", "impression", 1, query_id="q", product_id=f"p{k}", position=k) for k in range(1, 6)]
    log = imp + [
        _ev("c3", "click", 10, query_id="q", product_id="p3", position=3),
        _ev("v3", "view", 11, product_id="p3"),
        _ev("c1", "click", 20, query_id="q", product_id="p1", position=1),  # clicked later: not a skip
        _ev("v1", "view", 21, product_id="p1"),
        _ev("a1", "add_to_cart", 30, query_id="q", product_id="p1"),
        _ev("b1", "purchase", 40, query_id="q", product_id="p1"),
        _ev("v9", "view", 5000, product_id="p9"),  # outside the 1800 s co-view window of v1
    ]
    p = _pairs(_run(tmp_path, log, "[events]\npopularity_alpha = 0.0\npropensity = \"model\"\n"))
    assert {k for k in p if k[2] == "skip_above"} == {("q", "p2", "skip_above")}
    assert p[("q", "p3", "click")]["ips_weight"] == pytest.approx(3.0)  # 1/propensity(3) = 3 with eta 1
    assert p[("q", "p1", "purchase")]["raw_weight"] == 3.0
    assert ("q", "p1", "add_to_cart") not in p  # carted, then bought in the session: the purchase counts, alone
    assert p[("q", "p1", "purchase")]["mean_position"] == 1.0  # rank taken from the list it was shown in
    coviews = {(a, b) for a, b, k in p if k == "coview"}
    assert coviews == {("p3", "p1")}  # viewed p3, then clicked and viewed p1; p9 is too late
    assert p[("q", "p2", "skip_above")]["exposures"] == 1 and p[("q", "p1", "click")]["anchor_image_id"] is None


def test_skip_above_matches_brute_force_oracle(tmp_path: Path) -> None:
    ev, _ = simulate(SimConfig(searches=400, seed=11))
    rows = ev.to_pylist()
    lists: dict[tuple, dict] = defaultdict(lambda: {"shown": {}, "clicked": set()})
    for r in rows:
        key = (r["user_id"], r["session_id"], r["query_id"])
        if r["type"] == "impression":
            lists[key]["shown"][r["product_id"]] = r["position"]
        elif r["type"] == "click":
            lists[key]["clicked"].add((r["product_id"], r["position"]))
    want: dict[tuple[str, str], int] = defaultdict(int)
    for (_, _, q), lst in lists.items():
        clicked = {pid for pid, _ in lst["clicked"]}
        for pid, pos in lst["shown"].items():
            if pid not in clicked and any(pos < cpos for _, cpos in lst["clicked"]):
                want[(q, pid)] += 1
    f = tmp_path / "ev.parquet"
    pq.write_table(ev, f)
    ws = Workspace(tmp_path / "ws")
    ingest_event_files(ws, [f])
    got = {(k[0], k[1]): r["count"] for k, r in _pairs(ws).items() if k[2] == "skip_above"}
    assert got == dict(want) and len(got) > 100


def test_popularity_correction_direction(tmp_path: Path) -> None:
    """One click each from the same rank: the popular product must end up with the smaller debiased weight and the
    larger log_q (TF-Recommenders once subtracted with the wrong sign)."""
    log = [_ev("ih", "impression", 1, query_id="q", product_id="hot", position=1),
           _ev("ch", "click", 2, query_id="q", product_id="hot", position=1),
           _ev("ic", "impression", 1, session="s2", query_id="q", product_id="cold", position=1),
           _ev("cc", "click", 2, session="s2", query_id="q", product_id="cold", position=1)]
    log += [_ev(f"v{i}", "view", 100 + i, session=f"x{i}", product_id="hot") for i in range(30)]
    p = _pairs(_run(tmp_path, log))
    hot, cold = p[("q", "hot", "click")], p[("q", "cold", "click")]
    assert hot["raw_weight"] == cold["raw_weight"] == hot["ips_weight"] == cold["ips_weight"] == 1.0
    assert hot["debiased_weight"] < 1.0 < cold["debiased_weight"]
    assert hot["log_q"] > cold["log_q"]
    assert hot["debiased_weight"] / cold["debiased_weight"] == pytest.approx(31 ** -0.5)  # popularity 31 vs 1, alpha 0.5


def test_debiased_weights_rank_relevant_above_popular(tmp_path: Path) -> None:
    ev, world = simulate(SimConfig(searches=4000, seed=1))
    f = tmp_path / "ev.parquet"
    pq.write_table(ev, f)
    ws = Workspace(tmp_path / "ws")
    r = ingest_event_files(ws, [f])
    pairs = ws.read_table("interaction_pairs")
    raw = ranking_quality(pairs, world, weight="raw_weight")
    ips = ranking_quality(pairs, world, weight="ips_weight")
    deb = ranking_quality(pairs, world, weight="debiased_weight")
    print(f"nDCG@10 vs truth: raw {raw:.3f}, position-debiased {ips:.3f}, + popularity {deb:.3f}")
    assert raw < ips < deb and deb - raw > 0.2
    # Harvested propensities recover the simulator's 1/rank examination.
    props = ws.last_run("events")["metrics"]["propensities"]
    assert props["method"]["2"] == "harvested"
    for k in (2, 3, 5):
        assert props["propensity"][str(k)] == pytest.approx(1 / k, rel=0.25)
    # Concentration on the head drops after correction; the SQL Gini matches the oracle.
    c = r.concentration
    assert c["debiased_top1pct_share"] < c["raw_top1pct_share"] and c["debiased_gini"] < c["raw_gini"]
    pos = pairs.filter(pc.not_equal(pairs["kind"], "skip_above")).group_by("product_id").aggregate([("raw_weight", "sum")])
    assert c["raw_gini"] == pytest.approx(gini(pos["raw_weight_sum"].to_pylist()), abs=1e-5)


def _built_twice(tmp_path: Path, cfg: SimConfig, **build: object) -> tuple[list[dict], list[dict], object]:
    """Ingest a simulated log (which builds `interaction_pairs` the default way), build the table again with
    `build` options; return both tables' rows and the second build's report."""
    from visprep.events.checkpoint import EventLog
    from visprep.events.interactions import build_pairs
    from visprep.views.db import connect

    ev, _ = simulate(cfg)
    f = tmp_path / "ev.parquet"
    pq.write_table(ev, f)
    ws = Workspace(tmp_path / "ws")
    ingest_event_files(ws, [f])
    con = connect(memory_limit="500MB", temp_dir=tmp_path / "duck", preserve_insertion_order=False)
    report = build_pairs(con, EventLog(ws).part_files(), tmp_path / "again.parquet", cfg=ws.config.events, **build)
    return ws.read_table("interaction_pairs").to_pylist(), pq.read_table(tmp_path / "again.parquet").to_pylist(), report


def _assert_same_rows(one: list[dict], other: list[dict]) -> None:
    assert len(one) == len(other)
    for x, y in zip(one, other):
        for k, v in x.items():
            assert y[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (k, x, y)


def test_pairs_built_in_user_groups_equal_one_group(tmp_path: Path) -> None:
    """Partial aggregates per user-hash group, weighted at the end, give exactly the one-group table."""
    one, eight, r8 = _built_twice(tmp_path, SimConfig(searches=800, seed=4, duplicate_rate=0.01), groups=8)
    assert len(one) > 1000 and r8.by_kind.keys() == {"click", "add_to_cart", "purchase", "coview", "skip_above"}
    _assert_same_rows(one, eight)


def test_colliding_list_keys_are_detected_and_rebuilt(tmp_path: Path) -> None:
    """List/session keys forced to collide (reduced modulo 7) are caught and rebuilt: the table is unchanged."""
    one, collided, r = _built_twice(tmp_path, SimConfig(searches=400, seed=6, duplicate_rate=0.0), groups=2,
                                    _key_mod=7)
    assert r.key_retries == 2  # both user groups collided under the reduced keys and were rebuilt
    assert len(one) > 500
    _assert_same_rows(one, collided)
