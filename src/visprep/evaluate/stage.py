"""The evaluate stage: rank the catalog for each eval query, score against `eval_qrels`, with CIs and comparisons."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from visprep.config import section_params
from visprep.evaluate.embeddings import features_path, read_embeddings
from visprep.evaluate.metrics import judged_counts, metric_names, per_query_metrics
from visprep.evaluate.search import normalize_rows, rank_products
from visprep.evaluate.stats import PairedComparison, bootstrap_ci, paired_test
from visprep.schema import EVAL_METRICS, EVAL_QUERY_SCORES
from visprep.workspace import Workspace


@dataclass
class EvaluateResult:
    """Metrics of one model (mean, CI, queries per metric and category) and its comparison with a baseline."""

    model: str
    metrics: list[dict] = field(default_factory=list)  # rows of `eval_metrics`
    comparisons: list[PairedComparison] = field(default_factory=list)
    baseline: str | None = None
    queries: int = 0
    queries_without_embedding: int = 0
    catalog_products: int = 0
    catalog_images: int = 0
    catalog_images_without_embedding: int = 0
    judged_by_grade: dict[int, int] = field(default_factory=dict)  # grade-0 included (ranx drops them)
    notes: list[str] = field(default_factory=list)
    run_id: str = ""

    def overall(self) -> dict[str, dict]:
        """metric -> its row over all queries."""
        return {r["metric"]: r for r in self.metrics if r["category"] == "*"}


def catalog_images(ws: Workspace) -> pa.Table:
    """(product_id, image_id) of every product image that was fetched and decodes."""
    return ws.sql(
        """
        SELECT DISTINCT pi.product_id, u.image_id
        FROM pi JOIN u ON u.url = pi.url AND u.status = 'ok'
        JOIN i ON i.image_id = u.image_id AND i.status = 'ok'
        ORDER BY pi.product_id, u.image_id
        """,
        pi=ws.read_table("product_images", ["product_id", "url"]), u=ws.latest_urls(),
        i=ws.read_table("images", ["image_id", "status"]))


def query_categories(qrels: dict[str, dict[str, int]], top_category: dict[str, str | None]) -> dict[str, str]:
    """A query's category: the top category of its best-graded product (ties: the smallest product id)."""
    out = {}
    for q, judged in qrels.items():
        best = min(judged.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        out[q] = top_category.get(best) or "(unknown)"
    return out


def _part_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", model)[:64] or "model"


@dataclass
class QueryScores:
    """Per-query metric values of one set of embeddings, with what was (not) scored."""

    scores: dict[str, dict[str, float]]  # metric -> {query_id: value}
    category: dict[str, str]  # query_id -> its category
    queries: int = 0
    queries_without_embedding: int = 0
    catalog_products: int = 0
    catalog_images: int = 0
    catalog_images_without_embedding: int = 0
    notes: list[str] = field(default_factory=list)


def load_qrels(ws: Workspace) -> dict[str, dict[str, int]]:
    """query_id -> {product_id: consensus grade} of `eval_qrels`; raises ValueError when there are none."""
    q_table = ws.read_table("eval_qrels", ["query_id", "product_id", "grade"])
    if q_table.num_rows == 0:
        raise ValueError(f"{ws.root}: no eval_qrels; import rater files with `visprep labels` first")
    qrels: dict[str, dict[str, int]] = {}
    for q, p, g in zip(*(q_table.column(c).to_pylist() for c in ("query_id", "product_id", "grade"))):
        qrels.setdefault(q, {})[p] = int(g)
    return qrels


def score_embeddings(ws: Workspace, qrels: dict[str, dict[str, int]], ids: list[str], vectors: np.ndarray, *,
                     ks: list[int] | None = None, catalog: pa.Table | None = None) -> QueryScores:
    """Rank the catalog's products for every judged query that has a vector, and score each query.

    Args:
        qrels: from `load_qrels`.
        ids, vectors: (image id, vector) of catalog images and query images, in any order.
        ks: cut-offs (default `evaluate.ks`).
        catalog: (product_id, image_id) rows searched (default `catalog_images(ws)`).
    """
    cfg = ws.config.evaluate
    row_of = {iid: i for i, iid in enumerate(ids)}
    cat = catalog if catalog is not None else catalog_images(ws)
    cat_pid, cat_iid = cat.column("product_id").to_pylist(), cat.column("image_id").to_pylist()
    keep = [i for i, iid in enumerate(cat_iid) if iid in row_of]
    out = QueryScores(scores={}, category={}, catalog_images=len(keep),
                      catalog_images_without_embedding=len(cat_iid) - len(keep))
    cat_pid = [cat_pid[i] for i in keep]
    cat_iid = [cat_iid[i] for i in keep]
    out.catalog_products = len(set(cat_pid))
    catalog_vecs = vectors[[row_of[i] for i in cat_iid]]
    queries = sorted(q for q in qrels if q in row_of)
    out.queries = len(queries)
    out.queries_without_embedding = len(qrels) - len(queries)
    qvec = vectors[[row_of[q] for q in queries]] if queries else np.zeros((0, vectors.shape[1]), np.float32)
    if cfg.similarity == "cosine":
        catalog_vecs, qvec = normalize_rows(catalog_vecs), normalize_rows(qvec)
    # A query photo that is itself a catalog image would find itself: it is left out of that query's index.
    rows_of_image: dict[str, list[int]] = {}
    for i, iid in enumerate(cat_iid):
        rows_of_image.setdefault(iid, []).append(i)
    exclude = [np.asarray(rows_of_image.get(q, []), dtype=np.int64) for q in queries]
    n_self = sum(1 for e in exclude if len(e))
    if n_self:
        out.notes.append(f"{n_self} query images are also catalog images; each was left out of its own search")
    ranking = {q: ps for q, (ps, _) in zip(queries, rank_products(
        qvec, catalog_vecs, cat_pid, depth=cfg.depth, block_size=cfg.block_size, exclude=exclude))}
    out.scores = per_query_metrics({q: qrels[q] for q in queries}, ranking, ks=ks or cfg.ks,
                                   threshold=cfg.relevance_threshold, gain=cfg.ndcg_gain)
    top = ws.read_table("products", ["product_id", "top_category"])
    out.category = query_categories(qrels, dict(zip(*(top.column(c).to_pylist()
                                                      for c in ("product_id", "top_category")))))
    return out


def evaluate_stage(ws: Workspace, *, model: str, embeddings: str | Path | None = None,
                   baseline: str | None = None) -> EvaluateResult:
    """Evaluate `model`'s embeddings (from `embeddings`, else `features/<model>/`) on the eval qrels.

    Writes `eval_metrics` and `eval_query_scores` (one part per model, replacing that model's earlier results);
    with `baseline`, compares per-query scores against that model's stored ones with a paired test.
    """
    cfg = ws.config.evaluate
    src = Path(embeddings) if embeddings is not None else features_path(ws.root, model)
    res = EvaluateResult(model=model, baseline=baseline)
    qrels = load_qrels(ws)
    # A reader: its result parts are its own (one per model and run), so it never waits for a pipeline run.
    with ws.run("evaluate", {**section_params(ws.config, "evaluate"), "model": model, "embeddings": str(src),
                             "baseline": baseline}, lock=False) as run:
        run.inputs = {"eval_qrels": ws.table_fingerprint("eval_qrels")}
        res.run_id = run.run_id
        for counts in judged_counts(qrels).values():
            for g, n in counts.items():
                res.judged_by_grade[g] = res.judged_by_grade.get(g, 0) + n
        ids, vectors = read_embeddings(src)
        scored = score_embeddings(ws, qrels, ids, vectors)
        for name in ("queries", "queries_without_embedding", "catalog_products", "catalog_images",
                     "catalog_images_without_embedding"):
            setattr(res, name, getattr(scored, name))
        res.notes.extend(scored.notes)
        scores, category = scored.scores, scored.category
        rng = np.random.default_rng(cfg.seed)
        per_query_rows, metric_rows = [], []
        for m in metric_names(cfg.ks):
            by_q = scores[m]
            for q, v in by_q.items():
                per_query_rows.append({"model": model, "query_id": q, "metric": m, "value": v,
                                       "category": category[q], "run_id": run.run_id})
            for cat_name in ["*", *sorted({category[q] for q in by_q})]:
                vals = np.array([v for q, v in by_q.items() if cat_name == "*" or category[q] == cat_name])
                lo, hi = bootstrap_ci(vals, resamples=cfg.bootstrap, confidence=cfg.confidence, rng=rng)
                metric_rows.append({"model": model, "metric": m, "category": cat_name,
                                    "value": float(vals.mean()) if len(vals) else float("nan"), "ci_low": lo,
                                    "ci_high": hi, "n_queries": len(vals), "run_id": run.run_id})
        res.metrics = metric_rows
        part = _part_name(model)
        ws.write_part("eval_metrics", pa.Table.from_pylist(metric_rows, schema=EVAL_METRICS), part)
        ws.write_part("eval_query_scores", pa.Table.from_pylist(per_query_rows, schema=EVAL_QUERY_SCORES), part)

        if baseline is not None:
            base = ws.read_table("eval_query_scores")
            base_rows = [r for r in base.to_pylist() if r["model"] == baseline]
            if not base_rows:
                raise ValueError(f"no stored scores of baseline model {baseline!r}; evaluate it first")
            for m in metric_names(cfg.ks):
                a = {r["query_id"]: r["value"] for r in base_rows if r["metric"] == m}
                if set(a) & set(scores[m]):
                    res.comparisons.append(paired_test(a, scores[m], metric=m, permutations=cfg.permutations,
                                                       resamples=cfg.bootstrap, confidence=cfg.confidence,
                                                       rng=rng))
        run.notes.extend(res.notes)
        run.counts = {"queries": res.queries, "queries_without_embedding": res.queries_without_embedding,
                      "catalog_products": res.catalog_products, "catalog_images": res.catalog_images,
                      "catalog_images_without_embedding": res.catalog_images_without_embedding,
                      **{f"judged_grade_{g}": n for g, n in sorted(res.judged_by_grade.items())}}
    return res
