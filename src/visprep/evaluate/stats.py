"""Uncertainty of a mean over queries: bootstrap confidence intervals and a paired test between two runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def bootstrap_ci(values: np.ndarray, *, resamples: int = 1000, confidence: float = 0.95,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one per query), resampling queries.

    Returns (nan, nan) for an empty array or `resamples == 0`.
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or resamples == 0:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedComparison:
    """Run B minus run A on the queries both scored: mean difference, its CI, and two p-values."""

    metric: str
    n_queries: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_randomization: float  # two-sided paired sign-flip test
    p_ttest: float  # two-sided paired t-test
    wins: int  # queries where B > A
    losses: int


def paired_test(a: Mapping[str, float], b: Mapping[str, float], *, metric: str = "", permutations: int = 10_000,
                resamples: int = 1000, confidence: float = 0.95, rng: np.random.Generator) -> PairedComparison:
    """Compare per-query scores of two runs on their common queries.

    The randomisation test flips the sign of each query's difference at random (H0: the runs are exchangeable per
    query) and counts means at least as extreme as the observed one (with the +1 correction).
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"{metric or 'metric'}: the two runs share no scored query")
    va = np.array([a[q] for q in common])
    vb = np.array([b[q] for q in common])
    d = vb - va
    observed = abs(d.mean())
    signs = rng.choice([-1.0, 1.0], size=(permutations, len(d)))
    extreme = int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    p_rand = (extreme + 1) / (permutations + 1)
    if len(d) > 1 and d.std(ddof=1) > 0:
        from scipy import stats

        p_t = float(stats.ttest_rel(vb, va).pvalue)
    else:
        p_t = 1.0 if observed == 0 else 0.0
    lo, hi = bootstrap_ci(d, resamples=resamples, confidence=confidence, rng=rng)
    return PairedComparison(metric=metric, n_queries=len(d), mean_a=float(va.mean()), mean_b=float(vb.mean()),
                            diff=float(d.mean()), ci_low=lo, ci_high=hi, p_randomization=float(p_rand),
                            p_ttest=p_t, wins=int((d > 0).sum()), losses=int((d < 0).sum()))
