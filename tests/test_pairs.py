"""Pairs and negatives: brute-force oracles and properties for the vectorised samplers."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.pairs.stage import other_category_negatives, same_product_pairs, sample_distinct


@given(rows=st.integers(1, 50), pool=st.integers(1, 40), k=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_sample_distinct_rows_are_distinct_and_in_range(rows: int, pool: int, k: int, seed: int) -> None:
    k = min(k, pool)
    out = sample_distinct(rows, pool, k, np.random.default_rng(seed))
    assert out.shape == (rows, k)
    assert ((out >= 0) & (out < pool)).all()
    assert all(len(set(r)) == k for r in out.tolist())


def test_sample_distinct_is_uniform_over_subsets() -> None:
    # Floyd's algorithm: every 2-subset of 5 items equally likely (10 subsets).
    out = sample_distinct(200_000, 5, 2, np.random.default_rng(0))
    counts = Counter(tuple(sorted(r)) for r in out.tolist())
    assert len(counts) == 10
    freq = np.array(list(counts.values())) / 200_000
    assert np.abs(freq - 0.1).max() < 0.005


@given(cats=st.lists(st.sampled_from(["A", "B", "C", "D"]), min_size=1, max_size=60), k=st.integers(0, 8),
       seed=st.integers(0, 1000))
@settings(max_examples=150, deadline=None)
def test_other_category_negatives_matches_oracle(cats: list[str], k: int, seed: int) -> None:
    top = np.array(cats)
    a, n, rank = other_category_negatives(top, k, np.random.default_rng(seed))
    # Oracle: each row gets min(k, rows of other categories) distinct other-category rows, ranks 1..kk.
    for i, c in enumerate(cats):
        others = [j for j, c2 in enumerate(cats) if c2 != c]
        mine = n[a == i]
        expect = min(k, len(others)) if len(set(cats)) > 1 else 0
        assert len(mine) == expect
        assert len(set(mine.tolist())) == len(mine)
        assert all(cats[j] != c for j in mine.tolist())
        assert sorted(rank[a == i].tolist()) == list(range(1, expect + 1))


def test_same_product_pairs_oracle_and_cap() -> None:
    pids = ["a"] * 4 + ["b"] + ["c"] * 3
    iids = [f"i{i}" for i in range(8)]
    src = ["catalog", "synthetic", "catalog", "catalog", "catalog", "catalog", "catalog", "catalog"]
    out = same_product_pairs(pids, iids, src, max_per_product=100, weight=1.0, synthetic_weight=0.5)
    expect = {(pids[i], iids[i], iids[j]) for i, j in combinations(range(8), 2) if pids[i] == pids[j]}
    assert {(p, x, y) for p, x, y, _ in out} == expect
    assert {(x, y): w for _, x, y, w in out}[("i0", "i1")] == 0.5
    assert {(x, y): w for _, x, y, w in out}[("i0", "i2")] == 1.0
    capped = same_product_pairs(pids, iids, src, max_per_product=2, weight=1.0, synthetic_weight=0.5)
    assert Counter(p for p, *_ in capped) == {"a": 2, "c": 2}
