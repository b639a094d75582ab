"""Graded retrieval metrics per query, computed with ranx.

Conventions (checked against trec_eval through pytrec-eval-terrier in the tests):
* ``ndcg@k``: gain = the grade ("linear", Järvelin & Kekäläinen, as trec_eval's ``ndcg_cut``) or 2^grade − 1
  ("exponential", Burges); the ideal ranking is built from every judged product of the query.
* ``recall@k``, ``map`` (average precision over the retrieved depth, divided by ALL relevant products) and ``mrr``:
  binary, a product is relevant when its grade >= the relevance threshold.
* A query without any product at the needed level has no defined value for that metric: it is left out of that
  metric's mean (and counted), not scored 0.
* ranx ignores judgments below the relevance level, grade-0 ones always (ranx #5): `judged_counts` keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
"""query_id -> {product_id: grade}."""
Ranking = Mapping[str, Sequence[str]]
"""query_id -> product ids, best first."""


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metric names evaluated for cut-offs `ks`, in report order."""
    return [*(f"ndcg@{k}" for k in ks), *(f"recall@{k}" for k in ks), "map", "mrr"]


def _ranx():
    try:
        import ranx
    except ImportError as exc:  # pragma: no cover - dependency of visprep
        raise ImportError("visprep evaluate needs ranx: pip install ranx") from exc
    return ranx


def judged_counts(qrels: Qrels) -> dict[str, dict[int, int]]:
    """Per query, how many products were judged at each grade (grade 0 included)."""
    return {q: {g: sum(1 for v in d.values() if v == g) for g in range(5)} for q, d in qrels.items()}


def per_query_metrics(qrels: Qrels, ranking: Ranking, *, ks: Sequence[int], threshold: int,
                      gain: str = "linear") -> dict[str, dict[str, float]]:
    """Return metric -> {query_id: value} for every query of `qrels` where the metric is defined.

    Args:
        qrels: graded judgments; products not judged count as grade 0.
        ranking: retrieved products per query, best first (a query missing here retrieved nothing).
        ks: cut-offs of nDCG@k and Recall@k.
        threshold: grade at or above which a product is relevant for Recall@k, MAP and MRR.
        gain: "linear" (gain = grade) or "exponential" (2^grade - 1) for nDCG.
    """
    if gain not in ("linear", "exponential"):
        raise ValueError(f"unknown nDCG gain {gain!r}; valid: 'linear', 'exponential'")
    ranx = _ranx()
    # ranx orders by score; scores n, n-1, ... make its order exactly ours (no tie reordering).
    run_all = {q: {p: float(len(ps) - i) for i, p in enumerate(ps)} for q, ps in ranking.items()}
    out: dict[str, dict[str, float]] = {}
    ndcg = "ndcg" if gain == "linear" else "ndcg_burges"
    for level, names in ((1, [(f"ndcg@{k}", f"{ndcg}@{k}") for k in ks]),
                         (threshold, [*((f"recall@{k}", f"recall@{k}-l{threshold}") for k in ks),
                                      ("map", f"map-l{threshold}"), ("mrr", f"mrr-l{threshold}")])):
        queries = sorted(q for q, d in qrels.items() if any(g >= level for g in d.values()))
        for name, _ in names:
            out[name] = {}
        if not queries:
            continue
        q_ranx = ranx.Qrels({q: {p: int(g) for p, g in qrels[q].items()} for q in queries})
        # A query that retrieved nothing gets a dummy product no qrels mention (ranx needs one entry).
        r_ranx = ranx.Run({q: (run_all.get(q) or {"\x00none": 0.0}) for q in queries})
        wanted = [m for _, m in names]
        # ranx 0.3.21 fails on a single metric with return_mean=False (it indexes its result with the parsed
        # name): asking twice for it returns the dict form.
        scores = ranx.evaluate(q_ranx, r_ranx, wanted * 2 if len(wanted) == 1 else wanted, return_mean=False,
                               save_results_in_run=False, threads=1)
        # ranx sorts query ids internally; Run.get_query_ids gives its order.
        order = list(r_ranx.get_query_ids())
        for name, m in names:
            out[name] = {q: float(v) for q, v in zip(order, np.asarray(scores[m], dtype=float))}
    return out
