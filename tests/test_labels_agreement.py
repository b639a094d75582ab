"""Aggregation and agreement on seeded synthetic raters with known true grades, plus textbook values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from visprep.labels.aggregate import aggregate_judgments, consensus_grade
from visprep.labels.agreement import (
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha_ordinal,
    leave_one_out_stats,
    reliability_matrix,
)
from visprep.labels.rubric import RUBRIC, grade_name, rubric_text
from visprep.labels.stage import agreement_table, rater_stats_table, resolve_duplicates
from visprep.schema import JUDGMENTS


def synthetic_raters(seed: int, *, n_items: int = 300, good: int = 4, noise: float = 0.15,
                     adversarial: bool = True) -> tuple[pa.Table, dict[tuple[str, str], int]]:
    """Known true grades; good raters move a grade by +-1 with probability `noise`; the adversarial one
    answers 4 - truth. Every item is graded by every rater but a random one of the good ones (so
    items have 4 or 5 raters and rater pairs overlap partly)."""
    rng = np.random.default_rng(seed)
    truth = {(f"q{i // 10}", f"p{i}"): int(rng.integers(0, 5)) for i in range(n_items)}
    raters = [f"good{r}" for r in range(good)] + (["adversary"] if adversarial else [])
    rows = []
    for (q, p), t in truth.items():
        skip = f"good{rng.integers(0, good)}" if rng.random() < 0.5 else None
        for r in (r for r in raters if r != skip):
            if r == "adversary":
                g = 4 - t
            else:
                g = int(np.clip(t + (rng.random() < noise) * rng.choice([-1, 1]), 0, 4))
            rows.append({"query_id": q, "product_id": p, "rater_id": str(r), "grade": g,
                         "batch": "b1" if int(p[1:]) % 2 else "b2"})
    return pa.Table.from_pylist(rows, schema=JUDGMENTS), truth


def test_rubric_is_defined_once_with_names() -> None:
    assert [g.value for g in RUBRIC] == [0, 1, 2, 3, 4]
    assert grade_name(4) == "Exact" and grade_name(0) == "Irrelevant"
    assert rubric_text().splitlines()[0].startswith("4 Exact")
    with pytest.raises(ValueError, match="outside the rubric"):
        grade_name(5)


@pytest.mark.parametrize("grades,method,expected", [
    ([1, 2, 3, 4], "median", 2),  # lower median on an even count
    ([4, 4, 0], "median", 4),
    ([0, 0, 4, 4, 3], "majority", 4),  # tie 0/4: nearest the mean 2.2 is 4? |4-2.2|=1.8 < 2.2
    ([1, 1, 3, 3], "majority", 1),  # tie at equal distance from the mean 2: the lower
    ([2], "majority", 2),
])
def test_consensus_tie_rules(grades: list[int], method: str, expected: int) -> None:
    assert consensus_grade(grades, method=method) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["median", "majority"])
def test_aggregation_recovers_truth_and_agreement_finds_the_adversary(seed: int, method: str) -> None:
    judgments, truth = synthetic_raters(seed)
    qrels = aggregate_judgments(judgments, method=method, relabel_spread=2)
    got = {(q, p): g for q, p, g in zip(*(qrels.column(c).to_pylist() for c in ("query_id", "product_id", "grade")))}
    assert set(got) == set(truth)
    accuracy = np.mean([got[k] == truth[k] for k in truth])
    assert accuracy >= 0.9, accuracy
    single = {}
    for r in judgments.to_pylist():
        single.setdefault(r["rater_id"], []).append(r["grade"] == truth[(r["query_id"], r["product_id"])])
    assert accuracy > max(np.mean(v) for v in single.values())  # better than any one rater
    assert 0 in got.values()  # grade-0 (Irrelevant) pairs are kept: ranx would drop them

    stats = {r["rater_id"]: r for r in rater_stats_table(judgments, method=method, suspect_kappa=0.2).to_pylist()}
    assert stats["adversary"]["suspect"] and stats["adversary"]["kappa_quadratic"] < 0
    assert all(not s["suspect"] and s["kappa_quadratic"] > 0.7 for r, s in stats.items() if r != "adversary")
    assert abs(stats["adversary"]["bias"]) < 0.5  # 4 - t is unbiased on uniform grades, yet wrong

    # Alpha is high for the honest raters and drops when the adversary joins.
    honest = judgments.filter(pa.compute.not_equal(judgments["rater_id"], "adversary"))
    a_all = agreement_table(judgments, relabel_spread=2).to_pylist()
    a_honest = agreement_table(honest, relabel_spread=2).to_pylist()
    assert [r["batch"] for r in a_all] == ["b1", "b2", "*"]
    assert a_honest[-1]["alpha_ordinal"] > 0.8 > a_all[-1]["alpha_ordinal"] + 0.2
    assert a_all[-1]["relabel_items"] > a_honest[-1]["relabel_items"]


def test_leave_one_out_biased_rater() -> None:
    judgments, _ = synthetic_raters(5, adversarial=False)
    rows = judgments.to_pylist()
    for r in rows:
        if r["rater_id"] == "good0":
            r["grade"] = min(4, r["grade"] + 1)
    m, raters, _ = reliability_matrix(*zip(*((r["rater_id"], (r["query_id"], r["product_id"]), r["grade"])
                                              for r in rows)))
    stats = dict(zip(raters, leave_one_out_stats(m)))
    assert stats["good0"]["bias"] > 0.5 and all(abs(stats[r]["bias"]) < 0.2 for r in raters if r != "good0")


def test_fleiss_kappa_wikipedia_example() -> None:
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    m = np.array([[g for g, n in enumerate(row) for _ in range(n)] for row in counts], dtype=float).T
    assert fleiss_kappa(m) == pytest.approx(0.20993, abs=1e-4)


def test_cohen_kappa_wikipedia_example_and_perfect() -> None:
    a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], weights="quadratic") == pytest.approx(1.0)
    assert cohen_kappa([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], weights="quadratic") == pytest.approx(-1.0)
    assert np.isnan(krippendorff_alpha_ordinal(np.array([[1.0, 1.0], [1.0, 1.0]])))


def test_duplicate_policies() -> None:
    rows = [{"query_id": "q", "product_id": "p", "rater_id": "r", "grade": 3, "ts": None},
            {"query_id": "q", "product_id": "p", "rater_id": "r", "grade": 3, "ts": None},
            {"query_id": "q", "product_id": "p2", "rater_id": "r", "grade": 1, "ts": None},
            {"query_id": "q", "product_id": "p2", "rater_id": "r", "grade": 4, "ts": None}]
    kept, refused, identical = resolve_duplicates(rows, on_conflict="quarantine")
    assert identical == 1 and [r["product_id"] for r in kept] == ["p"] and len(refused) == 2
    kept, refused, _ = resolve_duplicates(rows, on_conflict="latest")
    assert not refused and [(r["product_id"], r["grade"]) for r in kept] == [("p", 3), ("p2", 4)]
