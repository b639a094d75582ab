"""Data quality: label noise by confident learning (cleanlab) on embeddings and the policy for flagged products;
popularity re-sampling weights and logQ; catalog-vs-user-photo shift and the user-photo mix; stale embeddings and
class balance for `visprep status`."""

from visprep.quality.imbalance import category_balance, stratified_shares
from visprep.quality.label_noise import LabelNoise, find_label_noise, out_of_fold_probabilities
from visprep.quality.policy import POLICIES, apply_policy
from visprep.quality.popularity import popularity_stage, resampling_weights
from visprep.quality.report import quality_status
from visprep.quality.shift import shift_report, shift_stage
from visprep.quality.staleness import stale_embeddings

__all__ = ["POLICIES", "LabelNoise", "apply_policy", "category_balance", "find_label_noise",
           "out_of_fold_probabilities", "popularity_stage", "quality_status", "resampling_weights", "shift_report",
           "shift_stage", "stale_embeddings", "stratified_shares"]
