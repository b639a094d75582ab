"""Confident learning: out-of-fold class probabilities from a cross-validated classifier, then cleanlab's
`find_label_issues` ranks the items whose given label the other items' model does not believe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _cleanlab():
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("label-noise detection needs cleanlab: pip install 'cleanlab>=2.9'") from exc
    return find_label_issues, get_label_quality_scores


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0,
                              max_iter: int = 500) -> np.ndarray:
    """(N, K) probabilities of each of K classes, each row predicted by a logistic regression that did not see it.

    Args:
        features: (N, D) float embeddings (standardised inside each fold).
        labels: (N,) int class ids 0..K-1; every class needs at least `folds` items.
        folds: stratified cross-validation folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (N, D) with N = len(labels) = {len(labels)}, got {features.shape}")
    counts = np.bincount(labels)
    if (counts < folds).any():
        raise ValueError(f"every class needs at least folds={folds} items; class sizes {counts.tolist()}")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=cv, method="predict_proba")


@dataclass(frozen=True)
class LabelNoise:
    """What `find_label_noise` found.

    Attributes:
        issues: (I,) indices of flagged items, most suspect first.
        label_quality: (N,) self-confidence of each item's given label (0..1; low = suspect).
        predicted: (N,) argmax of the out-of-fold probabilities.
        pred_probs: (N, K) out-of-fold probabilities.
    """

    issues: np.ndarray
    label_quality: np.ndarray
    predicted: np.ndarray
    pred_probs: np.ndarray


def find_label_noise(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0,
                     filter_by: str = "prune_by_noise_rate") -> LabelNoise:
    """Flag likely label errors among (features, labels) by confident learning, ranked by label quality."""
    find_label_issues, get_label_quality_scores = _cleanlab()
    labels = np.asarray(labels, np.int64)
    probs = out_of_fold_probabilities(features, labels, folds=folds, seed=seed)
    issues = find_label_issues(labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return LabelNoise(issues=np.asarray(issues, np.int64), label_quality=np.asarray(quality, np.float32),
                      predicted=probs.argmax(axis=1), pred_probs=probs)
