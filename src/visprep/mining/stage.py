"""The mine stage: run the configured miners per split and write each kind as its own part of `negatives`.

Reads usable images (pairs stage), products (brand, category), product groups (the split's `group_id` when the
split ran, else `product_groups` from the dedup stage, else the product; products listing the same photo are merged),
known positive pairs (`pairs`, and click/cart/purchase/co-view rows of `interaction_pairs` when present), the
feature store (for `ann`). Every drop of every rule is counted in the run record (`counts`, prefixed by kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from visprep.config import section_params
from visprep.mining.ann import positive_scores
from visprep.mining.brand import mine_brand_negatives
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.other_category import mine_other_category_negatives
from visprep.mining.positives import PositiveSets, build_positive_sets, merge_shared_images
from visprep.mining.random_negatives import mine_random_negatives
from visprep.mining.skip_above import POSITIVE_KINDS, mine_skip_above_negatives
from visprep.schema import NEGATIVES, TABLES
from visprep.views.catalog import SYNTHETIC_TABLES, all_products, all_splits
from visprep.workspace import Workspace


@dataclass
class MiningItems:
    """The pool: one row per usable (product, image), with integer codes for groups and products."""

    image_id: np.ndarray  # object
    product_id: np.ndarray  # object
    split: np.ndarray  # object
    category: np.ndarray  # object
    top_category: np.ndarray  # object
    brand: np.ndarray  # object
    group: np.ndarray  # int64 codes
    product: np.ndarray  # int64 codes
    group_id: np.ndarray  # object: the group id string
    positive_pairs: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_id)


def product_group_map(ws: Workspace) -> dict[str, str]:
    """product -> group: the splits table's group_id (dedup groups plus synthetic colour variants joined to their
    source, the split's own grouping), else `product_groups` before any split exists."""
    if ws.has_table("splits"):
        t = all_splits(ws, ["product_id", "group_id"])
    elif "product_groups" in TABLES and ws.has_table("product_groups"):
        t = ws.read_table("product_groups", ["product_id", "group_id"])
    else:
        return {}
    return {p: g for p, g in zip(t.column("product_id").to_pylist(), t.column("group_id").to_pylist()) if g}


def load_items(ws: Workspace) -> MiningItems:
    """Build the mining pool of the workspace (see module docstring)."""
    from visprep.views.images import usable_images

    imgs = usable_images(ws)
    prod = all_products(ws, ["product_id", "category", "brand"])
    cat_of = dict(zip(prod.column("product_id").to_pylist(), prod.column("category").to_pylist()))
    brand_of = dict(zip(prod.column("product_id").to_pylist(), prod.column("brand").to_pylist()))
    pid = imgs.column("product_id").to_pylist()
    iid = imgs.column("image_id").to_pylist()
    groups = merge_shared_images(pid, iid, product_group_map(ws))
    gid = np.array([groups[p] for p in pid], dtype=object)
    _, gcode = np.unique(gid.astype(str), return_inverse=True) if len(gid) else (None, np.zeros(0, np.int64))
    pnames, pcode = np.unique(np.array(pid, dtype=str), return_inverse=True) if pid else ([], np.zeros(0, np.int64))
    code_of = {p: i for i, p in enumerate(list(pnames))}
    pairs: set[tuple[int, int]] = set()
    pt = ws.read_table("pairs", ["anchor_product_id", "positive_product_id"])
    for a, b in zip(pt.column("anchor_product_id").to_pylist(), pt.column("positive_product_id").to_pylist()):
        if a != b and a in code_of and b in code_of:
            pairs.add((code_of[a], code_of[b]))
    if ws.has_table("interaction_pairs"):
        it = ws.read_table("interaction_pairs", ["anchor_id", "anchor_type", "product_id", "kind"])
        for a, t, b, k in zip(*(it.column(c).to_pylist() for c in ("anchor_id", "anchor_type", "product_id", "kind"))):
            if t == "product" and k in POSITIVE_KINDS and a != b and a in code_of and b in code_of:
                pairs.add((code_of[a], code_of[b]))
    return MiningItems(
        image_id=np.array(iid, dtype=object), product_id=np.array(pid, dtype=object),
        split=np.array(imgs.column("split").to_pylist(), dtype=object),
        category=np.array([cat_of.get(p) for p in pid], dtype=object),
        top_category=np.array(imgs.column("top_category").to_pylist(), dtype=object),
        brand=np.array([brand_of.get(p) for p in pid], dtype=object),
        group=gcode.astype(np.int64), product=np.asarray(pcode, np.int64), group_id=gid,
        positive_pairs=sorted(pairs))


