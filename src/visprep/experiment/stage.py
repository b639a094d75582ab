"""`visprep experiment`: does this data make the model better, and which preparation choices pay off?

For each variant (`visprep.experiment.variants`) and seed, a projection head is trained on the frozen default
embedder's features of the training split, with the same schedule and step budget; catalog images and the eval
query photos go through the same frozen backbone and the trained head, and the existing evaluation code scores
every query against `eval_qrels`. Per variant and metric: the mean over queries of each query's mean over seeds,
a bootstrap CI over queries, and paired sign-flip tests per query against `frozen`, `in_batch` and the variant's
control. Nothing is tuned on the eval split: every setting comes from the config before any evaluation.

Refuses a workspace whose split check finds a leak; eval-split products and eval query photos never enter training
(the source is the training split, and any item whose image is an eval query is dropped).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from visprep.config import section_params
from visprep.evaluate.stats import bootstrap_ci, paired_test
from visprep.experiment.model import embed_with
from visprep.experiment.train import train_head
from visprep.experiment.variants import Recipe, resolve_variants
from visprep.schema import EXPERIMENT_RESULTS
from visprep.training.batches import FeaturePayload, TrainingSource
from visprep.views.catalog import SYNTHETIC_TABLES
from visprep.views.items import MiningItems
from visprep.workspace import Workspace, atomic_write_bytes

if TYPE_CHECKING:
    from visprep.embed.store import FeatureStore

METRICS = ("ndcg@10", "recall@1", "recall@10", "map")
KS = [1, 10]


@dataclass
class VariantScores:
    """One variant's outcome: per metric, per query, the mean over seeds (or why it was skipped)."""

    recipe: Recipe
    status: str = "ok"
    reason: str | None = None
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {query: mean over seeds}
    seeds: int = 0
    seconds: float = 0.0
    final_loss: float | None = None


@dataclass
class ExperimentResult:
    """What `experiment_stage` produced."""

    run_id: str
    rows: list[dict[str, Any]]
    variants: dict[str, VariantScores]
    out_dir: Path
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def query_features(ws: Workspace, model_id: str) -> tuple[list[str], np.ndarray]:
    """(query ids, (n, D) vectors) of the eval query photos through the frozen embedder, cached per model id in
    `experiments/query-features/` (only photos not cached yet are embedded)."""
    import pyarrow.parquet as pq

    from visprep.embed.registry import get_embedder
    from visprep.images.sniff import extension_for
    from visprep.views.features import store_dir_name

    q = ws.read_table("eval_queries", ["query_id", "format"])
    wanted = dict(zip(q.column("query_id").to_pylist(), q.column("format").to_pylist()))
    path = ws.root / "experiments" / "query-features" / f"{store_dir_name(model_id)}.parquet"
    cached: dict[str, np.ndarray] = {}
    if path.exists():
        t = pq.read_table(path)
        for i, v in zip(t.column("image_id").to_pylist(), t.column("vector").to_pylist()):
            cached[i] = np.asarray(v, np.float32)
    todo = sorted(i for i, f in wanted.items() if i not in cached and f)
    if todo:
        cfg = ws.config.embed
        options = dict(cfg.options)
        if cfg.threads:
            options.setdefault("threads", cfg.threads)
        embedder = get_embedder(cfg.model, **options)
        if embedder.model_id != model_id:
            raise ValueError(f"the embed config gives model {embedder.model_id!r}, the feature store used is "
                             f"{model_id!r}: set experiment inputs to one model")
        for s in range(0, len(todo), 64):
            chunk = todo[s : s + 64]
            vecs = embedder.embed([ws.store.get(i, extension_for(wanted[i])) for i in chunk])
            cached.update(zip(chunk, vecs))
        from visprep.evaluate.embeddings import write_embeddings

        ids = sorted(cached)
        write_embeddings(path, ids, np.stack([cached[i] for i in ids]), model=model_id)
    ids = sorted(i for i in wanted if i in cached)
    dim = next(iter(cached.values())).shape[0] if cached else 0
    return ids, (np.stack([cached[i] for i in ids]) if ids else np.zeros((0, dim), np.float32))


def _without_images(items: MiningItems, drop: set[str]) -> MiningItems:
    keep = np.array([i not in drop for i in items.image_id.tolist()], bool)
    if keep.all():
        return items
    return replace(items, **{f: getattr(items, f)[keep] for f in ("image_id", "product_id", "split", "category",
                                                                    "top_category", "brand", "group", "product",
                                                                    "group_id")})


