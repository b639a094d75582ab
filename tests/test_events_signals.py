"""Which events count as which signal: an add-to-cart the session buys is part of the purchase, not a
weak positive; a click left within seconds (a bounce) is discounted or dropped, and on the simulator, whose truth is
known, that moves the per-(query, product) click weights towards the true relevance."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from events_fixtures import ingest_records, pairs_by_key
from pydantic import ValidationError

from visprep.config import EventsConfig
from visprep.events.checkpoint import EventLog
from visprep.events.interactions import PairsReport, build_pairs
from visprep.events.simulate import SimConfig, click_agreement, ranking_quality, simulate
from visprep.events.stage import ingest_event_files
from visprep.views.db import connect
from visprep.workspace import Workspace

T0 = 1709287200000  # 2024-03-01T10:00Z in ms
MODEL = "[events]\npopularity_alpha = 0.0\npropensity = \"model\"\n"


def _ev(eid: str, typ: str, t: float, *, user: str = "u1", session: str = "s1", **kw: object) -> dict:
    return {"event_id": eid, "ts": T0 + int(t * 1000), "user_id": user, "session_id": session, "type": typ, **kw}


def _shown(prefix: str, t: float, query: str, products: list[str], **kw: object) -> list[dict]:
    """One result list: `products` shown at ranks 1.. at time t."""
    return [_ev(f"{prefix}{k}", "impression", t, query_id=query, product_id=p, position=k, **kw)
            for k, p in enumerate(products, start=1)]


def _run(tmp_path: Path, records: list[dict], config: str = MODEL) -> Workspace:
    return ingest_records(tmp_path, records, config)


_pairs = pairs_by_key


# --- add-to-cart without purchase ---------------------------------------------------------------------------------

def test_a_cart_the_session_buys_is_not_a_weak_positive(tmp_path: Path) -> None:
    log = _shown("i", 1, "q", ["bought", "carted", "paid-first", "later"])
    log += [
        _ev("a1", "add_to_cart", 10, query_id="q", product_id="bought"),  # cart, then purchase: one purchase
        _ev("b1", "purchase", 20, query_id="q", product_id="bought"),
        _ev("a2", "add_to_cart", 30, query_id="q", product_id="carted"),  # cart alone: the weak positive
        _ev("b3", "purchase", 40, query_id="q", product_id="paid-first"),  # purchase, then a cart: one purchase
        _ev("a3", "add_to_cart", 50, query_id="q", product_id="paid-first"),
        # Cart in s1, purchase in s2 (the next day): the link is per session, so both count.
        _ev("a4", "add_to_cart", 60, query_id="q", product_id="later"),
        *_shown("j", 86_400, "q", ["later"], session="s2"),
        _ev("b4", "purchase", 86_410, session="s2", query_id="q", product_id="later"),
    ]
    ws = _run(tmp_path, log)
    p = _pairs(ws)
    carts = {k[1]: r["raw_weight"] for k, r in p.items() if k[2] == "add_to_cart"}
    buys = {k[1]: r["count"] for k, r in p.items() if k[2] == "purchase"}
    assert carts == {"carted": 0.5, "later": 0.5}
    assert buys == {"bought": 1, "paid-first": 1, "later": 1}
    assert p[("q", "bought", "purchase")]["raw_weight"] == 3.0 and p[("q", "bought", "purchase")]["mean_position"] == 1
    assert ws.last_run("events")["metrics"]["signals"]["carts_with_purchase"] == 2


def test_a_checkout_purchase_without_query_counts_once_under_the_carted_query(tmp_path: Path) -> None:
    """A purchase naming no query (bought at checkout) gives no query pair on its own; its cart must not be lost
    as a weak positive either: it becomes the purchase, under the session's latest cart of the product."""
    log = _shown("i", 1, "shoes", ["p1", "p2"]) + _shown("k", 2, "boots", ["p1"]) + [
        _ev("a1", "add_to_cart", 10, query_id="shoes", product_id="p1"),
        _ev("a2", "add_to_cart", 20, query_id="boots", product_id="p1"),  # the latest cart: it gets the purchase
        _ev("b1", "purchase", 90, product_id="p1"),  # checkout: no query
        _ev("a3", "add_to_cart", 30, query_id="shoes", product_id="p2"),  # not bought: stays a weak positive
    ]
    ws = _run(tmp_path, log)
    p = _pairs(ws)
    assert {k for k in p if k[2] in ("add_to_cart", "purchase")} == {("boots", "p1", "purchase"),
                                                                      ("shoes", "p2", "add_to_cart")}
    row = p[("boots", "p1", "purchase")]
    assert row["count"] == 1 and row["raw_weight"] == 3.0 and row["mean_position"] == 1.0
    signals = ws.last_run("events")["metrics"]["signals"]
    assert signals["purchases_via_cart"] == 1 and signals["carts_with_purchase"] == 2


