"""`visprep experiment`: one small model per data-preparation variant, evaluated on the eval judgments with CIs."""

from visprep.experiment.stage import ExperimentResult, experiment_stage
from visprep.experiment.variants import VARIANTS, Recipe, register_variant

__all__ = ["VARIANTS", "ExperimentResult", "Recipe", "experiment_stage", "register_variant"]
