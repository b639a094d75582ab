"""Stale embeddings: products whose current images have no vector from the current model.

The feature store is keyed by image id = sha256 of the bytes, one folder per model id. So a product's embedding is
out of date in exactly three ways, reported with the first that applies:

- `image_changed`: a URL of the product was fetched again and now gives other bytes (a new image id) while the
  store holds a vector of the URL's earlier image: the embedding is older than the image;
- `other_model`: its current images have vectors only from another model id (e.g. before an upgrade of
  `embed.model` or its weights);
- `not_embedded`: no vector at all (new products, or `visprep embed` never ran since they came).

`partial` products have vectors for some of their images but not all. `visprep embed` fixes every case: it embeds
exactly the decoded images without a vector of the current model (it is incremental).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from visprep.views.catalog import all_images, all_latest_urls, all_product_images, all_products
from visprep.workspace import Workspace

REASONS = ("image_changed", "other_model", "not_embedded")


@dataclass
class StaleReport:
    """What `stale_embeddings` found."""

    model_id: str
    products: int = 0  # products with at least one decoded image
    up_to_date: int = 0
    partial: int = 0  # some images embedded, some not
    stale: dict[str, int] = field(default_factory=dict)  # products without any current vector, by reason
    images_to_embed: int = 0  # distinct decoded images without a current vector
    no_image: int = 0  # catalog products with no decoded image (nothing to embed)
    other_models: dict[str, int] = field(default_factory=dict)  # model id -> vectors in its store
    examples: list[dict[str, Any]] = field(default_factory=list)
    fix: str = "visprep embed"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"model_id": self.model_id, "products": self.products, "up_to_date": self.up_to_date,
                "partial": self.partial, "stale": self.stale, "images_to_embed": self.images_to_embed,
                "no_image": self.no_image, "other_models": self.other_models, "examples": self.examples,
                "fix": self.fix}


def current_model_id(ws: Workspace) -> str:
    """The model id `visprep embed` would write with the workspace's config (no weights loaded when avoidable)."""
    from visprep.config import section_params
    from visprep.embed import registry

    cfg = ws.config.embed
    options = dict(cfg.options)
    if cfg.threads:
        options.setdefault("threads", cfg.threads)
    registry._load_builtins()
    factory = registry._REGISTRY.get(cfg.model)
    if factory is not None and not callable(getattr(factory, "model_id_for", None)):
        # A factory that can only tell its id by loading weights (open_clip, timm, hf, plug-ins): `status` must
        # stay cheap, so take the id the last embed run recorded when it ran with this very embed config.
        last = ws.last_run("embed")
        if last and last.get("params", {}).get("embed") == section_params(ws.config, "embed")["embed"]:
            return str(last["params"]["model_id"])
    return registry.model_id_of(cfg.model, **options)


