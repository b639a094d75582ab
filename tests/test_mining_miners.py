"""Miners against brute-force oracles (triple loops) on small sets; no positive or same-group item is ever emitted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.embed.registry import l2_normalize
from visprep.mining.ann import mine_ann_negatives, positive_scores
from visprep.mining.brand import mine_brand_negatives
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.positives import build_positive_sets, merge_shared_images
from visprep.mining.random_negatives import mine_random_negatives
from visprep.mining.skip_above import mine_skip_above_negatives
from visprep.schema import INTERACTION_PAIRS


def _world(seed: int, n: int = 40, n_products: int = 14, n_groups: int = 9, dim: int = 6):
    rng = np.random.default_rng(seed)
    product = rng.integers(0, n_products, n)
    group_of_product = rng.integers(0, n_groups, n_products)
    group = group_of_product[product]
    # Clustered vectors so that hard negatives and guard drops both happen.
    centers = rng.normal(size=(n_groups, dim))
    vecs = l2_normalize(centers[group] * 0.7 + rng.normal(size=(n, dim))).astype(np.float32)
    pairs = [(int(a), int(b)) for a, b in rng.integers(0, n_products, (3, 2))]
    return product, group, vecs, pairs


def _positive_groups(i, group, product, pairs):
    g = int(group[i])
    own = {g}
    gp = {int(p): int(x) for p, x in zip(product, group)}
    for a, b in pairs:  # a known pair makes the two products' groups positives of each other (not transitively)
        if a in gp and b in gp:
            if gp[a] == g:
                own.add(gp[b])
            if gp[b] == g:
                own.add(gp[a])
    return own


def _oracle_spos(vecs, group, product, pairs, how):
    n = len(vecs)
    out = np.full(n, np.nan)
    for i in range(n):
        pg = _positive_groups(i, group, product, pairs)
        sc = [float(vecs[i] @ vecs[j]) for j in range(n) if j != i and int(group[j]) in pg]
        if sc:
            out[i] = {"min": min, "max": max, "mean": lambda s: sum(s) / len(s)}[how](sc)
    return out


@given(seed=st.integers(0, 10_000), skip_top=st.integers(0, 3), width=st.integers(1, 8),
       margin=st.sampled_from([None, 0.0, 0.05, 0.3]), max_sim=st.sampled_from([None, 0.9, 0.5]),
       how=st.sampled_from(["min", "mean", "max"]))
@settings(max_examples=60, deadline=None)
def test_ann_matches_triple_loop_oracle(seed, skip_top, width, margin, max_sim, how) -> None:
    product, group, vecs, pairs = _world(seed)
    band_max = skip_top + width
    pos = build_positive_sets(group, product, pairs)
    s_pos = positive_scores(vecs, group=group, positives=pos, how=how)
    np.testing.assert_allclose(s_pos, _oracle_spos(vecs, group, product, pairs, how), rtol=1e-5, atol=1e-6)
    guard = FalseNegativeGuard(relative_margin=margin, max_similarity=max_sim)
    k = 100  # take everything eligible, so the output must equal the oracle's set exactly
    res = mine_ann_negatives(vecs, group=group, positives=pos, s_pos=s_pos, k=k, skip_top=skip_top,
                             band_max=band_max, guard=guard, overfetch_margin=0, rng=np.random.default_rng(seed))
    got = {(int(a), int(b)): (int(r), float(s)) for a, b, r, s in zip(res.anchor, res.negative, res.rank, res.score)}
    expect = {}
    n_rel = n_abs = 0
    for i in range(len(vecs)):
        pg = _positive_groups(i, group, product, pairs)
        cands = sorted((float(vecs[i] @ vecs[j]), j) for j in range(len(vecs)) if j != i and int(group[j]) not in pg)
        cands.sort(key=lambda t: -t[0])
        for rank, (s, j) in enumerate(cands, start=1):
            if not skip_top < rank <= band_max:
                continue
            if max_sim is not None and s > max_sim:
                n_abs += 1
                continue
            if margin is not None and not np.isnan(s_pos[i]) and not s < s_pos[i] - abs(s_pos[i]) * margin:
                n_rel += 1
                continue
            expect[(i, j)] = (rank, s)
    assert set(got) == set(expect)
    for key, (rank, s) in expect.items():
        assert got[key][0] == rank and got[key][1] == pytest.approx(s, abs=1e-5)
    assert res.counts["guard_absolute"] == n_abs and res.counts["guard_relative"] == n_rel
    assert res.counts["self"] == len(vecs)


@given(seed=st.integers(0, 10_000), k=st.integers(1, 6))
@settings(max_examples=40, deadline=None)
def test_no_positive_or_same_group_is_ever_emitted(seed, k) -> None:
    product, group, vecs, pairs = _world(seed)
    pos = build_positive_sets(group, product, pairs)
    rng = np.random.default_rng(seed)
    s_pos = positive_scores(vecs, group=group, positives=pos)
    ann = mine_ann_negatives(vecs, group=group, positives=pos, s_pos=s_pos, k=k, band_max=10, rng=rng)
    ra, rn, _, _ = mine_random_negatives(group, pos, k=k, rng=rng)
    cats = np.array([f"c{p % 2}" for p in product], dtype=object)
    brands = np.array([f"b{p % 3}" for p in product], dtype=object)
    ba, bn, _, _ = mine_brand_negatives(cats, brands, group, pos, k=k, rng=rng)
    for a, n in [(ann.anchor, ann.negative), (ra, rn), (ba, bn)]:
        for i, j in zip(a.tolist(), n.tolist()):
            assert i != j
            assert int(group[j]) not in _positive_groups(i, group, product, pairs)
    # Random: distinct per anchor, exactly min(k, non-positives) each.
    for i in range(len(group)):
        mine = rn[ra == i].tolist()
        assert len(mine) == len(set(mine))
        eligible = sum(int(group[j]) not in _positive_groups(i, group, product, pairs) for j in range(len(group)))
        assert len(mine) == min(k, eligible)
    for i, j in zip(ba.tolist(), bn.tolist()):
        assert cats[i] == cats[j] and brands[i] != brands[j]


def test_overfetch_covers_anchors_with_many_positives() -> None:
    # Anchor 0's group has 30 near-identical images; the first non-positives come after all of them.
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    vecs = l2_normalize(np.vstack([base + 0.01 * rng.normal(size=(30, 8)), rng.normal(size=(20, 8))]))
    group = np.array([0] * 30 + list(range(1, 21)))
    product = np.arange(50)
    pos = build_positive_sets(group, product)
    res = mine_ann_negatives(vecs, group=group, positives=pos, s_pos=np.full(50, np.nan), k=5, band_max=5,
                             guard=FalseNegativeGuard(None, None), overfetch_margin=0, anchors=np.array([0]))
    assert len(res.negative) == 5 and set(res.negative.tolist()) <= set(range(30, 50))
    assert res.counts["positive"] == 29 and res.counts["anchors_short"] == 0


def test_guard_is_sign_safe() -> None:
    guard = FalseNegativeGuard(relative_margin=0.1, max_similarity=None)
    # s_pos = -0.5: the limit is -0.55 (not -0.45, which the unsafe s_pos*(1-m) would give).
    keep, absolute, relative = guard.apply(np.array([[-0.5, -0.54, -0.56]]), np.array([-0.5]))
    assert keep.tolist() == [[False, False, True]] and relative.tolist() == [[True, True, False]]
    keep, _, _ = guard.apply(np.array([[0.85, 0.95]]), np.array([1.0]))
    assert keep.tolist() == [[True, False]]
    keep, _, relative = guard.apply(np.array([[0.99]]), np.array([np.nan]))
    assert keep.tolist() == [[True]] and not relative.any()  # no positive known: the relative rule cannot apply
    keep, absolute, _ = FalseNegativeGuard(None, 0.9).apply(np.array([[0.95, np.nan]]), np.array([0.2]))
    assert keep.tolist() == [[False, False]] and absolute.tolist() == [[True, False]]


def test_merge_shared_images_unions_groups() -> None:
    groups = merge_shared_images(["p1", "p2", "p3", "p4"], ["i1", "i1", "i2", "i3"], {"p1": "g1", "p2": "g2"})
    assert groups["p1"] == groups["p2"] == "g1" and groups["p3"] == "p3" and groups["p4"] == "p4"


def test_skip_above_excludes_positives_and_ranks_by_weight() -> None:
    rows = [
        {"anchor_id": "q1", "anchor_type": "query", "anchor_image_id": "img-a", "product_id": "B",
         "kind": "skip_above", "count": 3, "raw_weight": 3.0},
        {"anchor_id": "q1", "anchor_type": "query", "anchor_image_id": "img-a", "product_id": "C",
         "kind": "skip_above", "count": 1, "raw_weight": 1.0},
        {"anchor_id": "q1", "anchor_type": "query", "anchor_image_id": "img-a", "product_id": "D",
         "kind": "skip_above", "count": 5, "raw_weight": 5.0},
        {"anchor_id": "q1", "anchor_type": "query", "anchor_image_id": "img-a", "product_id": "D",
         "kind": "click", "count": 1, "raw_weight": 1.0},  # D was also clicked for q1: not a negative
        {"anchor_id": "A", "anchor_type": "product", "anchor_image_id": None, "product_id": "A2",
         "kind": "skip_above", "count": 2, "raw_weight": 2.0},  # same group as A
        {"anchor_id": "A", "anchor_type": "product", "anchor_image_id": None, "product_id": "ZZ",
         "kind": "skip_above", "count": 2, "raw_weight": 2.0},  # unknown product
    ]
    table = pa.Table.from_pylist(rows, schema=INTERACTION_PAIRS)
    # pool: img-a (product A), img-a2 (A2, same group as A), img-b (B), img-c (C), img-d (D)
    group = np.array([0, 0, 1, 2, 3])
    pos = build_positive_sets(group, np.arange(5))
    first = {"A": 0, "A2": 1, "B": 2, "C": 3, "D": 4}
    a, n, _, r, c = mine_skip_above_negatives(table, image_index={"img-a": 0}, first_image_of_product=first,
                                              group=group, positives=pos, k=5)
    assert list(zip(a.tolist(), n.tolist(), r.tolist())) == [(0, 2, 1), (0, 3, 2)]
    assert c == {"rows": 5, "unresolved": 1, "positive": 2, "beyond_k": 0}


def test_auto_search_calibrates_ivf_probes_to_the_recall_target() -> None:
    from visprep.mining.ann import AUTO_EXACT_MAX, AUTO_RECALL_TARGET, auto_search, build_auto_index

    assert auto_search(AUTO_EXACT_MAX)[0] == "exact" and auto_search(AUTO_EXACT_MAX + 1)[0] == "ivf"
    rng = np.random.default_rng(0)
    n = AUTO_EXACT_MAX + 5000
    centers = rng.normal(size=(200, 16))
    vecs = l2_normalize(centers[rng.integers(0, 200, n)] + 0.4 * rng.normal(size=(n, 16))).astype(np.float32)
    index, info = build_auto_index(vecs, k=10)
    cal = info["calibration"]
    assert info["search"] == "ivf" and index.nprobe == cal["nprobe"] == info["ivf_nprobe"]
    assert cal["recall"] >= AUTO_RECALL_TARGET or cal["nprobe"] >= index.nlist
    # Oracle: brute-force top-10 (self excluded) of the same sampled anchors, vs the index at the chosen nprobe.
    rows = np.sort(np.random.default_rng(0).choice(n, size=cal["sample"], replace=False))
    sims = vecs[rows] @ vecs.T
    sims[np.arange(len(rows)), rows] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :10]
    _, got = index.search(vecs[rows], 11)
    hits = [len(set(t.tolist()) & set(g[g != r][:10].tolist())) / 10 for r, t, g in zip(rows, truth, got)]
    assert np.mean(hits) == pytest.approx(cal["recall"], abs=0.01)
    if cal["nprobe"] > 1:  # the smallest power of two: half the probes misses the target
        index.nprobe = cal["nprobe"] // 2
        _, got = index.search(vecs[rows], 11)
        half = [len(set(t.tolist()) & set(g[g != r][:10].tolist())) / 10 for r, t, g in zip(rows, truth, got)]
        assert np.mean(half) < AUTO_RECALL_TARGET + 0.01


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), n_groups=st.integers(1, 25))
def test_positive_contains_matches_brute_force(seed: int, n: int, n_groups: int) -> None:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n)
    pairs = [(int(a), int(b)) for a, b in rng.integers(0, n, (int(rng.integers(0, 3 * n)), 2))]
    product = np.arange(n)  # one image per product, so pairs link groups directly
    pos = build_positive_sets(group, product, pairs)
    rows = rng.integers(0, n, int(rng.integers(1, 20)))
    cand = rng.integers(-1, n_groups + 2, (len(rows), int(rng.integers(1, 12))))
    want = np.array([[c >= 0 and c in set(pos.of(int(r)).tolist()) for c in line] for r, line in zip(rows, cand)])
    np.testing.assert_array_equal(pos.contains(rows, cand), want)


def test_a_hub_of_positives_is_mined_in_bounded_blocks_with_the_same_result(monkeypatch) -> None:
    """A popular product co-viewed with most others: its anchors must skip over thousands of positive images. The
    search blocks are cut by need and bounded (the whole block once fetched the hub's count for every anchor)."""
    import visprep.mining.ann as ann

    rng = np.random.default_rng(3)
    n = 600
    vecs = l2_normalize(rng.normal(size=(n, 16)).astype(np.float32))
    group = np.arange(n) // 2
    product = group.copy()
    hub = [(0, int(p)) for p in range(1, 250)]  # product 0 is a positive of 249 others
    pos = build_positive_sets(group, product, hub)
    s_pos = positive_scores(vecs, group=group, positives=pos)

    def mine() -> tuple[np.ndarray, ...]:
        r = mine_ann_negatives(vecs, group=group, positives=pos, s_pos=s_pos, k=3, band_max=10, search="exact",
                               seed=7, keep_band=True)
        return r.anchor, r.negative, r.score, r.rank, r.band, r.radius

    whole = mine()
    blocks = ann.search_blocks(np.add.reduceat(np.bincount(group)[pos.groups], pos.indptr[:-1]), n=n, band_max=10,
                               margin=8, query_batch=4096, max_cells=2000)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(n)) and len(blocks) > 2
    monkeypatch.setattr(ann, "MAX_BLOCK_CELLS", 2000)
    cut = []
    real = ann.search_blocks
    monkeypatch.setattr(ann, "search_blocks", lambda *a, **kw: cut.append(real(*a, **kw)) or cut[-1])
    small = mine()
    assert len(cut[0]) == len(blocks)
    for a, b in zip(whole, small):
        np.testing.assert_array_equal(a, b)
    assert not np.isin(whole[1][whole[0] < 2], np.arange(2, 500)).any()  # the hub's anchors never get its positives


