"""Popularity bias: exposure and interactions from the events tables, re-sampling weights, logQ, concentration."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from visprep.cli import app
from visprep.events.debias import gini
from visprep.events.simulate import SimConfig, simulate
from visprep.events.stage import ingest_event_files
from visprep.quality.popularity import (
    gini_coefficient,
    head_share,
    popularity_stage,
    popularity_weight_of,
    resampled_log_q,
    resampling_weights,
)
from visprep.sampling.stage import popularity_weights
from visprep.workspace import Workspace


@given(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=60))
@settings(max_examples=200, deadline=None)
def test_gini_matches_the_events_oracle(xs: list[float]) -> None:
    assert gini_coefficient(np.array(xs)) == pytest.approx(gini(xs), abs=1e-9)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300), st.floats(0.001, 0.5))
@settings(max_examples=200, deadline=None)
def test_head_share_matches_brute_force(xs: list[float], fraction: float) -> None:
    total = sum(xs)
    k = max(1, math.ceil(len(xs) * fraction))
    want = sum(sorted(xs, reverse=True)[:k]) / total if total > 0 else 0.0
    assert head_share(np.array(xs), fraction) == pytest.approx(want, rel=1e-9, abs=1e-12)


@given(st.lists(st.floats(-30, 0, allow_nan=False), min_size=1, max_size=50), st.floats(0.3, 5))
@settings(max_examples=100, deadline=None)
def test_resampled_log_q_is_normalised_q_times_w(lq: list[float], temperature: float) -> None:
    lq_arr = np.array(lq)
    w = resampling_weights(np.arange(len(lq)) * 3.0, temperature)
    got = resampled_log_q(lq_arr, w)
    want = np.exp(lq_arr) * w
    assert np.allclose(np.exp(got), want / want.sum(), rtol=1e-6, atol=1e-300)
    assert np.exp(got).sum() == pytest.approx(1.0)


def test_weights_are_inverse_popularity_with_temperature() -> None:
    n = np.array([0, 1, 3, 99])
    w1 = resampling_weights(n, 1.0)
    assert w1.mean() == pytest.approx(1.0)
    assert w1[0] / w1[3] == pytest.approx(100.0)  # (1+0)^-1 / (1+99)^-1
    w2 = resampling_weights(n, 2.0)
    assert w2[0] / w2[3] == pytest.approx(10.0)  # temperature 2 takes the square root
    assert np.allclose(resampling_weights(n, 1e9), 1.0)  # T -> infinity: uniform
    with pytest.raises(ValueError, match="temperature"):
        resampling_weights(n, 0)


@pytest.fixture(scope="module")
def sim_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, pa.Table]:
    tmp = tmp_path_factory.mktemp("pop")
    ev, _ = simulate(SimConfig(searches=3000, seed=3, products=400))
    f = tmp / "ev.parquet"
    pq.write_table(ev, f)
    ws = Workspace(tmp / "ws")
    ws.root.mkdir()
    pids = [f"catalog-only-{k}" for k in range(5)]  # catalog products nobody saw
    ws.write_table("products", pa.table({"product_id": pids, "title": pids, "category": ["c"] * 5}))
    ingest_event_files(ws, [f])
    return ws, ev


def test_popularity_table_matches_brute_force_counts(sim_ws: tuple[Workspace, pa.Table]) -> None:
    ws, ev = sim_ws
    r = popularity_stage(ws)
    t = {row["product_id"]: row for row in ws.read_table("popularity").to_pylist()}
    # Exposures: impressions in the raw log, counted row by row.
    want_exp = Counter(p for p, typ in zip(ev.column("product_id").to_pylist(), ev.column("type").to_pylist())
                       if typ == "impression")
    assert all(t[p]["exposures"] == n for p, n in want_exp.items())
    assert all(t[f"catalog-only-{k}"]["exposures"] == 0 and t[f"catalog-only-{k}"]["log_q_raw"] is None
               for k in range(5))
    # Interactions: the sampler's definition (its own function is the oracle).
    pids = sorted(t)
    sampler = popularity_weights(ws, pids, 1.0) - 1.0
    assert [t[p]["interactions"] for p in pids] == sampler.astype(int).tolist()
    # Weights: what the sampler draws with at exponent -1/T, up to the mean-1 scaling.
    w = np.array([t[p]["weight"] for p in pids])
    s = popularity_weights(ws, pids, -1.0)
    assert np.allclose(w, s / s.mean())
    assert np.allclose(popularity_weight_of(ws, pids + ["unknown"]), np.append(w, 1.0))
    # log_q_raw is the events stage's log_q of the product.
    ip = ws.read_table("interaction_pairs", ["product_id", "log_q"]).to_pylist()
    assert all(t[row["product_id"]]["log_q_raw"] == pytest.approx(row["log_q"]) for row in ip)
    # Re-sampling flattens the positive mass: Gini and head share drop.
    print(f"popularity T=1: before {r.before}, after {r.after}, exposure {r.exposure}")
    assert r.before["gini"] > 0.5 and r.after["gini"] < r.before["gini"] - 0.3
    assert r.after["top1%_share"] < r.before["top1%_share"]
    assert r.events_pair_weights["debiased_gini"] < r.events_pair_weights["raw_gini"]
    # A popular product's logQ drops after re-sampling, a rare one's rises.
    rows = [v for v in t.values() if v["log_q"] is not None]
    top = max(rows, key=lambda v: v["interactions"])
    assert top["log_q"] < top["log_q_raw"]
    assert ws.last_run("popularity")["metrics"]["after"]["gini"] == r.after["gini"]
    status = CliRunner().invoke(app, ["status", "-w", str(ws.root), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["quality"]["popularity"]["after"]["gini"] == r.after["gini"]


def test_popularity_command_and_temperature(sim_ws: tuple[Workspace, pa.Table]) -> None:
    ws, _ = sim_ws
    ws.config_path.write_text("[popularity]\ntemperature = 4.0\n")
    try:
        result = CliRunner().invoke(app, ["popularity", "-w", str(ws.root)])
        assert result.exit_code == 0, result.output
        assert "gini" in result.output
        r4 = ws.last_run("popularity")["metrics"]
    finally:
        ws.config_path.unlink()
    r1 = popularity_stage(Workspace(ws.root))
    # A gentler temperature flattens less.
    assert r1.after["gini"] < r4["after"]["gini"] < r4["before"]["gini"]


def test_no_events_gives_uniform_weights(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.write_table("products", pa.table({"product_id": ["a", "b"], "title": ["a", "b"], "category": ["c", "c"]}))
    r = popularity_stage(ws)
    t = ws.read_table("popularity").to_pylist()
    assert [x["weight"] for x in t] == [1.0, 1.0] and r.before["items"] == 0