def _groups_ignored(items: MiningItems) -> MiningItems:
    """The items with every product its own group (near-duplicate groups ignored)."""
    return replace(items, group=items.product.copy(), group_id=items.product_id.copy())


def mine_ann(ws: Workspace, items: MiningItems, split: str, payload: FeaturePayload, *, guard: bool,
             store: FeatureStore | None = None) -> pa.Table:
    """ANN hard negatives of `split` mined in process with the workspace's mining settings, the false-negative
    guard on or off, over `items`' groups: the `negatives` rows (kind ann) a variant trains with. With `store`
    (the payload's vectors are that store's), the pool's index is the shared one (`visprep.views.ann_index`),
    built at most once per pool and store state."""
    from visprep.mining.ann import mine_ann_negatives, positive_scores
    from visprep.mining.guard import FalseNegativeGuard
    from visprep.mining.keys import string_keys
    from visprep.mining.miners import negatives_table
    from visprep.mining.positives import build_positive_sets
    from visprep.views.ann_index import index_source

    cfg = ws.config.mining
    rows = np.flatnonzero(items.split == split)
    vec_rows = payload.rows(items.product_id[rows], items.image_id[rows])
    rows = rows[vec_rows >= 0]
    vecs = payload.load(vec_rows[vec_rows >= 0])
    positives = build_positive_sets(items.group, items.product, items.positive_pairs).subset(rows)
    group = items.group[rows]
    s_pos = positive_scores(vecs, group=group, positives=positives, how=cfg.positive_score)
    rule = (FalseNegativeGuard(relative_margin=cfg.relative_margin, max_similarity=cfg.max_similarity) if guard
            else FalseNegativeGuard(relative_margin=None, max_similarity=None))
    keys = string_keys([f"{p}\x00{i}" for p, i in zip(items.product_id[rows], items.image_id[rows])])
    options = {"ivf_nlist": cfg.ivf_nlist, "ivf_nprobe": cfg.ivf_nprobe, "hnsw_m": cfg.hnsw_m,
               "hnsw_ef_search": cfg.hnsw_ef_search, "seed": cfg.seed}
    source = (index_source(store, items.image_id[rows].tolist(), vecs, search=cfg.search, options=options,
                           auto_k=cfg.band_max) if store is not None else None)
    res = mine_ann_negatives(vecs, group=group, positives=positives, s_pos=s_pos, k=cfg.ann_per_anchor,
                             skip_top=cfg.skip_top, band_max=cfg.band_max, guard=rule,
                             overfetch_margin=cfg.overfetch_margin, search=cfg.search, query_batch=cfg.query_batch,
                             item_keys=keys, seed=cfg.seed, index_options=options, index_source=source)
    return negatives_table(items, rows, res.anchor, res.negative, "ann", res.rank, res.score)


def _skip_reason(ws: Workspace, recipe: Recipe, items_user: MiningItems, split: str, split_products: set[str],
                 n_user_photos: int) -> str | None:
    from visprep.mining.skip_above import POSITIVE_KINDS

    if recipe.events:
        if not ws.has_table("interaction_pairs"):
            return "no interaction_pairs table: ingest events with `visprep events` first"
        t = ws.read_table("interaction_pairs", ["anchor_id", "anchor_type", "product_id", "kind"]).to_pydict()
        linked = sum(1 for a, at, p, k in zip(t["anchor_id"], t["anchor_type"], t["product_id"], t["kind"])
                     if at == "product" and k in POSITIVE_KINDS and a != p and a in split_products
                     and p in split_products)
        if not linked:
            return f"interaction_pairs has no product-to-product positive between {split!r} products"
    if recipe.user_photos and n_user_photos == 0:
        return (f"no user photos in split {split!r}: needs events with query photos, `visprep queries` and the "
                "mix (tables/user_pairs)")
    return None


