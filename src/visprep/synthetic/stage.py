"""The synth stage: extra views of catalog products for positive pairs (spec "Source 4: Synthetic Data").

For each product of the train split (all splits with ``include_eval``), up to ``max_images_per_product`` catalog
images are turned into views by a generator (`visprep.synthetic.generators`). Each view is stored, recorded in
`tables/synthetic_views` with ``source="synthetic"``, its recipe and its relation to the source product, and
given a `urls` row (so `inspect` decodes it like any stored image). Views of the same SKU (background, framing)
are added to `product_images` with ``source="synthetic"`` and the recipe, so the pairs stage pairs them with the
catalog photos at ``pairs.synthetic_weight``. Colour variants are a different product (grade 3, same style,
different colour): they get a new product id in `synthetic_views` and are never attached to the source SKU.

Eval stays real: by default only train-split products get views, and every synthetic row says
``source="synthetic"``, so any consumer can drop them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.images.decode import ImageDecodeError, decode_rgb
from visprep.images.preprocess import encode_jpeg
from visprep.images.sniff import extension_for
from visprep.schema import PRODUCT_IMAGES, SYNTHETIC_VIEWS, URLS
from visprep.synthetic.generators import ViewGenerator, make_generator
from visprep.workspace import QuarantineRecord, Workspace, utcnow

STAGE = "synth"


@dataclass
class SynthResult:
    """Counts of one synth run."""

    products: int = 0
    source_images: int = 0
    same_product_views: int = 0
    color_variants: int = 0
    failed: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    run_id: str = ""


def _generator_from_config(ws: Workspace) -> ViewGenerator:
    cfg = ws.config.synthetic
    if cfg.generator == "classical":
        return make_generator("classical", backgrounds=cfg.backgrounds, reframe_scales=cfg.reframe_scales,
                              hue_shifts_deg=cfg.hue_shifts_deg)
    return make_generator(cfg.generator)


def source_images(ws: Workspace, *, include_eval: bool, per_product: int) -> pa.Table:
    """Catalog images to make views of: product_id, image_id, format, split (lowest positions first)."""
    if not ws.has_table("splits") and not include_eval:
        raise ValueError("the synth stage needs the splits table to keep eval real (run `visprep split` first), "
                         "or synthetic.include_eval = true")
    splits = ws.read_table("splits") if ws.has_table("splits") else pa.table(
        {"product_id": pa.array([], pa.string()), "split": pa.array([], pa.string())})
    return ws.sql(
        f"""
        SELECT product_id, image_id, format, split FROM (
          SELECT pi.product_id, u.image_id, u.format, s.split,
                 row_number() OVER (PARTITION BY pi.product_id ORDER BY pi.position, u.image_id) AS k
          FROM pi JOIN u ON u.url = pi.url AND u.status = 'ok'
          LEFT JOIN s ON s.product_id = pi.product_id
          WHERE coalesce(pi.source, 'catalog') = 'catalog'
            {"" if include_eval else "AND s.split = 'train'"}
        ) WHERE k <= {int(per_product)}
        ORDER BY product_id, image_id
        """,
        pi=ws.read_table("product_images"), u=ws.latest_urls(), s=splits.select(["product_id", "split"]),
    )


def synth_stage(ws: Workspace, *, generator: ViewGenerator | None = None,
                progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Make synthetic views of catalog products; see the module docstring for what is written."""
    cfg = ws.config.synthetic
    generator = generator or _generator_from_config(ws)
    res = SynthResult()
    params = {**section_params(ws.config, "synthetic"), "resolved_generator": generator.describe()}
    with ws.run(STAGE, params) as run:
        res.run_id = run.run_id
        run.inputs = {t: ws.table_fingerprint(t) for t in ("product_images", "urls", "splits")}
        todo = source_images(ws, include_eval=cfg.include_eval, per_product=cfg.max_images_per_product)
        res.source_images = todo.num_rows
        res.products = len(set(todo.column("product_id").to_pylist()))
        views, pimg, urls, refused = [], [], [], []
        now = utcnow()
        if progress:
            progress(0, todo.num_rows)
        for pid, iid, fmt, split in zip(*(todo.column(c).to_pylist() for c in ("product_id", "image_id", "format",
                                                                              "split"))):
            # One RNG per source image, seeded from (seed, image): reruns and subsets draw the same views.
            seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}\x00{iid}".encode()).digest()[:8], "big")
            try:
                rgb = decode_rgb(ws.store.get(iid, extension_for(fmt)))
                made = generator.generate(rgb, rng=np.random.default_rng(seed))
            except (OSError, ImageDecodeError, ValueError) as exc:
                res.failed += 1
                refused.append(QuarantineRecord(reason="synth_failed", detail=f"{type(exc).__name__}: {exc}",
                                                record_id=iid, field="image_id", value=iid))
                continue
            for view in made:
                data = encode_jpeg(view.image, quality=cfg.jpeg_quality)
                vid = ws.store.put(data, "jpg")
                recipe = {**view.recipe, "derived_from": iid, "generator": generator.name}
                recipe_json = json.dumps(recipe, sort_keys=True)
                op = str(view.recipe["op"])
                res.by_op[op] = res.by_op.get(op, 0) + 1
                if view.same_product:
                    res.same_product_views += 1
                    product_id, relation, grade = pid, "same_product", 4
                    pimg.append({"product_id": pid, "position": 1000 + len(pimg), "url": ws.store.path(vid, "jpg")
                                 .as_uri(), "source": "synthetic", "recipe": recipe_json})
                else:
                    res.color_variants += 1
                    product_id = f"{pid}~{op}-{hashlib.sha256(recipe_json.encode()).hexdigest()[:10]}"
                    relation, grade = "color_variant", 3
                views.append({"image_id": vid, "source_image_id": iid, "source_product_id": pid,
                              "product_id": product_id, "relation": relation, "grade": grade, "op": op,
                              "recipe": recipe_json, "source": "synthetic", "split": split,
                              "generator": generator.name, "run_id": run.run_id})
                urls.append({"url": ws.store.path(vid, "jpg").as_uri(), "status": "ok", "image_id": vid,
                             "format": "jpeg", "bytes": len(data), "attempts": 0, "final_url": None,
                             "fetched_at": now, "run_id": run.run_id, "reason": "synthetic view"})
            if progress:
                progress(1, todo.num_rows)
        ws.write_table("synthetic_views", pa.Table.from_pylist(views, schema=SYNTHETIC_VIEWS))
        old = ws.read_table("product_images")
        kept = old.filter(pc.fill_null(pc.not_equal(old["source"], "synthetic"), True))
        ws.write_table("product_images", pa.concat_tables([kept, pa.Table.from_pylist(pimg, schema=PRODUCT_IMAGES)]))
        ws.delete_parts("urls", "synthetic")
        if urls:
            ws.write_part("urls", pa.Table.from_pylist(urls, schema=URLS), "synthetic")
        ws.quarantine(refused, stage=STAGE, run_id=run.run_id, key="all")
        run.counts = {"products_in": res.products, "source_images": res.source_images,
                      "same_product_views": res.same_product_views, "color_variants": res.color_variants,
                      "failed": res.failed, **{f"op_{k}": v for k, v in sorted(res.by_op.items())}}
    return res
