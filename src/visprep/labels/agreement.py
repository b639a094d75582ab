"""Inter-rater agreement on the ordinal 0–4 scale: Krippendorff's alpha, Fleiss' and Cohen's kappa, per-rater quality.

All functions take plain arrays: a reliability matrix is (n_raters, n_items) float with NaN where a rater did not
grade an item.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from visprep.labels.aggregate import consensus_grade
from visprep.labels.rubric import MAX_GRADE, MIN_GRADE

N_GRADES = MAX_GRADE - MIN_GRADE + 1


def reliability_matrix(rater_ids: Sequence[str], item_keys: Sequence[object], grades: Sequence[int]
                       ) -> tuple[np.ndarray, list[str], list[object]]:
    """Build the (n_raters, n_items) matrix, NaN where missing; returns (matrix, raters, items), both sorted."""
    raters = sorted(set(rater_ids))
    items = sorted(set(item_keys), key=str)
    r_ix = {r: i for i, r in enumerate(raters)}
    i_ix = {k: i for i, k in enumerate(items)}
    m = np.full((len(raters), len(items)), np.nan)
    for r, k, g in zip(rater_ids, item_keys, grades):
        m[r_ix[r], i_ix[k]] = g
    return m, raters, items


def krippendorff_alpha_ordinal(matrix: np.ndarray) -> float:
    """Krippendorff's alpha with the ordinal metric over grades 0–4 (NaN when undefined, e.g. one value only)."""
    try:
        import krippendorff
    except ImportError as exc:  # pragma: no cover - dependency of visprep
        raise ImportError("Krippendorff's alpha needs the 'krippendorff' package: pip install krippendorff") from exc
    pairable = (~np.isnan(matrix)).sum(axis=0) >= 2
    m = matrix[:, pairable]
    if m.shape[1] == 0 or len(np.unique(m[~np.isnan(m)])) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=m, level_of_measurement="ordinal",
                                    value_domain=list(range(MIN_GRADE, MAX_GRADE + 1))))


def fleiss_kappa(matrix: np.ndarray) -> float:
    """Fleiss' kappa, generalised to items graded by a varying number (>= 2) of raters.

    P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)); P_e = sum_j p_j^2 with p_j the share of all ratings in grade j.
    """
    counts = np.stack([(matrix == g).sum(axis=0) for g in range(MIN_GRADE, MAX_GRADE + 1)], axis=1).astype(float)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if len(n_i) == 0:
        return float("nan")
    p_i = (counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0:
        return float("nan")
    return float((p_i.mean() - p_e) / (1 - p_e))


def cohen_kappa(a: Sequence[int], b: Sequence[int], *, weights: str | None = None) -> float:
    """Cohen's kappa of two raters over the same items; `weights` None (unweighted) or "quadratic" (ordinal)."""
    a = np.asarray(a, dtype=np.int64) - MIN_GRADE
    b = np.asarray(b, dtype=np.int64) - MIN_GRADE
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs equal-length grade lists, got {len(a)} and {len(b)}")
    if len(a) == 0:
        return float("nan")
    obs = np.zeros((N_GRADES, N_GRADES))
    np.add.at(obs, (a, b), 1)
    obs /= obs.sum()
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((N_GRADES, N_GRADES))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "quadratic":
        w = ((i - j) / (N_GRADES - 1)) ** 2
    else:
        raise ValueError(f"unknown kappa weights {weights!r}; valid: None, 'quadratic'")
    denom = (w * exp).sum()
    if denom == 0:
        return float("nan")
    return float(1 - (w * obs).sum() / denom)


def mean_pairwise_cohen(matrix: np.ndarray, *, weights: str | None = None, min_overlap: int = 2) -> float:
    """Mean Cohen's kappa over rater pairs sharing at least `min_overlap` items (NaN kappas skipped)."""
    values = []
    for r1, r2 in combinations(range(matrix.shape[0]), 2):
        both = ~np.isnan(matrix[r1]) & ~np.isnan(matrix[r2])
        if both.sum() >= min_overlap:
            k = cohen_kappa(matrix[r1, both], matrix[r2, both], weights=weights)
            if not np.isnan(k):
                values.append(k)
    return float(np.mean(values)) if values else float("nan")


def leave_one_out_stats(matrix: np.ndarray, *, method: str = "median", min_others: int = 2
                        ) -> list[dict[str, float]]:
    """Per rater (rows of `matrix`): compare each grade with the consensus of the OTHER raters of that item.

    Leaving the rater out keeps a bad rater from pulling the reference toward themself. Items with fewer than
    `min_others` other raters are not compared. Returns one dict per rater: n_compared, exact_agreement,
    mean_abs_error, bias (mean signed difference), kappa_quadratic.
    """
    out = []
    for r in range(matrix.shape[0]):
        mine, ref = [], []
        for item in np.flatnonzero(~np.isnan(matrix[r])):
            others = np.delete(matrix[:, item], r)
            others = others[~np.isnan(others)]
            if len(others) >= min_others:
                mine.append(int(matrix[r, item]))
                ref.append(consensus_grade(others.astype(int), method=method))
        if not mine:
            out.append({"n_compared": 0, "exact_agreement": float("nan"), "mean_abs_error": float("nan"),
                        "bias": float("nan"), "kappa_quadratic": float("nan")})
            continue
        d = np.asarray(mine) - np.asarray(ref)
        out.append({"n_compared": len(mine), "exact_agreement": float((d == 0).mean()),
                    "mean_abs_error": float(np.abs(d).mean()), "bias": float(d.mean()),
                    "kappa_quadratic": cohen_kappa(mine, ref, weights="quadratic")})
    return out
