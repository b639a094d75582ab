"""Metric values cross-checked against trec_eval (pytrec-eval-terrier) and a brute-force implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visprep.evaluate.metrics import judged_counts, metric_names, per_query_metrics

KS = (1, 5, 10)


def random_case(seed: int, *, n_queries: int = 40, n_products: int = 60):
    rng = np.random.default_rng(seed)
    products = [f"p{i:03d}" for i in range(n_products)]
    qrels, ranking = {}, {}
    for q in range(n_queries):
        judged = rng.choice(products, size=int(rng.integers(1, 25)), replace=False)
        qrels[f"q{q:03d}"] = {p: int(rng.integers(0, 5)) for p in judged}
        depth = int(rng.integers(0, 40))
        ranking[f"q{q:03d}"] = list(rng.choice(products, size=depth, replace=False))
    return qrels, ranking


def brute_force(qrels, ranking, *, ks, threshold, gain):
    """Textbook definitions, one loop per metric."""
    g = (lambda x: x) if gain == "linear" else (lambda x: 2**x - 1)
    out = {m: {} for m in metric_names(ks)}
    for q, judged in qrels.items():
        ranked = ranking.get(q, [])
        grades = [judged.get(p, 0) for p in ranked]
        if any(v >= 1 for v in judged.values()):
            ideal = sorted(judged.values(), reverse=True)
            for k in ks:
                dcg = sum(g(x) / math.log2(i + 2) for i, x in enumerate(grades[:k]))
                idcg = sum(g(x) / math.log2(i + 2) for i, x in enumerate(ideal[:k]))
                out[f"ndcg@{k}"][q] = dcg / idcg
        n_rel = sum(1 for v in judged.values() if v >= threshold)
        if n_rel:
            rel = [x >= threshold for x in grades]
            for k in ks:
                out[f"recall@{k}"][q] = sum(rel[:k]) / n_rel
            hits, ap = 0, 0.0
            for i, r in enumerate(rel):
                if r:
                    hits += 1
                    ap += hits / (i + 1)
            out["map"][q] = ap / n_rel
            out["mrr"][q] = next((1 / (i + 1) for i, r in enumerate(rel) if r), 0.0)
    return out


@pytest.mark.parametrize("seed,threshold,gain", [(0, 3, "linear"), (1, 1, "linear"), (2, 4, "exponential"),
                                                 (3, 2, "exponential")])
def test_metrics_match_brute_force(seed: int, threshold: int, gain: str) -> None:
    qrels, ranking = random_case(seed)
    got = per_query_metrics(qrels, ranking, ks=KS, threshold=threshold, gain=gain)
    want = brute_force(qrels, ranking, ks=KS, threshold=threshold, gain=gain)
    for m in metric_names(KS):
        assert set(got[m]) == set(want[m]), m
        for q in want[m]:
            assert got[m][q] == pytest.approx(want[m][q], abs=1e-6), (m, q)


@pytest.mark.parametrize("seed,threshold", [(4, 3), (5, 1)])
def test_metrics_match_trec_eval(seed: int, threshold: int) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, ranking = random_case(seed)
    got = per_query_metrics(qrels, ranking, ks=KS, threshold=threshold, gain="linear")
    run = {q: {p: float(len(ps) - i) for i, p in enumerate(ps)} for q, ps in ranking.items() if ps}
    measures = {"ndcg_cut." + ",".join(map(str, KS)), "recall." + ",".join(map(str, KS)), "map", "recip_rank"}
    binary = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=threshold).evaluate(run)
    # trec_eval's nDCG uses every positive grade as gain whatever the relevance level: level 1 is ours.
    graded = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut." + ",".join(map(str, KS))},
                                            relevance_level=1).evaluate(run)
    checked = 0
    for q in qrels:
        for k in KS:
            if q in got[f"ndcg@{k}"]:
                want = graded[q][f"ndcg_cut_{k}"] if q in graded else 0.0
                assert got[f"ndcg@{k}"][q] == pytest.approx(want, abs=1e-6)
                checked += 1
        if q in got["map"]:
            t = binary.get(q, {})
            for k in KS:
                assert got[f"recall@{k}"][q] == pytest.approx(t.get(f"recall_{k}", 0.0), abs=1e-6)
            assert got["map"][q] == pytest.approx(t.get("map", 0.0), abs=1e-6)
            assert got["mrr"][q] == pytest.approx(t.get("recip_rank", 0.0), abs=1e-6)
            checked += 1
    assert checked > 50


def test_zero_grades_are_counted_and_undefined_queries_left_out() -> None:
    qrels = {"q1": {"a": 0, "b": 0}, "q2": {"a": 4, "b": 0, "c": 2}}
    got = per_query_metrics(qrels, {"q1": ["a"], "q2": ["b", "a"]}, ks=[2], threshold=3)
    assert set(got["ndcg@2"]) == {"q2"} and set(got["map"]) == {"q2"}
    assert got["mrr"]["q2"] == pytest.approx(0.5)
    assert judged_counts(qrels)["q1"][0] == 2 and judged_counts(qrels)["q2"][0] == 1
