"""The demo's eval set and evaluation: demo judgments → labels → pixel-baseline embeddings → metrics.

The embeddings are downsampled pixels (`visprep.evaluate.pixels`), not a trained model; the printed results say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from visprep.evaluate.embeddings import features_path, write_embeddings
from visprep.evaluate.pixels import pixel_embeddings, workspace_images
from visprep.evaluate.stage import EvaluateResult, evaluate_stage
from visprep.labels.demo import build_demo_judgments
from visprep.labels.stage import LabelsResult, labels_stage
from visprep.workspace import Workspace

BASELINE_NOTE = ("embeddings are DOWNSAMPLED PIXELS (a baseline with no training), not a trained model: "
                 "these numbers only show the evaluation path working")


@dataclass
class DemoEvaluation:
    """What `run_demo_evaluation` did: the labels import and two pixel baselines, the finer one compared."""

    labels: LabelsResult
    coarse: EvaluateResult
    fine: EvaluateResult
    note: str = BASELINE_NOTE


def run_demo_evaluation(ws: Workspace, *, seed: int = 0, n_queries: int = 40) -> DemoEvaluation:
    """Build demo judgments, import them, embed with 4×4 and 8×8 pixel baselines and evaluate both (8×8 against
    4×4 with the paired test). Call after the pipeline ran (it needs fetched, inspected images and splits)."""
    path = build_demo_judgments(ws, seed=seed, n_queries=n_queries)
    labels = labels_stage(ws, [path])
    embedded = pixel_embeddings(ws, workspace_images(ws), sizes=(4, 8))
    results: list[EvaluateResult] = []
    for size, (ids, vectors) in embedded.items():
        model = f"pixels-{size}x{size}"
        out = write_embeddings(features_path(ws.root, model) / "embeddings.parquet", ids, vectors, model=model)
        results.append(evaluate_stage(ws, model=model, embeddings=out,
                                      baseline=results[0].model if results else None))
    return DemoEvaluation(labels=labels, coarse=results[0], fine=results[1])