# --- bounces --------------------------------------------------------------------------------------------------------

def _bounce_log() -> list[dict]:
    """Hand-built lists, one session each, times in seconds (bounce_s = 5 by default)."""
    log = []
    # s1: click p3, the results are shown again 2 s later (back button): p3 bounced. p1, p2 sit above the click.
    log += _shown("a", 0, "q", ["p1", "p2", "p3"], session="s1")
    log += [_ev("c1", "click", 10, session="s1", query_id="q", product_id="p3", position=3)]
    log += _shown("b", 12, "q", ["p1", "p2", "p3"], session="s1")
    # s2: click p4, then p5 1.5 s later (another result): p4 bounced, p5 not (nothing follows it).
    log += _shown("d", 0, "q", ["p4", "p5"], session="s2")
    log += [_ev("c2", "click", 10, session="s2", query_id="q", product_id="p4", position=1),
            _ev("c3", "click", 11.5, session="s2", query_id="q", product_id="p5", position=2)]
    # s3: click p6 and come back 8 s later: read the page, not a bounce.
    log += _shown("e", 0, "q", ["p6"], session="s3")
    log += [_ev("c4", "click", 10, session="s3", query_id="q", product_id="p6", position=1),
            _ev("s4", "search", 18, session="s3", query_id="q")]
    # s4: click p7, back within 1 s, but p7 is carted later in the session: interest, not an accident.
    log += _shown("f", 0, "q", ["p7"], session="s4")
    log += [_ev("c5", "click", 10, session="s4", query_id="q", product_id="p7", position=1),
            _ev("s5", "search", 11, session="s4", query_id="q"),
            _ev("a5", "add_to_cart", 60, session="s4", query_id="q", product_id="p7")]
    # s5: p8 double-clicked within 1 s: the same result again, not another one.
    log += _shown("g", 0, "q", ["p8"], session="s5")
    log += [_ev("c6", "click", 10, session="s5", query_id="q", product_id="p8", position=1),
            _ev("c7", "click", 11, session="s5", query_id="q", product_id="p8", position=1)]
    # s6: a search of *another* query 1 s after the click is not a return to this list.
    log += _shown("h", 0, "q", ["p9"], session="s6")
    log += [_ev("c8", "click", 10, session="s6", query_id="q", product_id="p9", position=1),
            _ev("s6", "search", 11, session="s6", query_id="other")]
    return log


@pytest.mark.parametrize("policy", ["keep", "discount", "drop"])
def test_bounce_rule_on_hand_built_lists(tmp_path: Path, policy: str) -> None:
    ws = _run(tmp_path, _bounce_log(), MODEL + f"bounce_policy = \"{policy}\"\nbounce_weight = 0.2\n")
    p = _pairs(ws)
    clicks = {k[1]: (r["count"], r["raw_weight"]) for k, r in p.items() if k[2] == "click"}
    normal = {"p5": (1, 1.0), "p6": (1, 1.0), "p7": (1, 1.0), "p8": (2, 2.0), "p9": (1, 1.0)}
    bounced = {"keep": {"p3": (1, 1.0), "p4": (1, 1.0)}, "discount": {"p3": (1, 0.2), "p4": (1, 0.2)},
               "drop": {}}[policy]
    assert clicks == normal | bounced
    if policy == "discount":  # ips is discounted alike: p3 was clicked at rank 3, 1/propensity = 3
        assert p[("q", "p3", "click")]["ips_weight"] == pytest.approx(0.6)
    # Skip-above still sees the bounced click: the user did look down to rank 3.
    assert {k[1] for k in p if k[2] == "skip_above"} == {"p1", "p2"}
    assert ws.last_run("events")["metrics"]["signals"]["bounced_clicks"] == (0 if policy == "keep" else 2)


