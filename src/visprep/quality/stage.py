"""The quality stage: label issues of the products' categories from embeddings, written to `label_issues` only.

The stage is the one writer of `label_issues`; the pairs stage (and the user-photo mix) apply `quality.policy` to
the pairs of flagged products when they write their own tables, so a policy is applied once, to fresh pairs. In
`visprep run` it comes before pairs: new flags make pairs stale through its recorded `label_issues` input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from visprep.quality.label_noise import find_label_noise
from visprep.schema import LABEL_ISSUES
from visprep.stages import StageOutput
from visprep.workspace import RunRecord, Workspace, files_fingerprint


@dataclass
class QualityResult:
    """Counts of one quality run."""

    checked: int = 0
    flagged: int = 0
    policy: str = ""
    embeddings: str = ""
    run_id: str = ""
    skipped: str = ""  # why nothing was checked (on_too_few_labels="skip"), else ""


def embed_model_store(ws: Workspace) -> Path | None:
    """The vectors of the configured `[embed]` model (`features/<model_id>/parts/`), or None when the embed stage
    has not written them (or the embedder cannot tell its id here)."""
    from visprep.views.features import embed_model_id, store_dir

    model_id = embed_model_id(ws)
    if model_id is None:  # no embedder, no store of it to read
        return None
    parts = store_dir(ws, model_id) / "parts"
    return parts if parts.is_dir() and any(parts.glob("*.parquet")) else None


def default_embeddings(ws: Workspace) -> Path:
    """The embeddings `visprep quality` reads without --embeddings or `quality.embeddings`: the `[embed]` model's
    feature store, else the Parquet parts of the newest model folder (`features/<model_id>/parts/`)."""
    from visprep.views.features import features_root

    own = embed_model_store(ws)
    if own is not None:
        return own
    root = features_root(ws)
    models = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not models:
        raise FileNotFoundError(f"no embeddings: pass --embeddings, set quality.embeddings, or run `visprep embed` "
                                f"(nothing in {root})")
    # The store keeps its vectors in parts/ beside its index; read_embeddings reads Parquet files, not the index.
    return models[-1] / "parts" if (models[-1] / "parts").is_dir() else models[-1]


def pipeline_embeddings(ws: Workspace) -> Path | None:
    """What `visprep run` checks labels with: `quality.embeddings`, else the `[embed]` model's feature store; None
    when neither is there (then the stage does not apply)."""
    cfg = ws.config.quality
    return Path(cfg.embeddings) if cfg.embeddings else embed_model_store(ws)


def source_fingerprint(source: Path | None) -> str:
    """A cheap fingerprint of an embeddings file or folder (its path, and its Parquet files' names, sizes, mtimes)."""
    if source is None:
        return "none"
    source = Path(source).expanduser().resolve()
    if source.is_file():
        return f"{source}:{files_fingerprint([source])}"
    parts = sorted(source.rglob("*.parquet")) if source.is_dir() else []
    return f"{source}:{files_fingerprint(parts, relative_to=source)}"


def quality_applies(ws: Workspace) -> bool:
    """Whether `visprep run` has labels to check: products and embeddings (`quality.embeddings`, or the feature
    store of the `[embed]` model), and cleanlab installed (the `quality` extra; a minimal install runs without
    label-noise checks, and the run's summary says "nothing to do" for the stage)."""
    import importlib.util

    return (ws.has_table("products") and (bool(ws.config.quality.embeddings) or embed_model_store(ws) is not None)
            and importlib.util.find_spec("cleanlab") is not None)


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


def quality_stage(ws: Workspace, *, embeddings: str | Path | None = None,
                  on_too_few_labels: Literal["raise", "skip"] = "raise") -> QualityResult:
    """Write `label_issues` (flagged products, most suspect first, with the `quality.policy` the pairs stage and
    the mix apply to their pairs).

    Args:
        ws: the workspace (reads products and the embeddings; writes label_issues).
        embeddings: (id, vector) Parquet file or folder; default `quality.embeddings`, else `default_embeddings`.
        on_too_few_labels: fewer than 2 labels with enough embedded products: "raise" a ValueError, or "skip"
            (the pipeline): write an empty `label_issues` and say why in the run.

    Raises:
        FileNotFoundError: no embeddings, or the given path does not exist.
        ValueError: too few labels (with "raise").
    """
    if on_too_few_labels not in ("raise", "skip"):
        raise ValueError(f"on_too_few_labels must be 'raise' or 'skip', got {on_too_few_labels!r}")
    cfg = ws.config.quality
    source = Path(embeddings or cfg.embeddings or default_embeddings(ws))
    if not source.exists():
        raise FileNotFoundError(f"quality embeddings {source} do not exist (--embeddings or quality.embeddings)")
    from visprep.pipeline import execute

    return execute(ws, "quality", lambda ws, run: compute_quality(ws, run, source, on_too_few_labels))


def compute_quality(ws: Workspace, run: RunRecord, source: Path,
                    on_too_few_labels: Literal["raise", "skip"]) -> StageOutput:
    """The quality stage's computation: the flagged products of the embeddings at `source` (`label_issues`)."""
    from visprep.evaluate.embeddings import read_embeddings

    cfg = ws.config.quality
    res = QualityResult(policy=cfg.policy, embeddings=str(source), run_id=run.run_id)
    notes = [f"embeddings: {source}"]
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
    flagged: list[str] = []
    table = LABEL_ISSUES.empty_table()
    if len(classes) < 2:
        why = (f"quality needs at least 2 {cfg.label_column} labels with >= {max(cfg.min_class_size, cfg.folds)} "
               f"embedded products; found {dict(zip(names.tolist(), counts.tolist()))}")
        if on_too_few_labels == "raise":
            raise ValueError(why)
        res.skipped = why
        notes.append(f"not checked: {why}")
        use = []
    else:
        code = {c: k for k, c in enumerate(classes)}
        labels = np.asarray([code[given[k]] for k in use], np.int64)
        noise = find_label_noise(mat[use], labels, folds=cfg.folds, seed=cfg.seed, filter_by=cfg.filter_by)
        issues = noise.issues.tolist()
        flagged = [pids[use[k]] for k in issues]
        table = pa.table({
            "product_id": pa.array(flagged, pa.string()),
            "given_label": pa.array([given[use[k]] for k in issues], pa.string()),
            "predicted_label": pa.array([classes[noise.predicted[k]] for k in issues], pa.string()),
            "label_quality": pa.array(noise.label_quality[noise.issues], pa.float32()),
            "rank": pa.array(np.arange(1, len(flagged) + 1, dtype=np.int32)),
            "action": pa.array([cfg.policy] * len(flagged), pa.string()),
            "run_id": pa.array([run.run_id] * len(flagged), pa.string()),
        }, schema=LABEL_ISSUES)
    run.inputs = {"embeddings": str(source)}  # which file or store; its fingerprint is in the declared reads
    res.checked, res.flagged = len(use), len(flagged)
    # Unchanged flags leave the table (and so the pairs that read it) as they are (the runner compares): a rerun
    # for new embeddings of user photos (shift) must not make pairs stale.
    return StageOutput(tables={"label_issues": table}, result=res, notes=notes,
                       counts={"embedded_products": len(pids), "checked": res.checked, "flagged": res.flagged})