def test_auto_search_falls_back_to_exact_where_ivf_does_not_pay() -> None:
    """Unstructured vectors: IVF needs most of its lists for the recall target, so `auto` builds an exact index
    (and says why); clustered ones keep IVF (the test above)."""
    from visprep.mining.ann import AUTO_EXACT_MAX, AUTO_IVF_MAX_SHARE, build_auto_index, build_search_index, ivf_pays

    rng = np.random.default_rng(1)
    n = AUTO_EXACT_MAX + 5000
    vecs = l2_normalize(rng.normal(size=(n, 64))).astype(np.float32)
    index, info = build_auto_index(vecs, k=20)
    assert info["search"] == "exact" and not hasattr(index, "nprobe")
    rejected = info["ivf_rejected"]
    assert not ivf_pays(rejected["calibration"], rejected["ivf_nlist"])
    assert (rejected["calibration"]["nprobe"] >= AUTO_IVF_MAX_SHARE * rejected["ivf_nlist"]
            or rejected["calibration"]["recall"] < 0.95)
    assert build_search_index(vecs, "auto", auto_k=20).ntotal == n and not hasattr(
        build_search_index(vecs, "auto", auto_k=20), "nprobe")
    # The exact index is exact: its neighbours are the brute-force ones.
    _, got = index.search(vecs[:5], 4)
    truth = np.argsort(-(vecs[:5] @ vecs.T), axis=1)[:, :4]
    assert (got == truth).all()
