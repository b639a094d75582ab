"""The dedup stage: products + hashed images in, `product_groups` and `duplicate_edges` out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa

from visprep.config import DedupConfig
from visprep.dedup.candidates import NO_DISTANCE, CandidatePairs, DedupParams, find_duplicates
from visprep.dedup.groups import canonical_members, connected_groups
from visprep.dedup.phases import PhaseClock
from visprep.dedup.visual import signature_batch, signatures_from_table
from visprep.engines import get_engine
from visprep.images.signature import CODE_COLUMNS, COLOR_COLUMNS
from visprep.images.sniff import extension_for
from visprep.rules import parse_rule
from visprep.schema import DUPLICATE_EDGES, PRODUCT_GROUPS
from visprep.stages import StageOutput
from visprep.views.scan import read_columns
from visprep.workspace import RunRecord, Workspace

SIGNATURE_COLUMNS = CODE_COLUMNS + COLOR_COLUMNS


@dataclass
class DedupResult:
    """Counts of one dedup run."""

    products: int = 0
    groups: int = 0
    products_in_groups: int = 0  # products in a group of two or more
    accepted_pairs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    peak_rss_mib: dict[str, int] = field(default_factory=dict)  # peak RSS per phase (`phases.PhaseClock`)
    run_id: str = ""


def params_from_config(cfg: DedupConfig) -> DedupParams:
    """The `find_duplicates` parameters of a `dedup` config section."""
    return DedupParams(**{k: getattr(cfg, k) for k in DedupParams.__dataclass_fields__})  # image_checks: the stage


def hashed_images(ws: Workspace) -> pa.Table:
    """(product_id, image_id, phash, format, the signature columns) of every product image whose newest fetch
    succeeded and that decoded, a product's images in listing order (its hero image first)."""
    from visprep.views.db import connect
    from visprep.views.scan import query_arrow, scan_view

    sig = ", ".join(f"any_value(i.{c}) AS {c}" for c in SIGNATURE_COLUMNS)
    # DuckDB reads the three tables' Parquet parts itself, only these columns: the urls table with every fetch
    # attempt and the images table with every inspect figure never sit in memory whole.
    con = connect(preserve_insertion_order=False)
    try:
        scan_view(con, ws, "product_images", ["product_id", "position", "url"], name="pi")
        scan_view(con, ws, "urls", ["url", "status", "image_id", "format", "fetched_at"], name="fetched")
        scan_view(con, ws, "images", ["image_id", "status", "phash", *SIGNATURE_COLUMNS], name="i")
        return query_arrow(con, f"""
            WITH u AS (SELECT url, status, image_id, format FROM fetched
                       QUALIFY row_number() OVER (PARTITION BY url ORDER BY fetched_at DESC) = 1)
            SELECT pi.product_id, u.image_id, any_value(i.phash) AS phash, any_value(u.format) AS format, {sig}
            FROM pi
            JOIN u ON u.url = pi.url AND u.status = 'ok'
            JOIN i ON i.image_id = u.image_id AND i.status = 'ok' AND i.phash IS NOT NULL
            GROUP BY pi.product_id, u.image_id
            ORDER BY pi.product_id, min(pi.position), u.image_id
            """)
    finally:
        con.close()


def embedding_lookup(ws: Workspace, image_ids: list[str]) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """fn(image rows) -> (vectors, found) from the feature store of the `[embed]` model, for `embedding_similar`;
    FileNotFoundError (naming the model and `visprep embed`) when that store was never written."""
    from visprep.embed.registry import model_id_of
    from visprep.embed.store import FeatureStore
    from visprep.views.features import features_root

    cfg = ws.config.embed
    options = dict(cfg.options)
    if cfg.threads:
        options.setdefault("threads", cfg.threads)
    store = FeatureStore.open_existing(features_root(ws), model_id_of(cfg.model, **options))
    # The store reads all its vectors for one bulk lookup (N x dim float32): called once, for the needed rows.
    return lambda rows: store.get([image_ids[r] for r in rows.tolist()])


