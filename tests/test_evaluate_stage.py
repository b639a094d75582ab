"""Exact search against a brute-force oracle, the evaluate stage end to end, the paired test, and the split check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from labels_fixtures import image_id_of, png, tiny_workspace
from typer.testing import CliRunner

from visprep.cli import app
from visprep.evaluate.embeddings import read_embeddings, write_embeddings
from visprep.evaluate.search import normalize_rows, rank_products
from visprep.evaluate.stage import evaluate_stage
from visprep.evaluate.stats import bootstrap_ci, paired_test
from visprep.schema import EVAL_QRELS, NEGATIVES, PAIRS
from visprep.split.check import SplitLeakError, assert_no_split_leak, check_split_leaks
from visprep.split.stage import split_stage


@pytest.mark.parametrize("seed", range(5))
def test_rank_products_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_img, d = int(rng.integers(1, 60)), 8
    prods = [f"p{int(i):02d}" for i in rng.integers(0, 15, n_img)]
    cat = normalize_rows(rng.normal(size=(n_img, d)).astype(np.float32))
    qs = normalize_rows(rng.normal(size=(7, d)).astype(np.float32))
    exclude = [rng.choice(n_img, size=int(rng.integers(0, 2)), replace=False) for _ in range(7)]
    got = list(rank_products(qs, cat, prods, depth=5, block_size=3, exclude=exclude))
    for qi, (ids, scores) in enumerate(got):
        best: dict[str, float] = {}
        for r in range(n_img):
            if r not in exclude[qi]:
                s = float(qs[qi] @ cat[r])
                best[prods[r]] = max(best.get(prods[r], -np.inf), s)
        want = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        assert ids == [p for p, _ in want]
        assert np.allclose(scores, [s for _, s in want], atol=1e-5)


def test_bootstrap_and_paired_test() -> None:
    rng = np.random.default_rng(0)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 200))}
    better = {q: min(1.0, v + 0.1) for q, v in a.items()}
    same = {q: v + rng.normal(0, 1e-3) for q, v in a.items()}
    c = paired_test(a, better, permutations=2000, rng=np.random.default_rng(1))
    assert c.diff > 0.05 and c.p_randomization < 0.01 and c.p_ttest < 0.01 and c.ci_low > 0
    c = paired_test(a, same, permutations=2000, rng=np.random.default_rng(1))
    assert c.p_randomization > 0.05 and c.ci_low < 0 < c.ci_high
    lo, hi = bootstrap_ci(np.array(list(a.values())), resamples=2000, rng=np.random.default_rng(2))
    assert lo < np.mean(list(a.values())) < hi and hi - lo < 0.1


def _with_qrels(ws, rows: list[tuple[str, str, int]]) -> None:
    ws.write_table("eval_qrels", pa.Table.from_pylist(
        [{"query_id": q, "product_id": p, "grade": g, "n_raters": 1} for q, p, g in rows], schema=EVAL_QRELS))


def test_evaluate_stage_known_ranking_and_comparison(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws", config="[evaluate]\nks = [1, 3]\nbootstrap = 200\npermutations = 500\n")
    cat = {image_id_of(ws, f"p{i:02d}"): i for i in range(12)}
    # Query vectors point at products: query qa is closest to p00, then p01; qb to p03 then p04.
    dim = 12
    ids = list(cat) + ["qa", "qb", "qc"]
    vec = np.zeros((len(ids), dim), np.float32)
    for iid, i in cat.items():
        vec[ids.index(iid), i] = 1.0
    vec[ids.index("qa"), [0, 1]] = [1.0, 0.5]
    vec[ids.index("qb"), [3, 4]] = [1.0, 0.5]
    vec[ids.index("qc"), 6] = 1.0
    good = write_embeddings(tmp_path / "good.parquet", ids, vec, model="good")
    _with_qrels(ws, [("qa", "p00", 4), ("qa", "p01", 3), ("qa", "p02", 0),
                     ("qb", "p04", 4), ("qb", "p03", 1),
                     ("qc", "p07", 0), ("qc", "p06", 0),  # no relevant product: left out, still counted
                     ("qmissing", "p00", 4)])
    r = evaluate_stage(ws, model="good", embeddings=good)
    o = r.overall()
    assert r.queries == 3 and r.queries_without_embedding == 1 and r.judged_by_grade[0] == 3
    assert o["ndcg@1"]["n_queries"] == 2 and o["map"]["n_queries"] == 2
    # qa: perfect.  qb: p03 (gain 1) first, p04 (gain 4) second.
    ndcg1_qb = 1 / 4
    assert o["ndcg@1"]["value"] == pytest.approx((1 + ndcg1_qb) / 2)
    assert o["mrr"]["value"] == pytest.approx((1 + 0.5) / 2)
    assert o["recall@1"]["value"] == pytest.approx((0.5 + 0) / 2)
    cats = {row["category"] for row in r.metrics}
    assert cats == {"*", "Apparel"}  # p00 and p04 are Apparel (Tops, Coats)

    rng = np.random.default_rng(0)
    bad = write_embeddings(tmp_path / "bad.parquet", ids, rng.normal(size=vec.shape), model="bad")
    r2 = evaluate_stage(ws, model="bad", embeddings=bad, baseline="good")
    assert {c.metric for c in r2.comparisons} >= {"ndcg@1", "map"}
    stored = ws.read_table("eval_metrics")
    assert set(stored.column("model").to_pylist()) == {"good", "bad"}

    res = CliRunner().invoke(app, ["evaluate", "-w", str(ws.root), "-m", "good", "--embeddings", str(good)])
    assert res.exit_code == 0, res.output
    assert "nDCG gain = grade" in res.output and "ndcg@3" in res.output


def test_read_embeddings_refuses_bad_files(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_id": ["a", "b"], "vector": [[1.0, 2.0], [1.0]]}), tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match="has 1 values"):
        read_embeddings(tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"key": ["a"], "vector": [[1.0]]}), tmp_path / "noid.parquet")
    with pytest.raises(ValueError, match="id column"):
        read_embeddings(tmp_path / "noid.parquet")
    ids, m = read_embeddings(write_embeddings(tmp_path / "ok.parquet", ["x", "y"], np.eye(2), model="m"))
    assert ids == ["x", "y"] and m.shape == (2, 2)


def test_split_check_fails_loudly_on_leaks_and_pinning_fixes_eval_products(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws", config="[split]\nfractions = { train = 0.5, eval = 0.5 }\n")
    split_stage(ws)
    split_of = dict(zip(*(ws.read_table("splits")[c].to_pylist() for c in ("product_id", "split"))))
    train = sorted(p for p, s in split_of.items() if s == "train")
    evals = sorted(p for p, s in split_of.items() if s == "eval")
    assert train and evals
    assert check_split_leaks(ws).ok

    # A leaking configuration: a training pair and a training negative holding eval products ...
    ws.write_table("pairs", pa.Table.from_pylist([{"anchor_id": "i1", "positive_id": "i2", "kind": "same_product",
                                                  "anchor_product_id": train[0], "positive_product_id": evals[0],
                                                  "split": "train"}], schema=PAIRS))
    ws.write_table("negatives", pa.Table.from_pylist([{"anchor_id": "i1", "negative_id": "i3",
                                                      "anchor_product_id": train[0],
                                                      "negative_product_id": evals[1], "split": "train"}],
                                                    schema=NEGATIVES))
    # ... an eval query whose exact product is in train, and whose photo is a training product's image.
    _with_qrels(ws, [(image_id_of(ws, train[1]), train[2], 4)])
    with pytest.raises(SplitLeakError) as exc:
        assert_no_split_leak(ws)
    message = str(exc.value)
    for needle in ("pairs rows mix splits", "negatives rows mix splits", "judged >= 3 for eval queries",
                   "eval query images are catalog images of non-eval products"):
        assert needle in message
    res = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
    assert res.exit_code == 1 and "SPLIT LEAK" in res.output

    # Re-splitting pins the judged product into eval; clean pairs then pass.
    split_stage(ws)
    assert dict(zip(*(ws.read_table("splits")[c].to_pylist() for c in ("product_id", "split"))))[train[2]] == "eval"
    ws.write_table("pairs", PAIRS.empty_table())
    ws.write_table("negatives", NEGATIVES.empty_table())
    _with_qrels(ws, [(ws.store.put(png(999), "png"), train[2], 4)])
    assert assert_no_split_leak(ws).ok
    res = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
    assert res.exit_code == 0 and "split check: no leak" in res.output


def test_product_groups_keep_a_group_in_one_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visprep import schema

    groups = pa.schema([pa.field("product_id", pa.string(), nullable=False), pa.field("group_id", pa.string())])
    monkeypatch.setitem(schema.TABLES, "product_groups", groups)
    ws = tiny_workspace(tmp_path / "ws", config="[split]\nfractions = { train = 0.5, eval = 0.5 }\n")
    ws.write_table("product_groups", pa.table({"product_id": [f"p{i:02d}" for i in range(12)],
                                               "group_id": [f"g{i // 4}" for i in range(12)]}))
    split_stage(ws)
    s = ws.read_table("splits").to_pylist()
    for g in ("g0", "g1", "g2"):
        assert len({r["split"] for r in s if r["group_id"] == g}) == 1
    assert check_split_leaks(ws).ok


def test_rank_products_breaks_ties_by_product_id_at_the_cut_off() -> None:
    cat = np.ones((6, 2), np.float32)  # every product scores the same
    ids, scores = next(rank_products(np.ones((1, 2), np.float32), cat, ["e", "d", "c", "b", "a", "a"], depth=3))
    assert ids == ["a", "b", "c"] and np.allclose(scores, 2.0)
