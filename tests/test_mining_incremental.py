"""Incremental ANN re-mining must give exactly what a full re-mine gives (exact search, same seed and params)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.embed.registry import l2_normalize
from visprep.mining.ann import positive_scores
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.incremental import AnnState, mine_with_state, positive_signatures
from visprep.mining.keys import string_keys
from visprep.mining.positives import build_positive_sets

PARAMS = {"k": 3, "band_max": 6, "seed": 7}


def _world(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    n_products = max(2, n // 3)
    centers = rng.normal(size=(max(2, n // 12), 8))
    offsets = centers[rng.integers(0, len(centers), n_products)] + 0.6 * rng.normal(size=(n_products, 8))
    product = rng.integers(0, n_products, n)
    return {"ids": [f"img{seed}-{i}" for i in range(n)], "product": [f"p{p}" for p in product],
            # products 0-3 pair up into two groups: groups are not always products
            "group": [f"g{p // 2}" if p < 4 else f"g{p}" for p in product],
            "vecs": l2_normalize(offsets[product] + 0.15 * rng.normal(size=(n, 8))).astype(np.float32),
            "pairs": [(f"p{a}", f"p{b}") for a, b in rng.integers(0, n_products, (2, 2))]}


def _mine(w: dict, old: AnnState | None, *, params: dict = PARAMS):
    _, gcode = np.unique(np.array(w["group"]), return_inverse=True)
    pnames, pcode = np.unique(np.array(w["product"]), return_inverse=True)
    code = {p: i for i, p in enumerate(pnames.tolist())}
    pairs = [(code[a], code[b]) for a, b in w["pairs"] if a in code and b in code]
    pos = build_positive_sets(gcode.astype(np.int64), pcode.astype(np.int64), pairs)
    vecs = w["vecs"]
    s_pos = positive_scores(vecs, group=gcode, positives=pos, how="mean")
    gkeys = string_keys(w["group"])
    key_of_code = np.zeros(gcode.max() + 1, np.uint64)
    key_of_code[gcode] = gkeys
    keys = string_keys([f"{p}\x00{i}" for p, i in zip(w["product"], w["ids"])])
    res, state, decision = mine_with_state(
        vecs, group=gcode.astype(np.int64), positives=pos, s_pos=s_pos, keys=keys, group_key=gkeys,
        pos_sig=positive_signatures(pos, key_of_code), params=params, old=old, band_max=params["band_max"],
        k=params["k"], skip_top=1, guard=FalseNegativeGuard(0.05, 0.98), search="exact", query_batch=16,
        seed=params["seed"])
    rows = {(w["ids"][a], w["ids"][b], int(r)): float(s)
            for a, b, r, s in zip(res.anchor, res.negative, res.rank, res.score)}
    return rows, state, decision


def _mutate(w: dict, seed: int, *, add: int, remove: int, move: int, regroup: int, pair: bool) -> dict:
    rng = np.random.default_rng(seed + 1000)
    n = len(w["ids"])
    keep = np.ones(n, bool)
    keep[rng.choice(n, size=min(remove, n - 2), replace=False)] = False
    w2 = {"ids": [x for x, k in zip(w["ids"], keep) if k], "product": [x for x, k in zip(w["product"], keep) if k],
          "group": [x for x, k in zip(w["group"], keep) if k], "vecs": w["vecs"][keep].copy(),
          "pairs": list(w["pairs"])}
    m = len(w2["ids"])
    for i in rng.choice(m, size=min(move, m), replace=False):
        w2["vecs"][i] = l2_normalize((w2["vecs"][i] + 0.3 * rng.normal(size=8))[None])[0]
    for i in rng.choice(m, size=min(regroup, m), replace=False):
        w2["group"][i] = f"g-moved-{i}"
    if pair:
        w2["pairs"].append((w2["product"][0], w2["product"][-1]))
    # New items: near existing ones (so they enter bands), of new products, one joining an existing group.
    near = rng.choice(m, size=add)
    w2["ids"] += [f"new{seed}-{j}" for j in range(add)]
    w2["product"] += [f"newp{j}" for j in range(add)]
    w2["group"] += [w2["group"][near[0]] if j == 0 and add > 2 else f"newg{j}" for j in range(add)]
    if add:
        w2["vecs"] = np.vstack([w2["vecs"], l2_normalize(w2["vecs"][near] + 0.2 * rng.normal(size=(add, 8)))])
    return w2


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key, s in a.items():
        assert b[key] == pytest.approx(s, abs=1e-5)


@given(seed=st.integers(0, 10_000), add=st.integers(0, 4), remove=st.integers(0, 4), move=st.integers(0, 3),
       regroup=st.integers(0, 2), pair=st.booleans())
@settings(max_examples=25, deadline=None)
def test_incremental_remine_equals_full_remine(seed, add, remove, move, regroup, pair) -> None:
    w = _world(seed, 60)
    _, state, first = _mine(w, None)
    assert first.full and first.counts["remined"] == 60
    w2 = _mutate(w, seed, add=add, remove=remove, move=move, regroup=regroup, pair=pair)
    inc, _, decision = _mine(w2, state)
    full, _, _ = _mine(w2, None)
    _same(inc, full)
    assert decision.counts["remined"] + decision.counts["reused"] == len(w2["ids"])


def test_small_change_reuses_most_anchors_and_chains() -> None:
    w = _world(3, 400)
    _, state, _ = _mine(w, None)
    _, state, d0 = _mine(w, state)
    assert not d0.full and d0.counts["remined"] == 0 and d0.counts["reused"] == 400
    w2 = _mutate(w, 3, add=2, remove=2, move=1, regroup=0, pair=False)
    inc, state2, d1 = _mine(w2, state)
    full, _, _ = _mine(w2, None)
    _same(inc, full)
    assert not d1.full and 0 < d1.counts["remined"] < 200 and d1.counts["reused"] > 200
    assert d1.counts["items_new"] == 2 and d1.counts["items_removed"] == 2 and d1.counts["items_changed"] == 1
    # A second incremental step starts from the merged state and still matches a full re-mine.
    w3 = _mutate(w2, 4, add=1, remove=1, move=0, regroup=1, pair=True)
    inc3, _, d2 = _mine(w3, state2)
    _same(inc3, _mine(w3, None)[0])
    assert not d2.full


def test_parameter_change_or_big_change_forces_full_remine(tmp_path) -> None:
    w = _world(5, 80)
    _, state, _ = _mine(w, None)
    state.save(tmp_path / "s.npz")
    loaded = AnnState.load(tmp_path / "s.npz")
    assert loaded is not None and loaded.params == PARAMS
    _, _, d = _mine(w, loaded, params={**PARAMS, "seed": 8})
    assert d.full and "seed" in d.reason
    _, _, d = _mine(_mutate(w, 5, add=60, remove=0, move=0, regroup=0, pair=False), loaded)
    assert d.full
    assert AnnState.load(tmp_path / "missing.npz") is None


def test_mine_stage_rerun_reuses_every_anchor_and_writes_the_same_rows(tmp_path) -> None:
    from test_mining_stage import _workspace

    from visprep.mining.stage import mine_stage

    ws = _workspace(tmp_path)
    first = mine_stage(ws)
    rows = sorted(tuple(r.values()) for r in ws.read_table("negatives").to_pylist() if r["kind"] == "ann")
    assert first["ann.full_remines"] == 1 and first["ann.remined"] == 72
    again = mine_stage(ws)
    assert again["ann.full_remines"] == 0 and again["ann.remined"] == 0 and again["ann.reused"] == 72
    assert sorted(tuple(r.values()) for r in ws.read_table("negatives").to_pylist() if r["kind"] == "ann") == rows
    ws.set_config(ws.config.model_copy(update={"mining": ws.config.mining.model_copy(update={"incremental": False})}))
    off = mine_stage(ws)
    assert off["ann.full_remines"] == 1
    assert sorted(tuple(r.values()) for r in ws.read_table("negatives").to_pylist() if r["kind"] == "ann") == rows
