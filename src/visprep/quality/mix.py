"""Mix user query photos into training pairs: (user photo, catalog photo of the product it was matched to).

The link: a visual search whose query photo is known (`interaction_pairs.anchor_image_id`, from the events'
`query_image_id`) and that ended in a purchase / add-to-cart / click (`mix.kinds`) of a product. The
photo is found in `tables/queries` by its cleaned image id or by the sha256 of the bytes as uploaded. Photos that
are evaluation queries (`tables/eval_queries`) are never used, and only products of `mix.splits`
(default train; the evaluation split `labels.eval_split` never) get pairs, so nothing of the evaluation leaks into
training. Without such links (no events, or searches without a query photo id) nothing can be mixed honestly, and
the result says so.

The number of pairs: `mix.fraction` f is the target share of user-photo pairs among the positive
image pairs (same_product + user_photo) of those splits, so n = floor(f / (1 - f) * catalog pairs), capped by the
links there are; the strongest links go first (purchase > add_to_cart > click, then debiased weight). The
label-issue policy (`quality.policy` over `tables/label_issues`) applies to them as to the catalog pairs.

Where the rows live: their own table, `tables/user_pairs` (the `pairs` schema, kind "user_photo"), which the readers
of pairs read beside `pairs` (`all_pairs`; export writes the photos into the shards). So the pairs stage and the mix
never overwrite each other: a rerun of either leaves the other's rows alone, a rerun of the mix replaces its table
(idempotent), and f = 0 leaves it empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.schema import PAIRS
from visprep.stages import StageOutput
from visprep.views.catalog import flagged_products
from visprep.workspace import RunRecord, Workspace

KIND = "user_photo"
TABLE = "user_pairs"
STAGE = "mix"
# Its config sections are declared in `visprep.stages`: its own; quality.policy and down_weight (they reach its pairs
# as the catalog pairs); labels.eval_split (never given user photos); the [pairs] floors of `usable_images`.


def _empty_links() -> pa.Table:
    return pa.table({"image_id": pa.array([], pa.string()), "product_id": pa.array([], pa.string()),
                     "kind": pa.array([], pa.string()), "weight": pa.array([], pa.float64())})


def _sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values) or "NULL"


def eval_query_photos(ws: Workspace) -> pa.Array:
    """Image ids of the accepted user photos that are evaluation queries (`eval_queries.query_id` equal to the
    cleaned image id or to the sha256 of the upload): never training material."""
    if not (ws.has_table("queries") and ws.has_table("eval_queries")):
        return pa.array([], pa.string())
    t = ws.sql("""
        SELECT DISTINCT q.image_id FROM q JOIN ev ON ev.query_id = q.image_id OR ev.query_id = q.input_sha256
        WHERE q.status = 'accepted' AND q.image_id IS NOT NULL ORDER BY 1""",
        q=ws.read_table("queries", ["image_id", "input_sha256", "status"]),
        ev=ws.read_table("eval_queries", ["query_id"]))
    return t.column("image_id").combine_chunks()


def linked_user_photos(ws: Workspace, kinds: list[str]) -> pa.Table:
    """(image_id, product_id, kind, weight): accepted user photos linked by an interaction to a product, one row per
    (photo, product) with its strongest kind, eval queries left out."""
    if not (ws.has_table("interaction_pairs") and ws.has_table("queries")) or not kinds:
        return _empty_links()
    rank = " ".join(f"WHEN '{k}' THEN {n}" for n, k in enumerate(kinds))
    return ws.sql(f"""
        WITH links AS (
            SELECT anchor_image_id AS ref, product_id, kind, coalesce(debiased_weight, raw_weight) AS weight
            FROM ip WHERE anchor_type = 'query' AND anchor_image_id IS NOT NULL AND kind IN ({_sql_list(kinds)})),
        photos AS (
            SELECT image_id, image_id AS ref FROM q WHERE status = 'accepted' AND image_id IS NOT NULL
            UNION SELECT image_id, input_sha256 AS ref FROM q
                  WHERE status = 'accepted' AND image_id IS NOT NULL AND input_sha256 IS NOT NULL),
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
        held_out=pa.table({"image_id": eval_query_photos(ws)}))


def all_pairs(ws: Workspace, columns: list[str] | None = None) -> pa.Table:
    """`pairs` and the user-photo mix's `user_pairs`, as one table: what a reader of training pairs should read."""
    return pa.concat_tables([ws.read_table("pairs", columns), ws.read_table(TABLE, columns)])


def mix_user_photos(ws: Workspace) -> dict[str, Any]:
    """Rewrite `user_pairs` per the `[mix]` section without a run record; return what was linked, wanted and
    added (`mix_stage` is the stage: the runner writes the table)."""
    table, out = user_photo_pairs(ws)
    ws.write_table(TABLE, table)
    return out