def _store_ids(ws: Workspace, model_id: str | None) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(current model's (image_id, made_at), other models' (image_id, model_id), other model -> row count)."""
    from visprep.embed.store import FeatureStore
    from visprep.views.features import features_root

    current = pa.table({"image_id": pa.array([], pa.string()),
                        "made_at": pa.array([], pa.timestamp("us", tz="UTC"))})
    others: list[pa.Table] = []
    counts: dict[str, int] = {}
    root = features_root(ws)
    metas = sorted(root.glob("*/meta.json")) if root.is_dir() else []
    for meta in metas:
        mid = json.loads(meta.read_text())["model_id"]
        t = FeatureStore.open_existing(root, mid).table(["image_id", "made_at"])
        if mid == model_id:
            current = t
        else:
            counts[mid] = t.num_rows
            others.append(pa.table({"image_id": t.column("image_id"),
                                    "model_id": pa.array([mid] * t.num_rows, pa.string())}))
    other = pa.concat_tables(others) if others else pa.table({"image_id": pa.array([], pa.string()),
                                                              "model_id": pa.array([], pa.string())})
    return current, other, counts


def stale_embeddings(ws: Workspace, *, model_id: str | None = None, examples: int = 20) -> StaleReport:
    """Products without a current embedding (by reason), partial ones, and the images `visprep embed` would embed.

    Args:
        model_id: the current model; default `current_model_id(ws)`.
        examples: how many stale products to list (most images first).
    """
    model_id = model_id or current_model_id(ws)
    current, other, counts = _store_ids(ws, model_id)
    rep = StaleReport(model_id=model_id, other_models=counts)
    urls = ws.read_table("urls", ["url", "status", "image_id", "fetched_at"])
    per_product = ws.sql("""
        WITH cur_img AS (
            SELECT DISTINCT pi.product_id, pi.url, u.image_id, u.fetched_at FROM pi
            JOIN lu u ON u.url = pi.url AND u.status = 'ok'
            JOIN im ON im.image_id = u.image_id AND im.status = 'ok'),
        have AS (SELECT image_id, max(made_at) AS made_at FROM cur GROUP BY 1),
        oth AS (SELECT image_id, min(model_id) AS model_id FROM other GROUP BY 1),
        old AS (  -- vectors of earlier bytes of the same URL
            SELECT c.url, c.image_id AS new_image, max(h.made_at) AS made_at FROM cur_img c
            JOIN hist x ON x.url = c.url AND x.status = 'ok' AND x.image_id <> c.image_id
            JOIN have h ON h.image_id = x.image_id GROUP BY 1, 2),
        per_img AS (
            SELECT c.product_id, c.image_id, c.fetched_at, h.image_id IS NOT NULL AS embedded,
                   o.model_id AS other_model, old.made_at AS old_made_at
            FROM cur_img c LEFT JOIN have h ON h.image_id = c.image_id
            LEFT JOIN oth o ON o.image_id = c.image_id
            LEFT JOIN old ON old.url = c.url AND old.new_image = c.image_id)
        SELECT product_id, count(DISTINCT image_id) AS images,
               count(DISTINCT image_id) FILTER (WHERE embedded) AS embedded,
               bool_or(NOT embedded AND old_made_at IS NOT NULL) AS image_changed,
               max(old_made_at) AS embedded_at, max(fetched_at) FILTER (WHERE old_made_at IS NOT NULL) AS refetched_at,
               min(other_model) FILTER (WHERE NOT embedded) AS other_model
        FROM per_img GROUP BY 1 ORDER BY images DESC, product_id""",
        pi=all_product_images(ws, ["product_id", "url"]), lu=all_latest_urls(ws),
        im=all_images(ws, ["image_id", "status"]), cur=current, other=other, hist=urls)
    todo = ws.sql("""
        SELECT count(DISTINCT i.image_id) AS n FROM im i LEFT JOIN cur c ON c.image_id = i.image_id
        WHERE i.status = 'ok' AND c.image_id IS NULL""",
        im=all_images(ws, ["image_id", "status"]), cur=current)
    rep.images_to_embed = int(todo.column("n")[0].as_py() or 0)
    rep.no_image = max(0, all_products(ws, ["product_id"]).num_rows - per_product.num_rows)
    states = ws.sql("""
        SELECT *, CASE WHEN embedded = images THEN 'up_to_date' WHEN embedded > 0 THEN 'partial'
                       WHEN image_changed THEN 'image_changed' WHEN other_model IS NOT NULL THEN 'other_model'
                       ELSE 'not_embedded' END AS state
        FROM t""", t=per_product)
    counts = ws.sql("SELECT state, count(*) AS n FROM s GROUP BY 1", s=states).to_pylist()
    by_state = {r["state"]: int(r["n"]) for r in counts}
    rep.products = per_product.num_rows
    rep.up_to_date, rep.partial = by_state.get("up_to_date", 0), by_state.get("partial", 0)
    rep.stale = {r: by_state.get(r, 0) for r in REASONS}
    listed = ws.sql(f"""SELECT * FROM s WHERE state IN ({', '.join(repr(r) for r in REASONS)})
                        ORDER BY images DESC, product_id LIMIT {int(examples)}""", s=states).to_pylist()
    for row in listed:
        detail = {"image_changed": f"embedded {row['embedded_at']}, image re-fetched {row['refetched_at']}",
                  "other_model": f"embedded by {row['other_model']} only",
                  "not_embedded": "no vector"}[row["state"]]
        rep.examples.append({"product_id": row["product_id"], "reason": row["state"], "images": row["images"],
                             "detail": detail})
    return rep
