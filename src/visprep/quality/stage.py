"""The quality stage: label issues of the products' categories from embeddings, and the policy applied to pairs.

In `visprep run` it comes after pairs (it reads pairs and rewrites them under a policy other than keep), and its
run record names `pairs` as an input, with the fingerprint pairs has once the policy is applied: a pairs rerun
writes new pairs, which makes quality stale, so the policy is applied again to the new pairs instead of being lost.
When quality reruns on pairs that hold its own earlier output (new embeddings, a config change), it first has the
pairs stage write them afresh, so a policy is never applied on top of itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    pairs_rebuilt: bool = False  # pairs held this stage's earlier output and were written afresh first
    skipped: str = ""  # why nothing was checked (on_too_few_labels="skip"), else ""


def embed_model_store(ws: Workspace) -> Path | None:
    """The vectors of the configured `[embed]` model (`features/<model_id>/parts/`), or None when the embed stage
    has not written them (or the embedder cannot tell its id here)."""
    from visprep.embed.registry import model_id_of
    from visprep.embed.stage import features_root
    from visprep.embed.store import store_dir_name

    cfg = ws.config.embed
    try:
        model_id = model_id_of(cfg.model, **cfg.options)
    except (ImportError, ValueError, OSError):  # no embedder, no store of it to read
        return None
    parts = features_root(ws) / store_dir_name(model_id) / "parts"
    return parts if parts.is_dir() and any(parts.glob("*.parquet")) else None


def default_embeddings(ws: Workspace) -> Path:
    """The embeddings `visprep quality` reads without --embeddings or `quality.embeddings`: the `[embed]` model's
    feature store, else the Parquet parts of the newest model folder (`features/<model_id>/parts/`)."""
    own = embed_model_store(ws)
    if own is not None:
        return own
    root = ws.root / "features"
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
    files = [source] if source.is_file() else sorted(source.rglob("*.parquet")) if source.is_dir() else []
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(source) if f != source else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return f"{source}:{h.hexdigest()[:16]}"


def embeddings_fingerprint(ws: Workspace) -> str:
    """The fingerprint of what `visprep run`'s quality stage would read now (its freshness input)."""
    return source_fingerprint(pipeline_embeddings(ws))


def quality_applies(ws: Workspace) -> bool:
    """Whether `visprep run` has labels to check: products, pairs, and embeddings (`quality.embeddings`, or the
    feature store of the `[embed]` model)."""
    return (ws.has_table("products") and ws.has_table("pairs")
            and (bool(ws.config.quality.embeddings) or embed_model_store(ws) is not None))


def _pairs_hold_own_output(ws: Workspace) -> bool:
    """Whether `pairs` is still what the last quality run wrote (its policy already applied)."""
    last = ws.last_run("quality")
    if last is None or not (last.get("counts") or {}).get("pairs_written") or not ws.has_table("pairs"):
        return False
    return (last.get("inputs") or {}).get("pairs") == ws.table_fingerprint("pairs")


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
    """Write `label_issues` (flagged products, most suspect first) and apply `quality.policy` to `pairs`.

    Args:
        ws: the workspace (reads products, pairs and the embeddings; writes label_issues, pairs unless the policy
            is keep, user_pairs when the mix exists).
        embeddings: (id, vector) Parquet file or folder; default `quality.embeddings`, else `default_embeddings`.
        on_too_few_labels: fewer than 2 labels with enough embedded products: "raise" a ValueError, or "skip"
            (the pipeline): write an empty `label_issues`, leave pairs without the policy and say why in the run.

    Raises:
        FileNotFoundError: no embeddings, or the given path does not exist.
        ValueError: too few labels (with "raise"); pairs hold an earlier policy and no pairs run can rebuild them.
    """
    from visprep.evaluate.embeddings import read_embeddings

    if on_too_few_labels not in ("raise", "skip"):
        raise ValueError(f"on_too_few_labels must be 'raise' or 'skip', got {on_too_few_labels!r}")
    cfg = ws.config.quality
    source = Path(embeddings or cfg.embeddings or default_embeddings(ws))
    if not source.exists():
        raise FileNotFoundError(f"quality embeddings {source} do not exist (--embeddings or quality.embeddings)")
    res = QualityResult(policy=cfg.policy, embeddings=str(source))
    # Only config sections go in params: the pipeline compares each recorded section with the config.
    with ws.run("quality", section_params(ws.config, "quality")) as run:
        res.run_id = run.run_id
        run.notes.append(f"embeddings: {source}")
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
            run.notes.append(f"not checked: {why}")
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
        ws.write_table("label_issues", table)
        written = False
        if ws.has_table("pairs"):
            if _pairs_hold_own_output(ws):
                # Applying the policy again to its own output would down-weight a product flagged twice twice, and
                # a product no longer flagged would stay excluded: start from the pairs stage's pairs.
                if ws.last_run("pairs") is None:
                    raise ValueError("tables/pairs already carries the label-issue policy of the last quality run "
                                     "and no pairs run can write them afresh: run `visprep pairs` first")
                from visprep.pairs.stage import pairs_stage

                pairs_stage(ws)
                res.pairs_rebuilt = True
            pairs, touched = apply_policy(ws.read_table("pairs"), flagged, policy=cfg.policy,
                                          down_weight=cfg.down_weight)
            if cfg.policy != "keep" and touched:
                ws.write_table("pairs", pairs)
                written = True
            res.pairs_affected = touched
        if ws.has_table("user_pairs"):
            from visprep.quality.mix import mix_stage

            # The mix applies the policy to its own rows when it builds them: rebuild them under the new flags
            # (applying the policy on top of the old rows would down-weight a product flagged twice twice).
            res.pairs_affected += mix_stage(ws)["policy_touched"]
        # Recorded after the writes: the pairs this run leaves are its input as far as freshness goes, so only a
        # new pairs table (a pairs rerun) or new embeddings / products / config make it run again.
        run.inputs = {"products": ws.table_fingerprint("products"), "pairs": ws.table_fingerprint("pairs"),
                      "quality_embeddings": source_fingerprint(source)}
        res.checked, res.flagged = len(use), len(flagged)
        run.counts = {"embedded_products": len(pids), "checked": res.checked, "flagged": res.flagged,
                      "pairs_affected": res.pairs_affected, "pairs_written": int(written),
                      "pairs_rebuilt": int(res.pairs_rebuilt)}
    return res