def experiment_stage(ws: Workspace, *, variants: list[str] | None = None, seeds: int | None = None,
                     steps: int | None = None, progress: Callable[[int, int], None] | None = None
                     ) -> ExperimentResult:
    """Train and evaluate every variant; write `experiment_results`, a run record, and
    `experiments/<run_id>/` (results.md, chart.png, results.json).

    Raises:
        SplitLeakError: the split check finds a leak.
        ValueError: unknown variants, no eval qrels, no usable training data, or missing features.
    """
    import torch

    from visprep.evaluate.stage import catalog_images, load_qrels, score_embeddings
    from visprep.mining.stage import ann_model_id
    from visprep.sampling.stage import with_user_photos
    from visprep.split.check import assert_no_split_leak
    from visprep.views.items import load_items

    t_start = time.perf_counter()
    cfg = ws.config.experiment
    if seeds is not None or steps is not None or variants is not None:
        cfg = cfg.model_copy(update={k: v for k, v in (("seeds", seeds), ("steps", steps), ("variants", variants))
                                     if v is not None})
    recipes = resolve_variants(cfg.variants)
    assert_no_split_leak(ws)
    qrels = load_qrels(ws)
    split = ws.config.training.split
    model_id = ann_model_id(ws)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    params = {**section_params(ws.config, "experiment", "training", "sampling", "mining", "evaluate"),
              "resolved": {"variants": [r.name for r in recipes], "seeds": cfg.seeds, "steps": cfg.steps,
                           "model_id": model_id}}
    with ws.run("experiment", params) as run:
        run.inputs = {t: ws.table_fingerprint(t) for t in ("eval_qrels", "splits", "pairs", "negatives",
                                                            "batch_plan", "interaction_pairs", "user_pairs",
                                                            *SYNTHETIC_TABLES)}
        q_ids, q_vecs = query_features(ws, model_id)
        eval_queries = set(q_ids)
        base = _without_images(load_items(ws), eval_queries)
        with_user, n_user = with_user_photos(ws, base)
        with_user = _without_images(with_user, eval_queries)
        n_user = int(((with_user.split == split).sum()) - (base.split == split).sum())
        split_products = set(base.product_id[base.split == split].tolist())
        cat = catalog_images(ws)
        from visprep.embed.store import FeatureStore
        from visprep.views.features import features_root

        store = FeatureStore.open_existing(features_root(ws), model_id)
        want = sorted(set(cat.column("image_id").to_pylist()) | set(with_user.image_id.tolist()))
        vecs, found = store.get(want)
        have = [i for i, f in zip(want, found.tolist()) if f]
        payload = FeaturePayload(have, vecs[found], model_id)
        have_set = set(have)
        all_ids = have + [q for q in q_ids if q not in have_set]
        extra = np.stack([q_vecs[q_ids.index(q)] for q in all_ids[len(have):]]) if len(all_ids) > len(have) else None
        all_vecs = payload.vectors if extra is None else np.concatenate([payload.vectors, extra])
        run.notes.append(f"features {model_id}: {len(have)} catalog/training images, {len(q_ids)} eval query "
                         f"photos; {len(split_products)} training products")

        def evaluate(head: Any) -> dict[str, dict[str, float]]:
            scored = score_embeddings(ws, qrels, all_ids, embed_with(head, all_vecs), ks=KS, catalog=cat)
            return {m: scored.scores[m] for m in METRICS}

        sources: dict[tuple, TrainingSource] = {}
        negatives: dict[tuple[bool, bool], pa.Table] = {}

        def source_for(recipe: Recipe) -> TrainingSource:
            key = recipe.data_key
            if key not in sources:
                items = with_user if recipe.user_photos else base
                if not recipe.groups:
                    items = _groups_ignored(items)
                neg = None
                if recipe.ann:
                    nk = (recipe.ann == "guard", recipe.groups)
                    if nk not in negatives:
                        negatives[nk] = mine_ann(ws, items, split, payload, guard=nk[0], store=store)
                    neg = negatives[nk]
                sources[key] = TrainingSource.from_workspace(
                    ws, split=split, payload=payload, items=items, negatives=neg, negative_kinds=["ann"],
                    negatives_per_anchor=cfg.negatives_per_anchor if recipe.ann else 0,
                    event_positives_per_anchor=cfg.event_positives_per_anchor if recipe.events else 0,
                    augment=False, use_stored_plan=False)
            return sources[key]

        def remine_for(recipe: Recipe) -> Callable[[Any], TrainingSource]:
            """Re-mine the recipe's ANN negatives from a head's embeddings of every payload vector."""
            from visprep.training.links import negative_links

            items = with_user if recipe.user_photos else base
            if not recipe.groups:
                items = _groups_ignored(items)

            def remine(head: Any) -> TrainingSource:
                head_payload = copy.copy(payload)
                head_payload.vectors = embed_with(head, payload.vectors)
                head_payload.model_id = f"{model_id}+head"
                table = mine_ann(ws, items, split, head_payload, guard=recipe.ann == "guard")
                return source_for(recipe).with_options(negatives=negative_links(table, split=split, kinds=["ann"]))
            return remine

        trained: dict[tuple, VariantScores] = {}
        results: dict[str, VariantScores] = {}
        n_models = sum(cfg.seeds if r.train else 1 for r in recipes)
        done = 0
        for recipe in recipes:
            reason = _skip_reason(ws, recipe, with_user, split, split_products, n_user)
            if reason:
                results[recipe.name] = VariantScores(recipe, status="skipped", reason=reason)
                run.notes.append(f"{recipe.name}: skipped: {reason}")
                continue
            if recipe.data_key in trained:
                results[recipe.name] = replace(trained[recipe.data_key], recipe=recipe)
                continue
            t0 = time.perf_counter()
            out = VariantScores(recipe)
            if not recipe.train:
                out.per_query, out.seeds = evaluate(None), 1
                done += 1
                if progress:
                    progress(1, n_models)
            else:
                src = source_for(recipe)
                per_seed, losses = [], []
                for s in range(cfg.seeds):
                    head, loss = train_head(src, structure=recipe.structure, steps=cfg.steps, hidden=cfg.hidden,
                                            dim=cfg.dim, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                            temperature=cfg.temperature, seed=cfg.seed + s,
                                            event_weight=cfg.event_loss_weight if recipe.events else 0.0,
                                            event_weights=recipe.events or "raw",
                                            random_negatives=cfg.negatives_per_anchor,
                                            remine=remine_for(recipe) if recipe.remine else None,
                                            remine_every=cfg.remine_every)
                    per_seed.append(evaluate(head))
                    losses.append(float(np.mean(loss[-20:])))
                    done += 1
                    if progress:
                        progress(1, n_models)
                out.per_query = {m: {q: float(np.mean([ps[m][q] for ps in per_seed])) for q in per_seed[0][m]}
                                 for m in METRICS}
                out.seeds, out.final_loss = cfg.seeds, float(np.mean(losses))
            out.seconds = time.perf_counter() - t0
            trained[recipe.data_key] = out
            results[recipe.name] = out
        rows = result_rows(run.run_id, results, steps=cfg.steps, bootstrap=cfg.bootstrap, seed=cfg.seed,
                           permutations=ws.config.evaluate.permutations)
        ws.write_part("experiment_results", pa.Table.from_pylist(rows, schema=EXPERIMENT_RESULTS), run.run_id)
        out_dir = ws.root / "experiments" / run.run_id
        res = ExperimentResult(run_id=run.run_id, rows=rows, variants=results, out_dir=out_dir, notes=run.notes)
        res.seconds = time.perf_counter() - t_start
        write_report(res, cfg=cfg, model_id=model_id, split=split)
        run.counts = {"variants": len(recipes), "skipped": sum(v.status == "skipped" for v in results.values()),
                      "models_trained": sum(v.seeds for k, v in trained.items() if k[0]),
                      "queries": len(next((v.per_query["ndcg@10"] for v in results.values() if v.per_query), {}))}
        run.metrics = {"report": str(out_dir)}
    return res


