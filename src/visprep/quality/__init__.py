"""Data quality: label noise by confident learning (cleanlab) on embeddings, and the policy for flagged products."""

from visprep.quality.label_noise import LabelNoise, find_label_noise, out_of_fold_probabilities
from visprep.quality.policy import POLICIES, apply_policy

__all__ = ["POLICIES", "LabelNoise", "apply_policy", "find_label_noise", "out_of_fold_probabilities"]
