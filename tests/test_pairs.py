"""Pairs and negatives: brute-force oracles and properties for the vectorised samplers."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from itertools import combinations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.mining.other_category import other_category_negatives, sample_distinct
from visprep.mining.stage import mine_stage
from visprep.pairs.stage import pairs_stage, same_product_pairs
from visprep.schema import IMAGES, INTERACTION_PAIRS, PRODUCT_IMAGES, PRODUCTS, SPLITS, URLS
from visprep.workspace import Workspace


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


def test_other_category_negatives_never_emit_interaction_positives(tmp_path) -> None:
    # A (shoes) was clicked from B (bags): B's only other-category pool is A, so every draw must be dropped.
    ws = Workspace(tmp_path)
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    products, pimgs, urls, images, splits = [], [], [], [], []
    for pid, top in (("A", "shoes"), ("B", "bags"), ("C", "bags")):
        products.append({"product_id": pid, "title": pid, "category": f"{top}/x", "top_category": top, "brand": "b"})
        splits.append({"product_id": pid, "group_id": pid, "split": "train"})
        for j in range(3):
            url, iid = f"file:///{pid}{j}.jpg", f"{pid}-{j}"
            pimgs.append({"product_id": pid, "position": j, "url": url, "source": "catalog"})
            urls.append({"url": url, "status": "ok", "image_id": iid, "fetched_at": now})
            images.append({"image_id": iid, "status": "ok", "format": "jpeg"})
    for name, rows, schema in (("products", products, PRODUCTS), ("product_images", pimgs, PRODUCT_IMAGES),
                               ("urls", urls, URLS), ("images", images, IMAGES), ("splits", splits, SPLITS)):
        ws.write_table(name, pa.Table.from_pylist(rows, schema=schema))
    ws.write_table("interaction_pairs", pa.Table.from_pylist(
        [{"anchor_id": "B", "anchor_type": "product", "product_id": "A", "kind": "click", "count": 2},
         {"anchor_id": "C", "anchor_type": "product", "product_id": "A", "kind": "skip_above", "count": 2}],
        schema=INTERACTION_PAIRS))
    ws.config_path.write_text('[mining]\nkinds = ["other_category"]\n')
    pairs_stage(ws)
    assert not ws.has_table("negatives")  # one writer: the mine stage writes negatives, the pairs stage does not
    mine_stage(ws)
    neg = ws.read_table("negatives").to_pylist()
    assert {r["kind"] for r in neg} == {"other_category"}
    got = {(r["anchor_product_id"], r["negative_product_id"]) for r in neg}
    assert ("A", "B") not in got and ("B", "A") not in got
    assert ("A", "C") in got and ("C", "A") in got  # skip_above is not a positive
    assert ws.last_run("mine")["counts"]["other_category.positive"] >= 3 * 3  # all of B's draws