def group_products(product_ids: list[str], pairs: CandidatePairs, image_count: np.ndarray) -> pa.Table:
    """`product_groups` rows: union-find over accepted pairs; the canonical member has the most images, then the
    smallest product id; the group id is the group's smallest product id (stable when the canonical one changes)."""
    n = len(product_ids)
    labels = connected_groups(n, pairs.a[pairs.accepted], pairs.b[pairs.accepted])
    canonical = canonical_members(labels, [(-int(c), p) for c, p in zip(image_count.tolist(), product_ids)])
    smallest = canonical_members(labels, [(p,) for p in product_ids])
    sizes = np.bincount(labels, minlength=int(labels.max()) + 1 if n else 0)
    pid = np.asarray(product_ids, dtype=object)
    return pa.table({
        "product_id": pa.array(product_ids, pa.string()),
        "group_id": pa.array(pid[smallest].tolist() if n else [], pa.string()),
        "canonical_product_id": pa.array(pid[canonical].tolist() if n else [], pa.string()),
        "group_size": pa.array(sizes[labels].astype(np.int32) if n else [], pa.int32()),
    }, schema=PRODUCT_GROUPS)


def edge_rows(product_ids: list[str], image_ids: list[str], pairs: CandidatePairs, *, run_id: str,
              keep_rejected: bool) -> pa.Table:
    """`duplicate_edges` rows: one per (pair, signal that holds evidence), for accepted pairs (and rejected ones when
    `keep_rejected`; pairs a veto rejected are always kept, with the evidence that vetoed them)."""
    sel = np.flatnonzero(pairs.accepted | pairs.vetoed | keep_rejected)
    pid = np.asarray(product_ids, dtype=object)
    iid = np.asarray(list(image_ids) + [None], dtype=object)  # index -1 -> None
    # One Arrow table per signal, not Python lists of every edge's values: vetoed pairs alone are tens of
    # thousands at 30k products, each edge nine Python objects.
    blocks: list[pa.Table] = []

    def add(rows: np.ndarray, signal: str, distance: np.ndarray | None, similarity: np.ndarray | None,
            ia: np.ndarray | None, ib: np.ndarray | None) -> None:
        n = len(rows)
        first, second = pid[pairs.a[rows]], pid[pairs.b[rows]]
        swap = first > second  # product_a < product_b, by id
        none = np.full(n, None, dtype=object)
        ia = none if ia is None else np.asarray(ia, dtype=object)
        ib = none if ib is None else np.asarray(ib, dtype=object)
        blocks.append(pa.table({
            "product_a": pa.array(np.where(swap, second, first), pa.string()),
            "product_b": pa.array(np.where(swap, first, second), pa.string()),
            "signal": pa.array(np.full(n, signal, dtype=object), pa.string()),
            "distance": pa.nulls(n, pa.int16()) if distance is None else pa.array(distance.astype(np.int64),
                                                                                   pa.int16()),
            "similarity": pa.nulls(n, pa.float32()) if similarity is None else pa.array(similarity, pa.float32()),
            "image_a": pa.array(np.where(swap, ib, ia), pa.string()),
            "image_b": pa.array(np.where(swap, ia, ib), pa.string()),
            "accepted": pa.array(pairs.accepted[rows], pa.bool_()),
        }))

    ident = sel[pairs.identical_image[sel]]
    add(ident, "identical_image", np.zeros(len(ident), np.int64), None, None, None)
    hashed = sel[pairs.distance[sel] != NO_DISTANCE]
    add(hashed, "phash", pairs.distance[hashed], None, iid[pairs.image_a[hashed]], iid[pairs.image_b[hashed]])
    trimmed = sel[pairs.trimmed_distance[sel] != NO_DISTANCE]
    add(trimmed, "trimmed_phash", pairs.trimmed_distance[trimmed], None, iid[pairs.trimmed_a[trimmed]],
        iid[pairs.trimmed_b[trimmed]])
    colored = sel[~np.isnan(pairs.color_distance[sel])]
    add(colored, "color", np.rint(pairs.color_distance[colored]), None, None, None)
    for attr in ("color", "brand"):
        declared = sel[getattr(pairs, f"declared_{attr}_differs")[sel]]
        add(declared, f"declared_{attr}_differs", None, None, None, None)
    embedded = sel[~np.isnan(pairs.embedding_similarity[sel])]
    add(embedded, "embedding", None, pairs.embedding_similarity[embedded], None, None)
    titled = sel[pairs.same_category[sel]]
    add(titled, "title", None, pairs.title_similarity[titled], None, None)
    table = pa.concat_tables(blocks)
    table = table.append_column("run_id", pa.array(np.full(table.num_rows, run_id, dtype=object), pa.string()))
    return table.select(DUPLICATE_EDGES.names).cast(DUPLICATE_EDGES)


def dedup_stage(ws: Workspace) -> DedupResult:
    """Write `product_groups` (every product) and `duplicate_edges` (the evidence of each accepted pair)."""
    from visprep.pipeline import execute

    return execute(ws, "dedup", compute_dedup)