def negatives_table(items: MiningItems, rows: np.ndarray, a: np.ndarray, n: np.ndarray, kind: str,
                    rank: np.ndarray, score: np.ndarray | None = None) -> pa.Table:
    """`negatives` rows of pool-local (anchor, negative) index pairs `a`, `n` of pool `rows` of `items`."""
    ga, gn = rows[a], rows[n]
    return pa.table({
        "anchor_id": pa.array(items.image_id[ga].tolist(), pa.string()),
        "negative_id": pa.array(items.image_id[gn].tolist(), pa.string()),
        "kind": pa.array([kind] * len(ga), pa.string()),
        "score": pa.array(score if score is not None else np.full(len(ga), np.nan, np.float32), pa.float32(),
                          mask=None if score is not None else np.ones(len(ga), bool)),
        "rank": pa.array(rank, pa.int32()),
        "anchor_product_id": pa.array(items.product_id[ga].tolist(), pa.string()),
        "negative_product_id": pa.array(items.product_id[gn].tolist(), pa.string()),
        "split": pa.array(items.split[ga].tolist(), pa.string()),
    }, schema=NEGATIVES)


def mine_stage(ws: Workspace, *, feature_model: str | None = None) -> dict[str, int]:
    """Mine the configured kinds of negatives; return the run's counts (also in the run record).

    Args:
        ws: the workspace.
        feature_model: model id of the feature store for `ann` (default: mining.model, else the embed model).
    """
    cfg = ws.config.mining
    counts: dict[str, int] = {}
    with ws.run("mine", section_params(ws.config, "mining")) as run:
        run.inputs = {t: ws.table_fingerprint(t) for t in ("products", "pairs", "splits", "product_images",
                                                            "images", "interaction_pairs", "product_groups",
                                                            *SYNTHETIC_TABLES)}
        if "ann" in cfg.kinds:
            run.inputs["features"] = features_fingerprint(ws, feature_model)
        items = load_items(ws)
        counts["items"] = len(items)
        positives = build_positive_sets(items.group, items.product, items.positive_pairs)
        rng = np.random.default_rng(cfg.seed)
        splits = sorted(set(items.split.tolist())) if cfg.same_split else [None]
        pools = [np.flatnonzero(items.split == s) if s is not None else np.arange(len(items)) for s in splits]
        tables: dict[str, list[pa.Table]] = {k: [] for k in cfg.kinds}

        def add(kind: str, c: dict[str, int]) -> None:
            for name, v in c.items():
                counts[f"{kind}.{name}"] = counts.get(f"{kind}.{name}", 0) + int(v)

        if "other_category" in cfg.kinds:
            oc_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: the other miners' draws stay as they were
            for rows in pools:
                a, n, r, c = mine_other_category_negatives(items.top_category[rows], items.image_id[rows],
                                                           items.group[rows], positives.subset(rows),
                                                           k=cfg.other_category_per_anchor, rng=oc_rng)
                tables["other_category"].append(negatives_table(items, rows, a, n, "other_category", r))
                add("other_category", c)
        if "random" in cfg.kinds:
            for rows in pools:
                a, n, r, c = mine_random_negatives(items.group[rows], positives.subset(rows),
                                                   k=cfg.random_per_anchor, rng=rng)
                tables["random"].append(negatives_table(items, rows, a, n, "random", r))
                add("random", c)
        if "brand" in cfg.kinds:
            level = items.category if cfg.brand_level == "category" else items.top_category
            for rows in pools:
                a, n, r, c = mine_brand_negatives(level[rows], items.brand[rows], items.group[rows],
                                                  positives.subset(rows), k=cfg.brand_per_anchor, rng=rng)
                tables["brand"].append(negatives_table(items, rows, a, n, "brand", r))
                add("brand", c)
        if "skip_above" in cfg.kinds:
            if ws.has_table("interaction_pairs"):
                inter = ws.read_table("interaction_pairs")
                for rows in pools:
                    index = {iid: j for j, iid in enumerate(items.image_id[rows].tolist())}
                    first: dict[str, int] = {}
                    for j, p in enumerate(items.product_id[rows].tolist()):
                        first.setdefault(p, j)  # usable_images is ordered by product, position
                    a, n, w, r, c = mine_skip_above_negatives(inter, image_index=index, first_image_of_product=first,
                                                              group=items.group[rows],
                                                              positives=positives.subset(rows),
                                                              k=cfg.skip_above_per_anchor)
                    tables["skip_above"].append(negatives_table(items, rows, a, n, "skip_above", r, w))
                    add("skip_above", c)
            else:
                counts["skip_above.skipped_no_interaction_pairs"] = 1
                run.notes.append("skip_above: no interaction_pairs table (run the events stage first)")
        if "ann" in cfg.kinds:
            _mine_ann(ws, items, positives, pools, splits, tables["ann"], add, feature_model, run.notes)
        for kind, parts in tables.items():
            if kind == "skip_above" and not ws.has_table("interaction_pairs"):
                continue
            table = pa.concat_tables(parts) if parts else NEGATIVES.empty_table()
            ws.write_part("negatives", table, kind)
            counts[f"{kind}.rows"] = table.num_rows
        run.counts = counts
    return counts


