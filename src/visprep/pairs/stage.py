"""The pairs stage: positives from the catalog and other-category negatives, within each split."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pyarrow as pa

from visprep.config import section_params
from visprep.schema import PAIRS
from visprep.workspace import Workspace


@dataclass
class PairsResult:
    """Counts of one pairs run."""

    products: int = 0
    images: int = 0
    same_product: int = 0
    image_title: int = 0
    negatives: int = 0
    products_single_image: int = 0


def usable_images(ws: Workspace) -> pa.Table:
    """Return one row per (product, good image): product_id, image_id, position, source, split, title, top_category.

    An image is usable when its newest fetch succeeded and it decoded; a photo listed twice in one product counts once.
    """
    return ws.sql(
        """
        SELECT pi.product_id, u.image_id, min(pi.position) AS position, min(pi.source) AS source,
               min(s.split) AS split, min(s.group_id) AS group_id, min(p.title) AS title, min(p.top_category) AS top_category
        FROM pi
        JOIN u ON u.url = pi.url AND u.status = 'ok'
        JOIN i ON i.image_id = u.image_id AND i.status = 'ok'
        JOIN p ON p.product_id = pi.product_id
        JOIN s ON s.product_id = pi.product_id
        GROUP BY pi.product_id, u.image_id
        ORDER BY pi.product_id, position
        """,
        pi=ws.read_table("product_images"), u=ws.latest_urls(), i=ws.read_table("images", ["image_id", "status"]),
        p=ws.read_table("products", ["product_id", "title", "top_category"]), s=ws.read_table("splits"),
    )


def same_product_pairs(product_ids: list[str], image_ids: list[str], sources: list[str], *, max_per_product: int,
                       weight: float, synthetic_weight: float) -> list[tuple[str, str, str, float]]:
    """Every pair of different images of one product (rows grouped by product), capped per product."""
    out = []
    start = 0
    n = len(product_ids)
    while start < n:
        end = start
        while end < n and product_ids[end] == product_ids[start]:
            end += 1
        idx = range(start, end)
        for k, (a, b) in enumerate(combinations(idx, 2)):
            if k >= max_per_product:
                break
            w = weight if sources[a] == sources[b] == "catalog" else synthetic_weight
            out.append((product_ids[a], image_ids[a], image_ids[b], w))
        start = end
    return out


def sample_distinct(n_rows: int, pool_size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Return (n_rows, k) indices into a pool, distinct within each row, uniform (Floyd's algorithm, vectorised)."""
    if k > pool_size:
        raise ValueError(f"cannot draw {k} distinct items from a pool of {pool_size}")
    out = np.empty((n_rows, k), dtype=np.int64)
    for col, j in enumerate(range(pool_size - k, pool_size)):
        t = rng.integers(0, j + 1, size=n_rows)
        taken = (out[:, :col] == t[:, None]).any(axis=1)
        out[:, col] = np.where(taken, j, t)
    return out