def _signatures_on_workers(ws: Workspace, run: RunRecord, image_ids: list[str], image_ext: list[str]
                           ) -> Callable[[list[int]], list[dict]] | None:
    """With an engine whose workers run elsewhere (Ray), the image checks' decodes as its tasks
    (`visual.signature_batch`, a batch of `inspect.batch_size` images each; only the signature numbers come
    back); None for the local engine, whose decodes stay in this process's threads (`dedup.workers`)."""
    engine = get_engine(ws.config)
    run.metrics["engine"] = engine.name
    if not engine.remote:
        return None
    task = partial(signature_batch, tolerance=ws.config.dedup.trim_tolerance)

    def rows(image_rows: list[int]) -> list[dict]:
        items = [(image_ids[r], ws.store.ref(image_ids[r], image_ext[r])) for r in image_rows]
        return [row for _, out in engine.map_batches(task, items, batch_size=ws.config.inspect.batch_size)
                for row in out]

    return rows


def compute_dedup(ws: Workspace, run: RunRecord) -> StageOutput:
    """The dedup stage's computation over the real catalog: its two tables and counts."""
    cfg = ws.config.dedup
    res = DedupResult(run_id=run.run_id)
    clock = PhaseClock()
    products = read_columns(ws, "products", ["product_id", "title", "top_category", "color", "brand"])
    product_ids = products.column("product_id").to_pylist()
    index = {p: k for k, p in enumerate(product_ids)}
    imgs = hashed_images(ws)
    img_pid = imgs.column("product_id").to_pylist()
    known = [k for k, p in enumerate(img_pid) if p in index]  # product_images of removed products are ignored
    image_ids = [imgs.column("image_id")[k].as_py() for k in known] if len(known) < len(img_pid) \
        else imgs.column("image_id").to_pylist()
    fmts = imgs.column("format").to_pylist()
    ext_of = {f: extension_for(f or "jpeg") for f in set(fmts)}
    image_ext = [ext_of[fmts[k]] for k in known]
    image_product = np.asarray([index[img_pid[k]] for k in known], dtype=np.int64)
    codes = imgs.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64)[known] if known \
        else np.empty(0, np.uint64)
    # The signatures inspect stored; images inspected before they existed are decoded here, those rows only.
    signatures = signatures_from_table(imgs.take(pa.array(known, pa.int64())) if len(known) < len(img_pid)
                                       else imgs) if cfg.image_checks else None
    columns = {c: products.column(c).to_pylist() for c in ("title", "top_category", "color", "brand")}
    # The Arrow tables and lookups are not needed any more: at 1M products they are hundreds of MiB.
    del products, index, imgs, img_pid, fmts, known
    clock.lap("read")
    pairs = find_duplicates(product_ids, columns.pop("title"), columns.pop("top_category"), image_product,
                            image_ids, codes, params=params_from_config(cfg), colors=columns.pop("color"),
                            brands=columns.pop("brand"),
                            image_loader=(lambda r: ws.store.get(image_ids[r], image_ext[r]))
                            if cfg.image_checks else None, signatures=signatures,
                            embeddings=embedding_lookup(ws, image_ids)
                            if "embedding_similar" in parse_rule(cfg.rule).names else None,
                            keep_all=cfg.keep_rejected_edges,  # else only the pairs the edges keep
                            signature_rows=_signatures_on_workers(ws, run, image_ids, image_ext)
                            if cfg.image_checks else None)
    after = PhaseClock()
    groups = group_products(product_ids, pairs, np.bincount(image_product, minlength=len(product_ids)))
    edges = edge_rows(product_ids, image_ids, pairs, run_id=run.run_id, keep_rejected=cfg.keep_rejected_edges)
    after.lap("groups")
    res.seconds = {**clock.seconds, **pairs.seconds, **after.seconds}
    res.peak_rss_mib = {**clock.peak_rss_mib, **pairs.peak_rss_mib, **after.peak_rss_mib}
    sizes = groups.column("group_size").to_numpy()
    res.products = len(product_ids)
    res.groups = len(set(groups.column("group_id").to_pylist()))
    res.products_in_groups = int((sizes > 1).sum())
    res.accepted_pairs = int(pairs.accepted.sum())
    res.counts = pairs.counts
    return StageOutput(tables={"product_groups": groups, "duplicate_edges": edges}, result=res,
                       counts={**pairs.counts, "groups": res.groups, "products_in_groups": res.products_in_groups})