def result_rows(run_id: str, results: dict[str, VariantScores], *, steps: int, bootstrap: int, seed: int,
                permutations: int) -> list[dict[str, Any]]:
    """`experiment_results` rows: value and CI per variant and metric, paired differences and tests."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []

    def compare(v: VariantScores, other: str | None, m: str) -> tuple[float | None, ...]:
        ref = results.get(other) if other else None
        if ref is None or ref.status != "ok":
            return None, None, None, None
        c = paired_test(ref.per_query[m], v.per_query[m], metric=m, permutations=permutations,
                        resamples=bootstrap, rng=rng)
        return c.diff, c.ci_low, c.ci_high, c.p_randomization

    for name, v in results.items():
        base = {"run_id": run_id, "variant": name, "status": v.status, "reason": v.reason,
                "control": v.recipe.control, "seeds": v.seeds, "steps": steps if v.recipe.train else 0,
                "seconds": round(v.seconds, 3)}
        if v.status != "ok":
            rows.append({**base, "metric": None})
            continue
        for m in METRICS:
            vals = np.array(list(v.per_query[m].values()))
            lo, hi = bootstrap_ci(vals, resamples=bootstrap, rng=rng)
            d_f, _, _, p_f = compare(v, "frozen", m) if name != "frozen" else (None,) * 4
            d_b, _, _, p_b = compare(v, "in_batch", m) if name != "in_batch" else (None,) * 4
            d_c, c_lo, c_hi, p_c = compare(v, v.recipe.control, m)
            rows.append({**base, "metric": m, "value": float(vals.mean()) if len(vals) else None, "ci_low": lo,
                         "ci_high": hi, "diff_vs_frozen": d_f, "p_vs_frozen": p_f, "diff_vs_in_batch": d_b,
                         "p_vs_in_batch": p_b, "diff_vs_control": d_c, "diff_ci_low": c_lo, "diff_ci_high": c_hi,
                         "p_vs_control": p_c, "queries": len(vals)})
    return rows


def verdict(row: dict[str, Any]) -> str:
    """Plain words for a row's difference against its control: helps / hurts / no clear difference."""
    if row.get("diff_vs_control") is None:
        return ""
    lo, hi = row["diff_ci_low"], row["diff_ci_high"]
    if lo is not None and lo > 0:
        return "helps"
    if hi is not None and hi < 0:
        return "hurts"
    return "no clear difference"