def other_category_negatives(top: np.ndarray, k: int, rng: np.random.Generator
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row, draw up to `k` distinct rows of another top-level category: (anchor_idx, negative_idx, rank).

    Rows whose category is the only one present get no negatives.
    """
    empty = np.empty(0, np.int64)
    cats, inverse = np.unique(top, return_inverse=True)
    if len(cats) < 2 or k == 0:
        return empty, empty, empty
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(cats) + 1))
    anchors, negs, ranks = [], [], []
    for c in range(len(cats)):
        members = order[bounds[c] : bounds[c + 1]]
        pool = np.concatenate([order[: bounds[c]], order[bounds[c + 1] :]])
        kk = min(k, len(pool))
        chosen = pool[sample_distinct(len(members), len(pool), kk, rng)]
        anchors.append(np.repeat(members, kk))
        negs.append(chosen.reshape(-1))
        ranks.append(np.tile(np.arange(1, kk + 1), len(members)))
    return np.concatenate(anchors), np.concatenate(negs), np.concatenate(ranks)


def interaction_positive_products(ws: Workspace) -> list[tuple[str, str]]:
    """Product pairs the events stage found positive (click/add_to_cart/purchase/coview rows of `interaction_pairs`)."""
    from visprep.mining.skip_above import POSITIVE_KINDS

    if not ws.has_table("interaction_pairs"):
        return []
    t = ws.sql("SELECT DISTINCT anchor_id, product_id FROM t WHERE anchor_type = 'product' AND kind IN "
               f"({', '.join(repr(k) for k in POSITIVE_KINDS)}) AND anchor_id <> product_id",
               t=ws.read_table("interaction_pairs", ["anchor_id", "anchor_type", "product_id", "kind"]))
    return list(zip(t.column("anchor_id").to_pylist(), t.column("product_id").to_pylist()))


def known_positive_mask(anchor_group: np.ndarray, negative_group: np.ndarray,
                        positive_pairs: np.ndarray) -> np.ndarray:
    """(M,) bool: is (anchor_group[i], negative_group[i]) a known positive pair, in either direction.

    Args:
        anchor_group, negative_group: (M,) int64 group codes.
        positive_pairs: (P, 2) int64 group-code pairs (undirected).
    """
    if len(positive_pairs) == 0 or len(anchor_group) == 0:
        return np.zeros(len(anchor_group), bool)
    width = int(max(anchor_group.max(), negative_group.max(), positive_pairs.max())) + 1
    keys = np.concatenate([positive_pairs[:, 0] * width + positive_pairs[:, 1],
                           positive_pairs[:, 1] * width + positive_pairs[:, 0]])
    return np.isin(anchor_group * width + negative_group, keys)


def pairs_stage(ws: Workspace) -> PairsResult:
    """Write `pairs` and the other_category rows of `negatives` from products with usable images."""
    cfg = ws.config.pairs
    res = PairsResult()
    with ws.run("pairs", section_params(ws.config, "pairs")) as run:
        run.inputs = {t: ws.table_fingerprint(t) for t in ("products", "product_images", "urls", "images", "splits",
                                                            "interaction_pairs")}
        imgs = usable_images(ws)
        pid = imgs.column("product_id").to_pylist()
        iid = imgs.column("image_id").to_pylist()
        src = imgs.column("source").to_pylist()
        split = imgs.column("split").to_pylist()
        title = imgs.column("title").to_pylist()
        res.images = len(iid)
        res.products = len(set(pid))
        split_of = dict(zip(pid, split))
        title_of = dict(zip(pid, title))
        rows = []
        for p, a, b, w in same_product_pairs(pid, iid, src, max_per_product=cfg.max_pairs_per_product,
                                             weight=cfg.same_product_weight, synthetic_weight=cfg.synthetic_weight):
            rows.append({"anchor_id": a, "positive_id": b, "kind": "same_product", "weight": w,
                         "anchor_product_id": p, "positive_product_id": p, "split": split_of[p]})
        res.same_product = len(rows)
        res.products_single_image = res.products - len({r["anchor_product_id"] for r in rows})
        if cfg.image_title:
            for p, a in zip(pid, iid):
                rows.append({"anchor_id": a, "positive_text": title_of[p], "kind": "image_title", "weight": 1.0,
                             "anchor_product_id": p, "positive_product_id": p, "split": split_of[p]})
            res.image_title = len(iid)
        ws.write_table("pairs", pa.Table.from_pylist(rows, schema=PAIRS))

        rng = np.random.default_rng(cfg.seed)
        neg_rows: dict[str, list] = {c: [] for c in ("anchor_id", "negative_id", "anchor_product_id",
                                                     "negative_product_id", "split", "rank")}
        split_arr = np.asarray(split, dtype=object)
        top_arr = np.asarray(imgs.column("top_category").to_pylist(), dtype=object)
        iid_arr = np.asarray(iid, dtype=object)
        pid_arr = np.asarray(pid, dtype=object)
        group_arr = np.asarray(imgs.column("group_id").to_pylist(), dtype=object)
        # Interaction positives (events stage) are lifted to groups, as the mine stage does: a clicked or co-viewed
        # product is a positive of every image of the anchor's group, so never its other-category negative.
        gnames, gcode = np.unique(group_arr.astype(str), return_inverse=True) if len(group_arr) else \
            (np.zeros(0, str), np.zeros(0, np.int64))
        code_of_group = {g: i for i, g in enumerate(gnames.tolist())}
        group_of_product = {p: code_of_group[str(g)] for p, g in zip(pid, group_arr.tolist())}
        inter = [(group_of_product[a], group_of_product[b]) for a, b in interaction_positive_products(ws)
                 if a in group_of_product and b in group_of_product]
        inter_pairs = np.array(inter, np.int64).reshape(-1, 2)
        dropped_interaction = 0
        for s in sorted(set(split)):
            rows_s = np.flatnonzero(split_arr == s)
            a, n, rank = other_category_negatives(top_arr[rows_s].astype(str), cfg.negatives_per_anchor, rng)
            a, n = rows_s[a], rows_s[n]
            # One photo can be listed by products of two categories: never pair an image with itself, and
            # never two members of one product group (near-duplicates are positives, whatever their category).
            keep = (iid_arr[a] != iid_arr[n]) & (group_arr[a] != group_arr[n])
            known = keep & known_positive_mask(gcode[a], gcode[n], inter_pairs)
            dropped_interaction += int(known.sum())
            keep &= ~known
            a, n, rank = a[keep], n[keep], rank[keep]
            neg_rows["anchor_id"].extend(iid_arr[a])
            neg_rows["negative_id"].extend(iid_arr[n])
            neg_rows["anchor_product_id"].extend(pid_arr[a])
            neg_rows["negative_product_id"].extend(pid_arr[n])
            neg_rows["split"].extend([s] * len(a))
            neg_rows["rank"].extend(rank.tolist())
        table = pa.table({**{k: pa.array(v, pa.string()) for k, v in neg_rows.items() if k != "rank"},
                          "rank": pa.array(neg_rows["rank"], pa.int32()),
                          "kind": pa.array(["other_category"] * len(neg_rows["anchor_id"]), pa.string())})
        ws.write_part("negatives", table, "other_category")
        res.negatives = table.num_rows
        run.counts = {"images_in": res.images, "products_in": res.products, "same_product": res.same_product,
                      "image_title": res.image_title, "other_category_negatives": res.negatives,
                      "products_single_image": res.products_single_image,
                      "other_category_dropped_interaction_positive": dropped_interaction}
    return res