def ann_model_id(ws: Workspace, feature_model: str | None = None) -> str:
    """Model id of the feature store that `ann` reads: the argument, else mining.model, else the embed model's."""
    from visprep.embed.registry import model_id_of

    ecfg = ws.config.embed
    return feature_model or ws.config.mining.model or model_id_of(ecfg.model, **ecfg.options)


def features_fingerprint(ws: Workspace, feature_model: str | None = None) -> str:
    """A cheap fingerprint of the feature store `ann` reads (its part files), for the run's freshness key."""
    import hashlib

    from visprep.embed.stage import features_root
    from visprep.embed.store import store_dir_name

    try:
        parts = features_root(ws) / store_dir_name(ann_model_id(ws, feature_model)) / "parts"
    except (ImportError, ValueError, OSError) as exc:  # no id without the embedder: the mine itself reports it
        return f"unavailable: {type(exc).__name__}"
    h = hashlib.sha256()
    for p in sorted(parts.glob("part-*.parquet")) if parts.exists() else []:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


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
    from visprep.embed.stage import features_root
    from visprep.embed.store import store_dir_name

    name = "all" if split is None else "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
    return features_root(ws) / store_dir_name(model_id) / "ann-state" / f"{name}.npz"


def _mine_ann(ws: Workspace, items: MiningItems, positives: PositiveSets, pools: list[np.ndarray],
              splits: list[str | None], out: list[pa.Table], add: Any, feature_model: str | None,
              notes: list[str]) -> None:
    from visprep.embed.stage import features_root
    from visprep.embed.store import FeatureStore
    from visprep.mining.incremental import AnnState, mine_with_state, positive_signatures
    from visprep.mining.keys import string_keys

    cfg = ws.config.mining
    model_id = ann_model_id(ws, feature_model)
    store = FeatureStore.open_existing(features_root(ws), model_id)
    notes.append(f"ann: feature store {model_id}")
    if cfg.threads:
        import faiss

        faiss.omp_set_num_threads(cfg.threads)
    guard = FalseNegativeGuard(relative_margin=cfg.relative_margin, max_similarity=cfg.max_similarity)
    options = {"ivf_nlist": cfg.ivf_nlist, "ivf_nprobe": cfg.ivf_nprobe, "hnsw_m": cfg.hnsw_m,
               "hnsw_ef_search": cfg.hnsw_ef_search, "seed": cfg.seed}
    params = ann_params(ws, model_id)
    group_keys = string_keys(items.group_id.astype(str).tolist())
    for rows, split in zip(pools, splits):
        vecs, found = store.get(items.image_id[rows].tolist())
        add("ann", {"no_vector": int((~found).sum())})
        rows = rows[found]
        vecs = vecs[found]
        path = ann_state_path(ws, model_id, split)
        if len(rows) == 0:
            path.unlink(missing_ok=True)
            continue
        group = items.group[rows]
        pos = positives.subset(rows)
        s_pos = positive_scores(vecs, group=group, positives=pos, how=cfg.positive_score)
        keys = string_keys([f"{p}\x00{i}" for p, i in zip(items.product_id[rows], items.image_id[rows])])
        # A group's key is the same whatever its code this run: codes are renumbered, ids are not.
        key_of_code = np.zeros(int(items.group.max()) + 1, np.uint64)
        key_of_code[items.group] = group_keys
        old = AnnState.load(path) if cfg.incremental else None
        res, state, decision = mine_with_state(
            vecs, group=group, positives=pos, s_pos=s_pos, keys=keys, group_key=group_keys[rows],
            pos_sig=positive_signatures(pos, key_of_code), params=params, old=old, band_max=cfg.band_max,
            k=cfg.ann_per_anchor, skip_top=cfg.skip_top, guard=guard, overfetch_margin=cfg.overfetch_margin,
            search=cfg.search, query_batch=cfg.query_batch, index_options=options, seed=cfg.seed)
        state.save(path)
        out.append(negatives_table(items, rows, res.anchor, res.negative, "ann", res.rank, res.score))
        counts = {k: v for k, v in res.counts.items() if k != "kept"}
        counts["kept"] = len(res.anchor)  # reused anchors' rows included
        for name, v in decision.counts.items():
            counts[name if name in ("remined", "reused", "full_remines") else f"incremental.{name}"] = v
        add("ann", counts)
        reason = decision.reason if cfg.incremental else "mining.incremental = false"
        notes.append(f"ann[{split}]: {'full' if decision.full else 'incremental'} re-mine ({reason}): "
                     f"{decision.counts['remined']} anchors re-mined, {decision.counts['reused']} reused")
