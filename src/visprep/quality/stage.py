"""The quality stage: label issues of the products' categories from embeddings, and the policy applied to pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from visprep.config import section_params
from visprep.quality.label_noise import find_label_noise
from visprep.quality.policy import apply_policy
from visprep.schema import LABEL_ISSUES
from visprep.workspace import Workspace


@dataclass
class QualityResult:
    """Counts of one quality run."""

    checked: int = 0
    flagged: int = 0
    policy: str = ""
    pairs_affected: int = 0
    embeddings: str = ""
    run_id: str = ""


def default_embeddings(ws: Workspace) -> Path:
    """The Parquet parts of the feature store's newest model folder (`features/<model_id>/parts/`)."""
    root = ws.root / "features"
    models = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not models:
        raise FileNotFoundError(f"no embeddings: pass --embeddings, set quality.embeddings, or run `visprep embed` "
                                f"(nothing in {root})")
    # The store keeps its vectors in parts/ beside its index; read_embeddings reads Parquet files, not the index.
    return models[-1] / "parts" if (models[-1] / "parts").is_dir() else models[-1]


def product_vectors(ws: Workspace, ids: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-product vectors: rows already keyed by product id are used as they are; rows keyed by image id are
    averaged over each product's images (and re-normalised)."""
    products = set(ws.read_table("products", ["product_id"]).column("product_id").to_pylist())
    if ids and sum(i in products for i in ids) >= len(ids) / 2:
        keep = [k for k, i in enumerate(ids) if i in products]
        return [ids[k] for k in keep], vectors[keep]
    from visprep.dedup.stage import hashed_images

    rows = hashed_images(ws)
    pos = {i: k for k, i in enumerate(ids)}
    sums: dict[str, np.ndarray] = {}
    for p, i in zip(rows.column("product_id").to_pylist(), rows.column("image_id").to_pylist()):
        if i in pos:
            sums[p] = sums.get(p, 0) + vectors[pos[i]]
    pids = sorted(sums)
    mat = np.stack([sums[p] for p in pids]) if pids else np.empty((0, vectors.shape[1]), np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return pids, (mat / np.where(norms > 0, norms, 1)).astype(np.float32)


def quality_stage(ws: Workspace, *, embeddings: str | Path | None = None) -> QualityResult:
    """Write `label_issues` (flagged products, most suspect first) and apply `quality.policy` to `pairs`."""
    from visprep.evaluate.embeddings import read_embeddings

    cfg = ws.config.quality
    source = Path(embeddings or cfg.embeddings or default_embeddings(ws))
    res = QualityResult(policy=cfg.policy, embeddings=str(source))
    with ws.run("quality", {**section_params(ws.config, "quality"), "embeddings_path": str(source)}) as run:
        res.run_id = run.run_id
        run.inputs = {"products": ws.table_fingerprint("products"), "pairs": ws.table_fingerprint("pairs")}
        ids, vectors = read_embeddings(source)
        pids, mat = product_vectors(ws, ids, vectors)
        products = ws.read_table("products", ["product_id", cfg.label_column])
        label_of = dict(zip(products.column("product_id").to_pylist(), products.column(cfg.label_column).to_pylist()))
        given = [label_of.get(p) for p in pids]
        names, counts = np.unique(np.asarray([g for g in given if g is not None], dtype=object).astype(str),
                                  return_counts=True)
        big = set(names[counts >= max(cfg.min_class_size, cfg.folds)].tolist())
        use = [k for k, g in enumerate(given) if g in big]
        classes = sorted(big)
        if len(classes) < 2:
            raise ValueError(f"quality needs at least 2 {cfg.label_column} labels with >= {cfg.min_class_size} "
                             f"embedded products; found {dict(zip(names.tolist(), counts.tolist()))}")
        code = {c: k for k, c in enumerate(classes)}
        labels = np.asarray([code[given[k]] for k in use], np.int64)
        noise = find_label_noise(mat[use], labels, folds=cfg.folds, seed=cfg.seed, filter_by=cfg.filter_by)
        flagged = [pids[use[k]] for k in noise.issues.tolist()]
        table = pa.table({
            "product_id": pa.array(flagged, pa.string()),
            "given_label": pa.array([given[use[k]] for k in noise.issues.tolist()], pa.string()),
            "predicted_label": pa.array([classes[noise.predicted[k]] for k in noise.issues.tolist()], pa.string()),
            "label_quality": pa.array(noise.label_quality[noise.issues], pa.float32()),
            "rank": pa.array(np.arange(1, len(flagged) + 1, dtype=np.int32)),
            "action": pa.array([cfg.policy] * len(flagged), pa.string()),
            "run_id": pa.array([run.run_id] * len(flagged), pa.string()),
        }, schema=LABEL_ISSUES)
        ws.write_table("label_issues", table)
        if ws.has_table("pairs"):
            pairs, touched = apply_policy(ws.read_table("pairs"), flagged, policy=cfg.policy,
                                          down_weight=cfg.down_weight)
            if cfg.policy != "keep":
                ws.write_table("pairs", pairs)
            res.pairs_affected = touched
        if ws.has_table("user_pairs"):
            from visprep.quality.mix import mix_stage

            # The mix applies the policy to its own rows when it builds them: rebuild them under the new flags
            # (applying the policy on top of the old rows would down-weight a product flagged twice twice).
            res.pairs_affected += mix_stage(ws)["policy_touched"]
        res.checked, res.flagged = len(use), len(flagged)
        run.counts = {"embedded_products": len(pids), "checked": res.checked, "flagged": res.flagged,
                      "pairs_affected": res.pairs_affected}
    return res
