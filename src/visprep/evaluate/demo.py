"""The demo's eval set and a real model: demo judgments -> labels -> frozen EfficientNet-Lite0 against a projection
head trained on visprep's data (`visprep experiment` with a reduced variant set)."""

from __future__ import annotations

from dataclasses import dataclass

from visprep.experiment.stage import ExperimentResult, experiment_stage
from visprep.labels.demo import build_demo_judgments
from visprep.labels.stage import LabelsResult, labels_stage
from visprep.workspace import Workspace

DEMO_VARIANTS = ["in_batch", "ann_hard+guard"]
"""What the demo trains besides `frozen`: in-batch negatives, and the default mining (ANN hard negatives behind
the false-negative guard). `visprep experiment` runs the full set."""


@dataclass
class DemoEvaluation:
    """What `run_demo_evaluation` did: the labels import and the experiment."""

    labels: LabelsResult
    experiment: ExperimentResult


def run_demo_evaluation(ws: Workspace, *, seed: int = 0, n_queries: int = 200, seeds: int = 1,
                        steps: int | None = None) -> DemoEvaluation:
    """Build demo judgments, import them, bring the stages up to date with them, and run the experiment's reduced
    variant set (frozen backbone, in-batch head, default-mining head). Call after the pipeline ran."""
    from visprep.pipeline import run_pipeline

    path = build_demo_judgments(ws, seed=seed, n_queries=n_queries)
    labels = labels_stage(ws, [path])
    # The split pins products judged relevant for an eval query to the eval split (rater noise can lift a product
    # outside the query's family); the experiment refuses a leaking workspace, so the stages catch up first.
    run_pipeline(ws)
    return DemoEvaluation(labels=labels, experiment=experiment_stage(ws, variants=DEMO_VARIANTS, seeds=seeds,
                                                                     steps=steps))
