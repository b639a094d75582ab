"""Multi-rater aggregation: one consensus grade per (query, product), its spread and a re-labelling flag."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from visprep.labels.rubric import grade_name
from visprep.schema import EVAL_QRELS

AGGREGATORS = ("median", "majority")


def consensus_grade(grades: Sequence[int], *, method: str = "median") -> int:
    """Return the consensus of one item's grades.

    Args:
        grades: the raters' grades (0–4), at least one.
        method: "median": the lower median when the count is even (a pair needs a majority of raters at or above
            a grade to reach it, so ties never round up); "majority": the most frequent grade, ties going to the
            tied grade nearest the mean grade, then to the lower one.
    """
    if len(grades) == 0:
        raise ValueError("consensus_grade needs at least one grade")
    g = np.sort(np.asarray(grades, dtype=np.int64))
    if method == "median":
        return int(g[(len(g) - 1) // 2])
    if method == "majority":
        values, counts = np.unique(g, return_counts=True)
        tied = values[counts == counts.max()]
        mean = g.mean()
        return int(min(tied, key=lambda v: (abs(v - mean), v)))
    raise ValueError(f"unknown aggregation method {method!r}; valid: {', '.join(AGGREGATORS)}")


def group_grades(query_ids: Sequence[str], product_ids: Sequence[str], grades: Sequence[int]
                 ) -> dict[tuple[str, str], list[int]]:
    """Group grades by (query_id, product_id), keeping input order inside a group."""
    out: dict[tuple[str, str], list[int]] = {}
    for q, p, g in zip(query_ids, product_ids, grades):
        out.setdefault((q, p), []).append(int(g))
    return out


def aggregate_judgments(judgments: pa.Table, *, method: str = "median", relabel_spread: int = 2) -> pa.Table:
    """Aggregate raw judgments (query_id, product_id, rater_id, grade) into `eval_qrels` rows.

    Every judged pair is kept, grade-0 pairs included (ranx drops them; exports and counts must not).
    """
    groups = group_grades(*(judgments.column(c).to_pylist() for c in ("query_id", "product_id", "grade")))
    rows = []
    for (q, p), gs in sorted(groups.items()):
        c = consensus_grade(gs, method=method)
        spread = max(gs) - min(gs)
        rows.append({"query_id": q, "product_id": p, "grade": c, "grade_name": grade_name(c), "method": method,
                     "n_raters": len(gs), "mean_grade": float(np.mean(gs)), "spread": spread,
                     "relabel": spread >= relabel_spread, "grades": sorted(gs)})
    return pa.Table.from_pylist(rows, schema=EVAL_QRELS)