def user_photo_pairs(ws: Workspace) -> tuple[pa.Table, dict[str, Any]]:
    """The `user_pairs` rows the `[mix]` section asks for, and what was linked, wanted and added (`pairs` is only
    read)."""
    from visprep.quality.policy import apply_policy
    from visprep.views.images import usable_images

    cfg, policy = ws.config.mix, ws.config.quality
    eval_split = ws.config.labels.eval_split
    out: dict[str, Any] = {"fraction": cfg.fraction, "linked": 0, "eligible": 0, "catalog_pairs": 0,
                           "target": 0, "added": 0, "share": 0.0, "policy_touched": 0, "note": ""}
    new_rows = PAIRS.empty_table()
    if not ws.has_table("pairs"):
        out["note"] = "no pairs table: run `visprep pairs` first; nothing mixed"
        return new_rows, out
    links = linked_user_photos(ws, list(cfg.kinds))
    out["linked"] = links.num_rows
    if links.num_rows == 0:
        out["note"] = ("no user photo is linked to a product (no interaction_pairs row with a query photo id that "
                       "tables/queries holds): nothing mixed")
    splits = sorted(set(cfg.splits) - {eval_split})
    if eval_split in cfg.splits:
        out["note"] = (out["note"] + "; " if out["note"] else "") + \
            f"mix.splits names the evaluation split {eval_split!r}: it never gets user-photo pairs"
    imgs = usable_images(ws) if ws.has_table("splits") else None
    if imgs is not None and imgs.num_rows and links.num_rows and splits:
        base = ws.read_table("pairs", ["kind", "split"])
        same = pc.and_(pc.equal(base.column("kind"), "same_product"),
                       pc.is_in(base.column("split"), value_set=pa.array(splits, pa.string())))
        n_cat = int(pc.sum(pc.fill_null(same, False)).as_py() or 0)
        out["catalog_pairs"] = n_cat
        f = cfg.fraction
        out["target"] = int(np.floor(f / (1.0 - f) * n_cat + 1e-9))
        strength = " ".join(f"WHEN '{k}' THEN {n}" for n, k in enumerate(cfg.kinds))
        # The positive: the product's catalog photo at the lowest position (a synthetic view is not a photo). A
        # "user photo" byte-identical to one of the product's own images is that image, not a user photo.
        cand = ws.sql(f"""
            WITH first AS (
                SELECT product_id, image_id, split FROM i WHERE source = 'catalog'
                QUALIFY row_number() OVER (PARTITION BY product_id ORDER BY position, image_id) = 1)
            SELECT l.image_id AS anchor_id, f.image_id AS positive_id, l.product_id, f.split
            FROM l JOIN first f ON f.product_id = l.product_id
            WHERE f.split IN ({_sql_list(splits)})
              AND NOT EXISTS (SELECT 1 FROM i WHERE i.product_id = l.product_id AND i.image_id = l.image_id)
            ORDER BY CASE l.kind {strength} END, l.weight DESC, l.image_id, l.product_id""", i=imgs, l=links)
        out["eligible"] = cand.num_rows
        cand = cand.slice(0, out["target"])
        n = cand.num_rows
        new_rows = pa.table({
            "anchor_id": cand.column("anchor_id"), "positive_id": cand.column("positive_id"),
            "positive_text": pa.nulls(n, pa.string()), "kind": pa.array([KIND] * n, pa.string()),
            "weight": pa.array(np.full(n, cfg.pair_weight, np.float32)),
            "anchor_product_id": cand.column("product_id"), "positive_product_id": cand.column("product_id"),
            "split": cand.column("split")}, schema=PAIRS)
        if ws.has_table("label_issues") and n:
            new_rows, out["policy_touched"] = apply_policy(new_rows, flagged_products(ws), policy=policy.policy,
                                                           down_weight=policy.down_weight)
        out["added"] = new_rows.num_rows
        out["share"] = round(out["added"] / (out["added"] + n_cat), 6) if out["added"] else 0.0
        if n < out["target"]:
            out["note"] = (f"only {out['eligible']} linked user photos of {splits} products: added "
                           f"{n} of the {out['target']} the fraction asks for")
    elif links.num_rows and imgs is None:
        out["note"] = "no splits table: run `visprep split` and `visprep pairs` first; nothing mixed"
    return new_rows, out


def mix_stage(ws: Workspace) -> dict[str, Any]:
    """Run the user-photo mix as a stage (a run record with the sections it reads; the runner writes the table)."""
    from visprep.pipeline import execute

    return execute(ws, STAGE, compute_mix)


def compute_mix(ws: Workspace, run: RunRecord) -> StageOutput:
    """The mix stage's computation: `user_pairs` and what was linked, wanted and added."""
    table, out = user_photo_pairs(ws)
    return StageOutput(tables={TABLE: table}, result=out, metrics={"mix": out},
                       notes=[out["note"]] if out["note"] else [], counts={"linked": out["linked"], "eligible": out["eligible"],
                               "catalog_pairs": out["catalog_pairs"], "target": out["target"],
                               "user_pairs": out["added"]})


def export_user_pairs(ws: Workspace, split_of: dict[str, str]) -> pa.Table:
    """The `user_pairs` rows export may write: each in its product's current split (`split_of`), never the
    evaluation split, never an evaluation query's photo (checked again here: the shards are what training sees)."""
    t = ws.read_table(TABLE)
    if t.num_rows == 0:
        return t
    eval_split = ws.config.labels.eval_split
    current = pa.array([split_of.get(p) for p in t.column("anchor_product_id").to_pylist()], pa.string())
    keep = pc.and_(pc.and_(pc.equal(t.column("kind"), KIND), pc.equal(current, t.column("split"))),
                   pc.not_equal(t.column("split"), eval_split))
    keep = pc.and_(pc.fill_null(keep, False),
                   pc.invert(pc.is_in(t.column("anchor_id"), value_set=eval_query_photos(ws))))
    return t.filter(keep)
