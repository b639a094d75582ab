"""The false-negative guard: drop candidate negatives that are probably unlabelled positives.

Two rules, applied in this order and counted separately (a candidate is counted under the first rule that drops it):

- `absolute`: cosine similarity to the anchor above `max_similarity` (a near-duplicate photo of another SKU);
- `relative` (positive-aware, NV-Retriever's TopK-PercPos): keep only `s_neg < s_pos - |s_pos| * margin`.
  Using `|s_pos|` keeps the rule sign-safe: with `s_pos * (1 - margin)` a negative positive score would move the
  threshold *up* and let harder negatives through (sentence-transformers #3819, fixed in #3821).
  Anchors without a known positive (`s_pos` NaN) skip this rule; the stage counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FalseNegativeGuard:
    """Thresholds of the guard; None disables a rule.

    Attributes:
        relative_margin: m in `s_neg < s_pos - |s_pos| * m`.
        max_similarity: absolute near-duplicate threshold on cosine similarity.
    """

    relative_margin: float | None = 0.05
    max_similarity: float | None = 0.95

    def __post_init__(self) -> None:
        if self.relative_margin is not None and self.relative_margin < 0:
            raise ValueError(f"relative_margin must be >= 0 or None, got {self.relative_margin!r}")

    def apply(self, s_neg: np.ndarray, s_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Judge candidates.

        Args:
            s_neg: (N, C) similarity of each anchor to its candidates (any value; NaN marks no candidate).
            s_pos: (N,) the anchor's positive similarity, NaN when it has none.

        Returns:
            (keep, dropped_absolute, dropped_relative): three (N, C) bool masks; NaN candidates are in none.
        """
        s_neg = np.asarray(s_neg, np.float64)
        s_pos = np.asarray(s_pos, np.float64)
        if s_neg.ndim != 2 or s_pos.shape != (s_neg.shape[0],):
            raise ValueError(f"s_neg must be (N, C) and s_pos (N,), got {s_neg.shape} and {s_pos.shape}")
        present = ~np.isnan(s_neg)
        absolute = np.zeros_like(present)
        if self.max_similarity is not None:
            absolute = present & (s_neg > self.max_similarity)
        relative = np.zeros_like(present)
        if self.relative_margin is not None:
            limit = s_pos - np.abs(s_pos) * self.relative_margin
            with np.errstate(invalid="ignore"):
                relative = present & ~absolute & ~np.isnan(limit)[:, None] & ~(s_neg < limit[:, None])
        keep = present & ~absolute & ~relative
        return keep, absolute, relative


def reduce_positive_scores(anchor: np.ndarray, score: np.ndarray, n: int, how: str) -> np.ndarray:
    """Reduce (anchor index, positive similarity) pairs to one s_pos per anchor.

    Args:
        anchor: (M,) anchor indices in 0..n-1.
        score: (M,) similarities.
        n: number of anchors.
        how: "min", "mean" or "max".

    Returns:
        (n,) float64; NaN for anchors with no pair.
    """
    out = np.full(n, np.nan)
    if how == "min":
        acc = np.full(n, np.inf)
        np.minimum.at(acc, anchor, score)
    elif how == "max":
        acc = np.full(n, -np.inf)
        np.maximum.at(acc, anchor, score)
    elif how == "mean":
        acc = np.bincount(anchor, weights=score, minlength=n) / np.maximum(np.bincount(anchor, minlength=n), 1)
    else:
        raise ValueError(f"unknown positive_score {how!r}; valid: min, mean, max")
    has = np.bincount(anchor, minlength=n) > 0
    out[has] = acc[has]
    return out
