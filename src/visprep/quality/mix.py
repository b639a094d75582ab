"""Mix user query photos into training pairs: (user photo, catalog photo of the product it was matched to).

The link: a visual search whose query photo is known (`interaction_pairs.anchor_image_id`, from the events'
`query_image_id`) and that ended in a purchase / add-to-cart / click (`quality.user_mix_kinds`) of a product. The
photo is found in `tables/queries` by its cleaned image id or by the sha256 of the bytes as uploaded. Photos that
are evaluation queries (`tables/eval_queries`) are never used, and only products of `quality.user_mix_splits`
(default train) get pairs, so nothing of the evaluation leaks into training. Without such links (no events, or
searches without a query photo id) nothing can be mixed honestly, and the result says so.

The number of pairs: `quality.user_mix_fraction` f is the target share of user-photo pairs among the positive
image pairs (same_product + user_photo) of those splits, so n = floor(f / (1 - f) * catalog pairs), capped by the
links there are; the strongest links go first (purchase > add_to_cart > click, then debiased weight). The rows
have kind "user_photo"; a rerun replaces them (idempotent) and f = 0 removes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.schema import PAIRS
from visprep.workspace import Workspace

KIND = "user_photo"


def linked_user_photos(ws: Workspace, kinds: list[str]) -> pa.Table:
    """(image_id, product_id, kind, weight): accepted user photos linked by an interaction to a product, one row per
    (photo, product) with its strongest kind, eval queries left out."""
    if not (ws.has_table("interaction_pairs") and ws.has_table("queries")) or not kinds:
        return pa.table({"image_id": pa.array([], pa.string()), "product_id": pa.array([], pa.string()),
                         "kind": pa.array([], pa.string()), "weight": pa.array([], pa.float64())})
    rank = " ".join(f"WHEN '{k}' THEN {n}" for n, k in enumerate(kinds))
    in_kinds = ", ".join(f"'{k}'" for k in kinds)
    return ws.sql(f"""
        WITH links AS (
            SELECT anchor_image_id AS ref, product_id, kind, coalesce(debiased_weight, raw_weight) AS weight
            FROM ip WHERE anchor_type = 'query' AND anchor_image_id IS NOT NULL AND kind IN ({in_kinds})),
        photos AS (
            SELECT image_id, image_id AS ref FROM q WHERE status = 'accepted' AND image_id IS NOT NULL
            UNION SELECT image_id, input_sha256 AS ref FROM q
                  WHERE status = 'accepted' AND image_id IS NOT NULL AND input_sha256 IS NOT NULL),
        held_out AS (
            SELECT DISTINCT p.image_id FROM photos p JOIN ev ON ev.query_id = p.ref
            UNION SELECT DISTINCT p.image_id FROM photos p JOIN ev ON ev.query_id = p.image_id),
        joined AS (
            SELECT p.image_id, l.product_id, l.kind, sum(l.weight) AS weight, min(CASE l.kind {rank} END) AS strength
            FROM links l JOIN photos p ON p.ref = l.ref
            WHERE p.image_id NOT IN (SELECT image_id FROM held_out)
            GROUP BY ALL)
        SELECT image_id, product_id, kind, weight FROM joined
        QUALIFY row_number() OVER (PARTITION BY image_id, product_id ORDER BY strength, weight DESC) = 1
        ORDER BY image_id, product_id""",
        ip=ws.read_table("interaction_pairs", ["anchor_type", "anchor_image_id", "product_id", "kind",
                                               "raw_weight", "debiased_weight"]),
        q=ws.read_table("queries", ["image_id", "input_sha256", "status"]),
        ev=ws.read_table("eval_queries", ["query_id"]))


def mix_user_photos(ws: Workspace) -> dict[str, Any]:
    """Replace the user_photo rows of `pairs` per `quality.user_mix_*`; return what was linked, wanted and added."""
    from visprep.pairs.stage import usable_images

    cfg = ws.config.quality
    out: dict[str, Any] = {"fraction": cfg.user_mix_fraction, "linked": 0, "eligible": 0, "catalog_pairs": 0,
                           "target": 0, "added": 0, "share": 0.0, "note": ""}
    if not ws.has_table("pairs"):
        out["note"] = "no pairs table: run `visprep pairs` first; nothing mixed"
        return out
    pairs = ws.read_table("pairs")
    is_user = pc.fill_null(pc.equal(pairs.column("kind"), KIND), False)
    base = pairs.filter(pc.invert(is_user))
    links = linked_user_photos(ws, list(cfg.user_mix_kinds))
    out["linked"] = links.num_rows
    if links.num_rows == 0:
        out["note"] = ("no user photo is linked to a product (no interaction_pairs row with a query photo id that "
                       "tables/queries holds): nothing mixed")
    imgs = usable_images(ws) if ws.has_table("splits") else None
    splits = set(cfg.user_mix_splits)
    new_rows = PAIRS.empty_table()
    if imgs is not None and imgs.num_rows and links.num_rows:
        kind_col = base.column("kind")
        same = pc.and_(pc.fill_null(pc.equal(kind_col, "same_product"), False),
                       pc.is_in(base.column("split"), value_set=pa.array(sorted(splits), pa.string())))
        n_cat = int(pc.sum(pc.fill_null(same, False)).as_py() or 0)
        out["catalog_pairs"] = n_cat
        f = cfg.user_mix_fraction
        out["target"] = int(np.floor(f / (1.0 - f) * n_cat + 1e-9))
        strength = " ".join(f"WHEN '{k}' THEN {n}" for n, k in enumerate(cfg.user_mix_kinds))
        in_splits = ", ".join(f"'{x}'" for x in sorted(splits)) or "NULL"
        # The positive: the product's catalog photo at the lowest position (a synthetic view is not a photo).
        cand = ws.sql(f"""
            WITH first AS (
                SELECT product_id, image_id, split FROM i WHERE source = 'catalog'
                QUALIFY row_number() OVER (PARTITION BY product_id ORDER BY position, image_id) = 1)
            SELECT l.image_id AS anchor_id, f.image_id AS positive_id, l.product_id, f.split
            FROM l JOIN first f ON f.product_id = l.product_id
            WHERE f.split IN ({in_splits}) AND f.image_id <> l.image_id
            ORDER BY CASE l.kind {strength} END, l.weight DESC, l.image_id, l.product_id""", i=imgs, l=links)
        out["eligible"] = cand.num_rows
        cand = cand.slice(0, out["target"])
        n = cand.num_rows
        new_rows = pa.table({
            "anchor_id": cand.column("anchor_id"), "positive_id": cand.column("positive_id"),
            "positive_text": pa.nulls(n, pa.string()), "kind": pa.array([KIND] * n, pa.string()),
            "weight": pa.array(np.full(n, cfg.user_pair_weight, np.float32)),
            "anchor_product_id": cand.column("product_id"), "positive_product_id": cand.column("product_id"),
            "split": cand.column("split")}, schema=PAIRS)
        out["added"] = n
        out["share"] = round(n / (n + n_cat), 6) if n else 0.0
        if out["added"] < out["target"]:
            out["note"] = (f"only {out['eligible']} linked user photos of {sorted(splits)} products: added "
                           f"{out['added']} of the {out['target']} the fraction asks for")
    elif links.num_rows and imgs is None:
        out["note"] = "no splits table: run `visprep split` and `visprep pairs` first; nothing mixed"
    if new_rows.num_rows or int(pc.sum(is_user).as_py() or 0):
        ws.write_table("pairs", pa.concat_tables([base, new_rows]))
    return out
