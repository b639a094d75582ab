"""The mine stage: run the miners `mining.kinds` names (`visprep.mining.miners.MINERS`) per split and write each
kind as its own part of `negatives`.

Reads the item pool (`visprep.views.items.load_items`: usable images, products, groups, known positive pairs) and
whatever each miner reads besides (the feature store for `ann`, `interaction_pairs` for `skip_above`). Every drop
of every rule is counted in the run record (`counts`, prefixed by kind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visprep.mining.miners import MINERS, Miner, MiningContext
from visprep.mining.positives import build_positive_sets
from visprep.stages import StageOutput
from visprep.views.items import load_items
from visprep.workspace import RunRecord, Workspace


def mine_stage(ws: Workspace, *, feature_model: str | None = None) -> dict[str, int]:
    """Mine the configured kinds of negatives; return the run's counts (also in the run record).

    Args:
        ws: the workspace.
        feature_model: model id of the feature store for `ann` (default: mining.model, else the embed model).
    """
    cfg = ws.config.mining
    unknown = [k for k in cfg.kinds if k not in MINERS]
    if unknown:  # the config checks this when loaded; a miner can be unregistered since
        raise ValueError(f"mining.kinds: no registered miner {', '.join(map(repr, unknown))}")
    miners = [m for m in MINERS.values() if m.name in cfg.kinds]
    from visprep.pipeline import execute

    return execute(ws, "mine", lambda ws, run: compute_negatives(ws, run, miners, feature_model))


def compute_negatives(ws: Workspace, run: RunRecord, miners: list[Miner], feature_model: str | None) -> StageOutput:
    """The mine stage's computation: each miner's part of `negatives` (a miner that could not run leaves its part as
    it was), and the counts per miner."""
    cfg = ws.config.mining
    counts: dict[str, int] = {}
    for miner in miners:  # what a miner reads beyond the declared reads (e.g. the vectors of --model)
        run.inputs.update(miner.inputs(ws, feature_model))
    items = load_items(ws)
    counts["items"] = len(items)
    splits = sorted(set(items.split.tolist())) if cfg.same_split else [None]
    pools = [np.flatnonzero(items.split == s) if s is not None else np.arange(len(items)) for s in splits]
    ctx = MiningContext(ws=ws, items=items, positives=build_positive_sets(items.group, items.product,
                                                                          items.positive_pairs),
                        pools=pools, splits=splits, rng=np.random.default_rng(cfg.seed), feature_model=feature_model)
    results = {}
    notes: list[str] = []
    for miner in miners:
        result = miner.mine(ctx)
        for name, v in result.counts.items():
            counts[f"{miner.name}.{name}"] = int(v)
        notes.extend(result.notes)
        results[miner.name] = result
    parts = {}
    for kind in dict.fromkeys(cfg.kinds):
        if results[kind].write:
            parts[kind] = results[kind].rows
            counts[f"{kind}.rows"] = results[kind].rows.num_rows
    return StageOutput(parts={"negatives": parts}, counts=counts, notes=notes, result=counts)


def ann_model_id(ws: Workspace, feature_model: str | None = None) -> str:
    """Model id of the feature store that `ann` reads: the argument, else mining.model, else the embed model's."""
    from visprep.embed.registry import model_id_of

    ecfg = ws.config.embed
    return feature_model or ws.config.mining.model or model_id_of(ecfg.model, **ecfg.options)


def features_fingerprint(ws: Workspace, feature_model: str | None = None) -> str:
    """A cheap fingerprint of the feature store `ann` reads (its part files), for the run's freshness key."""
    from visprep.views.features import store_dir, store_fingerprint

    try:
        path = store_dir(ws, ann_model_id(ws, feature_model))
    except (ImportError, ValueError, OSError) as exc:  # no id without the embedder: the mine itself reports it
        return f"unavailable: {type(exc).__name__}"
    return store_fingerprint(path)


def ann_params(ws: Workspace, model_id: str) -> dict[str, Any]:
    """The parameters an ANN mine depends on (a change forces a full re-mine)."""
    cfg = ws.config.mining
    return {"model_id": model_id, "k": cfg.ann_per_anchor, "skip_top": cfg.skip_top, "band_max": cfg.band_max,
            "relative_margin": cfg.relative_margin, "max_similarity": cfg.max_similarity,
            "positive_score": cfg.positive_score, "overfetch_margin": cfg.overfetch_margin, "search": cfg.search,
            "ivf_nlist": cfg.ivf_nlist, "ivf_nprobe": cfg.ivf_nprobe, "hnsw_m": cfg.hnsw_m,
            "hnsw_ef_search": cfg.hnsw_ef_search, "seed": cfg.seed}


def ann_state_path(ws: Workspace, model_id: str, split: str | None) -> Path:
    """Where the last ANN mine of one pool keeps its state (beside the feature store it read)."""
    from visprep.views.features import store_dir

    name = "all" if split is None else "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
    return store_dir(ws, model_id) / "ann-state" / f"{name}.npz"