def write_report(res: ExperimentResult, *, cfg: Any, model_id: str, split: str) -> None:
    """`results.md`, `results.json` and `chart.png` (metric per variant with its CI) under `res.out_dir`."""
    res.out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in res.rows if r["status"] == "ok"]
    lines = [f"# visprep experiment {res.run_id}", "",
             f"Frozen features: `{model_id}`; training split `{split}`; {cfg.seeds} seeds x {cfg.steps} steps per "
             f"variant; head {cfg.hidden} -> {cfg.dim}, temperature {cfg.temperature}, lr {cfg.lr}. Values: mean "
             "over queries of each query's mean over seeds, 95% bootstrap CI over queries; p: paired sign-flip test "
             f"per query. Took {res.seconds:.1f} s.", "",
             "| variant | metric | value | 95% CI | vs frozen | vs in_batch | control | vs control (95% CI) | p | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]

    def f(x: float | None, sign: bool = False) -> str:
        return "" if x is None else (f"{x:+.4f}" if sign else f"{x:.4f}")

    for r in ok:
        ctrl = "" if r["diff_vs_control"] is None else \
            f"{f(r['diff_vs_control'], True)} ({f(r['diff_ci_low'], True)}, {f(r['diff_ci_high'], True)})"
        lines.append(f"| {r['variant']} | {r['metric']} | {f(r['value'])} | [{f(r['ci_low'])}, {f(r['ci_high'])}] "
                     f"| {f(r['diff_vs_frozen'], True)} | {f(r['diff_vs_in_batch'], True)} | {r['control'] or ''} "
                     f"| {ctrl} | {f(r['p_vs_control'])} | {verdict(r)} |")
    skipped = [r for r in res.rows if r["status"] == "skipped"]
    if skipped:
        lines += ["", "Skipped variants:", ""] + [f"- `{r['variant']}`: {r['reason']}" for r in skipped]
    lines += ["", "Variants:", ""] + [f"- `{v.recipe.name}`: {v.recipe.about}" for v in res.variants.values()]
    if res.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res.notes]
    atomic_write_bytes(res.out_dir / "results.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(res.out_dir / "results.json", json.dumps(res.rows, indent=1, default=str).encode())
    _chart(ok, res.out_dir / "chart.png")


def _chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.2), sharey=False)
    for ax, m in zip(np.atleast_1d(axes), METRICS):
        rs = [r for r in rows if r["metric"] == m]
        names = [r["variant"] for r in rs]
        vals = np.array([r["value"] for r in rs])
        err = np.array([[r["value"] - r["ci_low"] for r in rs], [r["ci_high"] - r["value"] for r in rs]])
        ax.bar(range(len(rs)), vals, yerr=err, capsize=3,
               color=["#999999" if n == "frozen" else "#4477aa" for n in names])
        ax.set_xticks(range(len(rs)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(m)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("retrieval on the eval judgments per variant (95% bootstrap CI over queries)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