def test_bounce_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="'discount', 'drop' or 'keep'"):
        EventsConfig(bounce_policy="sometimes")
    for bad in ({"bounce_weight": 0.0}, {"bounce_weight": 1.5}, {"bounce_s": 0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            EventsConfig(**bad)


# --- the simulator: accidental clicks against the truth -----------------------------------------------------------

def _ingested(tmp_path: Path, cfg: SimConfig) -> tuple[Workspace, object, list[Path]]:
    ev, world = simulate(cfg)
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "ev.parquet"
    pq.write_table(ev, f)
    ws = Workspace(tmp_path / "ws")
    ingest_event_files(ws, [f], rebuild_pairs=False)
    return ws, (ev, world), EventLog(ws).part_files()


def _build(tmp_path: Path, ws: Workspace, parts: list[Path], name: str, **update: object) -> tuple[object, PairsReport]:
    con = connect(memory_limit="500MB", temp_dir=tmp_path / "duck", preserve_insertion_order=False)
    try:
        groups = update.pop("groups", None)
        out = tmp_path / f"{name}.parquet"
        report = build_pairs(con, parts, out, cfg=ws.config.events.model_copy(update=update), groups=groups)
        return pq.read_table(out), report
    finally:
        con.close()


def test_bounce_policy_moves_click_weights_towards_the_truth(tmp_path: Path) -> None:
    """Accidental clicks (irrelevant results clicked and left within 3 s) blur the click weights; the bounce rule
    finds exactly them, and discounting or dropping them brings the weights back towards the true grades."""
    sim = SimConfig(searches=4000, seed=1, accidental_click=0.1)
    ws, (ev, world), parts = _ingested(tmp_path / "noisy", sim)
    accidental = pc.sum(pc.match_substring(ev["event_id"], "-6-")).as_py()  # the simulator's accidental clicks
    keep, _ = _build(tmp_path, ws, parts, "keep", bounce_policy="keep")
    discount, r_discount = _build(tmp_path, ws, parts, "discount")  # the default policy and weight
    drop, _ = _build(tmp_path, ws, parts, "drop", bounce_policy="drop")
    assert r_discount.signals["bounced_clicks"] == accidental > 500  # no genuine click in this log bounces

    agree = {name: click_agreement(t, ev, world) for name, t in (("keep", keep), ("discount", discount),
                                                                   ("drop", drop))}
    ndcg = {name: ranking_quality(t, world, weight="ips_weight") for name, t in (("keep", keep),
                                                                                 ("discount", discount),
                                                                                 ("drop", drop))}
    print("click weight per impression vs true grade, Pearson r:", {k: round(v, 3) for k, v in agree.items()},
          "; nDCG@10 of ips weights:", {k: round(v, 3) for k, v in ndcg.items()})
    assert agree["discount"] > agree["keep"] + 0.1 and agree["drop"] > agree["keep"] + 0.1
    assert ndcg["discount"] > ndcg["keep"] and ndcg["drop"] > ndcg["keep"]

    # Oracle: the same log without the accidental clicks (the simulator draws them last, so every other event is
    # the same). Dropping the bounces leaves exactly its click pairs and raw click weights.
    clean_ws, _, clean_parts = _ingested(tmp_path / "clean", SimConfig(searches=4000, seed=1))
    clean, _ = _build(tmp_path, clean_ws, clean_parts, "clean", bounce_policy="keep")

    def raw_clicks(t: object) -> dict[tuple[str, str], float]:
        rows = t.filter(pc.equal(t["kind"], "click")).to_pylist()
        return {(r["anchor_id"], r["product_id"]): r["raw_weight"] for r in rows}

    assert raw_clicks(drop) == raw_clicks(clean)


def test_tab_opening_costs_the_default_little(tmp_path: Path) -> None:
    """Genuine clicks opened in tabs 1.5 s apart look like bounces (the rule has no dwell time to tell them
    apart): the default discount must not cost ranking quality much on such a log (no accidental clicks at all)."""
    ws, (ev, world), parts = _ingested(tmp_path, SimConfig(searches=4000, seed=1, multi_tab=1.0))
    keep, _ = _build(tmp_path, ws, parts, "keep", bounce_policy="keep")
    discount, r = _build(tmp_path, ws, parts, "discount")
    clicks = pc.sum(pc.equal(ev["type"], "click")).as_py()
    lists_clicked = len({(u, s) for u, s, t in zip(ev["user_id"].to_pylist(), ev["session_id"].to_pylist(),
                                                   ev["type"].to_pylist()) if t == "click"})
    assert 0 < r.signals["bounced_clicks"] <= clicks - lists_clicked  # at most all but the last click of a list
    q_keep = ranking_quality(keep, world, weight="debiased_weight")
    q_discount = ranking_quality(discount, world, weight="debiased_weight")
    print(f"tab opening only: nDCG@10 of debiased weights keep {q_keep:.3f}, discount {q_discount:.3f}; "
          f"{r.signals['bounced_clicks']} of {clicks} genuine clicks read as bounces")
    assert q_discount > q_keep - 0.02


def test_signals_built_in_user_groups_equal_one_group(tmp_path: Path) -> None:
    """The cart and bounce rules work per session, inside a user group: 4 groups give the one-group table."""
    ws, _, parts = _ingested(tmp_path, SimConfig(searches=800, seed=4, accidental_click=0.1, multi_tab=0.3))
    one, r1 = _build(tmp_path, ws, parts, "one", groups=1)
    four, r4 = _build(tmp_path, ws, parts, "four", groups=4)
    assert r1.signals == r4.signals and r1.signals["bounced_clicks"] > 50 and r1.signals["carts_with_purchase"] > 20
    a, b = one.to_pylist(), four.to_pylist()
    assert len(a) == len(b) > 500
    for x, y in zip(a, b):
        for k, v in x.items():
            assert y[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (k, x, y)
