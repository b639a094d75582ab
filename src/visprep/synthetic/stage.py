"""The synth stage: extra views of catalog products for positive pairs (spec "Source 4: Synthetic Data").

For each product of the train split (all splits with ``include_eval``), up to ``max_images_per_product`` catalog
images are turned into views by a generator (`visprep.synthetic.generators`). Each view is stored and recorded in
`tables/synthetic_views` with ``source="synthetic"``, its recipe and its relation to the source product. The stage
writes only its own tables, which readers see beside the catalog's through `visprep.views.catalog`:

- `synthetic_images`: the facts of each view (size, pHash, blur, signature, ...), computed here from the bytes
  just encoded with inspect's own function (`visprep.images.facts.facts_row`), so no inspect pass is needed;
- `synthetic_product_images`: views of the same SKU (background, framing) on their source product with
  ``source="synthetic"`` and the recipe, so the pairs stage pairs them with the catalog photos at
  ``pairs.synthetic_weight``; a colour variant's image on the variant;
- `synthetic_products`: colour variants, a different product (grade 3, same style, different colour), each a
  row (`visprep.synthetic.products`) linked to its source product, never attached to the source SKU. A variant's
  split is its source's (`visprep.views.catalog.all_splits`).

The stage is incremental and idempotent: views made with the current settings are kept, only new source images
are rendered, and every table is rewritten only when its content changes.

Eval stays real: by default only train-split products get views, and every synthetic row says so
(``source="synthetic"`` / ``source_file="synthetic"``), so any consumer can drop them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.engines import get_engine, workspace_location
from visprep.engines.local import batched
from visprep.images.decode import ImageDecodeError, decode_rgb
from visprep.images.facts import facts_row
from visprep.images.preprocess import encode_jpeg
from visprep.images.sniff import extension_for
from visprep.schema import IMAGES, PRODUCT_IMAGES, PRODUCTS, SYNTHETIC_VIEWS
from visprep.synthetic.generators import GENERATORS, ViewGenerator, make_generator
from visprep.synthetic.products import (
    color_name,
    variant_color,
    variant_product_id,
    variant_product_row,
)
from visprep.synthetic.views import foreground_mask
from visprep.views.catalog import is_synthetic_product, view_url
from visprep.workspace import ImageStore, QuarantineRecord, Workspace, conform, image_file, store_at

STAGE = "synth"
RENDER_BATCH = 16
"""Source images per `render_batch` call of the stage (its progress steps)."""


@dataclass
class SynthResult:
    """Counts of one synth run: views made in this run (same_product_views, color_variants), kept from earlier
    runs (reused) and dropped (their source image is no longer a source, or the settings changed)."""

    products: int = 0
    source_images: int = 0
    same_product_views: int = 0
    color_variants: int = 0
    failed: int = 0
    reused: int = 0
    dropped: int = 0
    rendered_images: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    tables_written: list[str] = field(default_factory=list)
    run_id: str = ""

    @property
    def changed(self) -> bool:
        """Whether this run wrote any table (what a pipeline asks to know if later stages may be stale)."""
        return bool(self.tables_written)


def source_images(ws: Workspace, *, include_eval: bool, per_product: int) -> pa.Table:
    """Catalog images that decoded cleanly, to make views of: product_id, image_id, format, split (lowest positions
    first). An image inspect refused (truncated, corrupt) is already quarantined there and never a source."""
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
          JOIN im ON im.image_id = u.image_id AND im.status = 'ok'
          LEFT JOIN s ON s.product_id = pi.product_id
          WHERE coalesce(pi.source, 'catalog') = 'catalog'
            {"" if include_eval else "AND s.split = 'train'"}
        ) WHERE k <= {int(per_product)}
        ORDER BY product_id, image_id
        """,
        pi=ws.read_table("product_images"), u=ws.latest_urls(), s=splits.select(["product_id", "split"]),
        im=ws.read_table("images", ["image_id", "status"]),
    )


def params_key(generator: ViewGenerator, *, seed: int, jpeg_quality: int) -> str:
    """Hash of what decides a view's pixels: the generator and its settings, the seed, the JPEG quality."""
    blob = json.dumps({"generator": generator.describe(), "seed": seed, "jpeg_quality": jpeg_quality},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys]) if table.num_rows else table


def _same(old: pa.Table, new: pa.Table, keys: list[str]) -> bool:
    """Whether two tables hold the same rows (order aside)."""
    return old.num_rows == new.num_rows and _sorted(old, keys).equals(_sorted(new, keys))


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered view generator by name and keyword options: plain data a worker builds its generator from."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


def generator_spec(ws: Workspace) -> GeneratorSpec:
    """The spec of the generator the `[synthetic]` section names."""
    cfg = ws.config.synthetic
    if cfg.generator == "classical":
        return GeneratorSpec("classical", {"backgrounds": list(cfg.backgrounds),
                                           "reframe_scales": list(cfg.reframe_scales),
                                           "hue_shifts_deg": list(cfg.hue_shifts_deg)})
    return GeneratorSpec(cfg.generator)


_BUILT: dict[str, tuple[Any, ViewGenerator]] = {}
"""Generators built from specs in this process, by spec: a worker builds one (a diffusion model loads once)."""


def generator_for(spec: GeneratorSpec) -> ViewGenerator:
    """The generator of `spec`, built once per process; rebuilt when the name was registered anew since."""
    key = json.dumps([spec.name, dict(spec.options)], sort_keys=True, default=repr)
    factory = GENERATORS.get(spec.name)
    hit = _BUILT.get(key)
    if hit is not None and hit[0] is factory:
        return hit[1]
    generator = make_generator(spec.name, **spec.options)
    _BUILT[key] = (factory, generator)
    return generator


def _generator_from_config(ws: Workspace) -> ViewGenerator:
    spec = generator_spec(ws)
    return make_generator(spec.name, **spec.options)


def render_batch(sources: Sequence[tuple[str, str, str, str | None]], generator_spec: GeneratorSpec | ViewGenerator,
                 *, store: ImageStore | str, seed: int, jpeg_quality: int, max_pixels: int, max_decoded_bytes: int,
                 taken: Container[str] = frozenset()) -> list[dict]:
    """Render the views of `(product_id, image_id, path, split)` source images: one row per source, {product_id,
    image_id, status ("ok" or "synth_failed"), reason, views, refused}. `views` are its `synthetic_views` rows
    (without `run_id`), each with `facts`, the view's `synthetic_images` row (without `run_id`) computed from the
    bytes just encoded as inspect computes them (with `max_pixels`, `max_decoded_bytes`); `refused` its quarantine
    records as dicts. The view images go into `store` (or the image store of the workspace at location `store`, opened where
    this runs: a Ray worker on another node stores them in the bucket itself) under their content address
    (idempotent); no table is written, and a bad source never raises.

    Args:
        sources: the source images, each with the path of its stored bytes.
        generator_spec: the generator to build (once per process, `generator_for`), or one already built.
        seed: `synthetic.seed`; each source draws from its own RNG seeded from (seed, image id).
        jpeg_quality: the views' JPEG quality.
        taken: catalog product ids; a colour variant whose id is one of them is refused, not made.
    """
    generator = generator_for(generator_spec) if isinstance(generator_spec, GeneratorSpec) else generator_spec
    key = params_key(generator, seed=seed, jpeg_quality=jpeg_quality)
    if isinstance(store, str):
        store = store_at(store)
    out = []
    for pid, iid, path, split in sources:
        # One RNG per source image, seeded from (seed, image): reruns and subsets draw the same views.
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}\x00{iid}".encode()).digest()[:8], "big"))
        try:
            made = generator.generate(decode_rgb(image_file(path).read_bytes()), rng=rng)
        except (OSError, ImageDecodeError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            out.append({"product_id": pid, "image_id": iid, "status": "synth_failed", "reason": detail, "views": [],
                        "refused": [{"reason": "synth_failed", "detail": detail, "record_id": iid,
                                     "field": "image_id", "value": iid}]})
            continue
        views: list[dict] = []
        refused: list[dict] = []
        for view in made:
            recipe = {**view.recipe, "derived_from": iid, "generator": generator.name}
            recipe_json = json.dumps(recipe, sort_keys=True)
            op = str(view.recipe["op"])
            color = None
            if view.same_product:
                product_id, relation, grade = pid, "same_product", 4
            else:
                product_id, relation, grade = variant_product_id(pid, op, recipe_json), "color_variant", 3
                if product_id in taken:  # a catalog product already has this id: never overwrite it
                    refused.append({"reason": "synthetic_id_taken", "detail": f"colour variant id {product_id!r} of "
                                    f"{pid!r} is a catalog product id; the variant is not made",
                                    "record_id": product_id, "field": "product_id", "value": product_id})
                    continue
                if view.color:
                    color = view.color
                else:  # a plug-in that does not name its colours: name it from the image
                    mask = foreground_mask(view.image)
                    color = color_name(view.image, mask if mask.any() else None)
            data = encode_jpeg(view.image, quality=jpeg_quality)
            vid = store.put(data, "jpg")
            facts = facts_row(vid, data, fmt="jpeg", max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
            if facts["status"] != "ok":  # e.g. an upscale past inspect.max_pixels: no reader will use it
                refused.append({"reason": facts["status"], "detail": facts["reason"], "record_id": product_id,
                                "field": "image", "value": vid})
            views.append({"image_id": vid, "source_image_id": iid, "source_product_id": pid,
                          "product_id": product_id, "relation": relation, "grade": grade, "op": op,
                          "recipe": recipe_json, "source": "synthetic", "split": split,
                          "generator": generator.name, "color": color, "params_key": key, "facts": facts})
        out.append({"product_id": pid, "image_id": iid, "status": "ok", "reason": None, "views": views,
                    "refused": refused})
    return out


def _make_views(ws: Workspace, todo: pa.Table, generator: ViewGenerator, *, spec: GeneratorSpec | None,
                run_id: str, res: SynthResult, taken: set[str], progress: Callable[[int, int], None] | None
                ) -> tuple[list[dict], dict[str, dict], list[QuarantineRecord]]:
    """Generate and store the views of `todo`'s images (`render_batch`, a batch at a time): synthetic_views rows,
    each view's `images` facts, refused sources. On the Ray engine each batch is a task that builds the generator
    from `spec` (once per worker), or unpickles `generator` when it was handed in rather than configured."""
    cfg = ws.config.synthetic
    views: list[dict] = []
    facts: dict[str, dict] = {}
    refused: list[QuarantineRecord] = []
    sources = [(pid, iid, ws.store.ref(iid, extension_for(fmt)), split) for pid, iid, fmt, split in zip(
        *(todo.column(c).to_pylist() for c in ("product_id", "image_id", "format", "split")))]
    engine = get_engine(ws.config)
    # Locally the driver's own store (one listing of an object store's images); a worker opens its workspace's.
    store = ws.store if engine.name == "local" else workspace_location(ws)
    render = partial(render_batch, store=store, seed=cfg.seed, jpeg_quality=cfg.jpeg_quality,
                     max_pixels=ws.config.inspect.max_pixels, max_decoded_bytes=ws.config.inspect.max_decoded_bytes,
                     taken=taken)
    if engine.name == "local":  # synth has no workers setting: it renders in this process, as it always has
        results: Iterable[tuple[list, list[dict]]] = (
            (batch, render(batch, generator)) for batch in batched(sources, RENDER_BATCH))
    else:
        results = engine.map_batches(partial(render, generator_spec=spec or generator), sources,
                                     batch_size=RENDER_BATCH)
    for batch, rows in results:
        for row in rows:
            if row["status"] != "ok":
                res.failed += 1
            refused.extend(QuarantineRecord(**r) for r in row["refused"])
            for view in row["views"]:
                facts[view["image_id"]] = view.pop("facts")
                views.append({**view, "run_id": run_id})
                res.by_op[view["op"]] = res.by_op.get(view["op"], 0) + 1
                if view["relation"] == "same_product":
                    res.same_product_views += 1
                else:
                    res.color_variants += 1
        if progress:
            progress(len(batch), todo.num_rows)
    return views, facts, refused


def synth_stage(ws: Workspace, *, generator: ViewGenerator | None = None,
                progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Make the missing synthetic views of catalog products and bring the tables they feed up to date.

    Incremental: views of a source image made with the same generator settings (`params_key`) are kept, only
    new source images are rendered, views of images that are no longer sources are dropped. Every table is
    written only when its content changes, so a rerun with nothing new writes nothing (fingerprints stay).
    """
    cfg = ws.config.synthetic
    spec = generator_spec(ws) if generator is None else None
    generator = generator or _generator_from_config(ws)
    res = SynthResult()
    params = {**section_params(ws.config, "synthetic"), "resolved_generator": generator.describe()}
    key = params_key(generator, seed=cfg.seed, jpeg_quality=cfg.jpeg_quality)
    refuse_legacy_layout(ws)
    with ws.run(STAGE, params) as run:
        res.run_id = run.run_id
        todo = source_images(ws, include_eval=cfg.include_eval, per_product=cfg.max_images_per_product)
        res.source_images = todo.num_rows
        res.products = len(set(todo.column("product_id").to_pylist()))
        old_views = ws.read_table("synthetic_views")
        # Views still valid: same settings, source image still a source (its split refreshed).
        reused = conform(ws.sql(
            f"""SELECT v.* REPLACE (t.split AS split) FROM v
                JOIN t ON t.product_id = v.source_product_id AND t.image_id = v.source_image_id
                WHERE v.params_key = '{key}'""", v=old_views, t=todo.select(["product_id", "image_id", "split"])),
            SYNTHETIC_VIEWS)
        pending = ws.sql(
            """SELECT t.* FROM t ANTI JOIN r ON r.source_product_id = t.product_id AND r.source_image_id = t.image_id
               ORDER BY t.product_id, t.image_id""",
            t=todo, r=reused.select(["source_product_id", "source_image_id"]))
        res.reused = reused.num_rows
        res.rendered_images = pending.num_rows
        products = ws.read_table("products")
        taken = set(products.column("product_id").to_pylist())
        if progress:
            progress(0, pending.num_rows)
        run.metrics["engine"] = ws.config.engine.kind
        made, facts, refused = _make_views(ws, pending, generator, spec=spec, run_id=run.run_id, res=res,
                                           taken=taken, progress=progress)
        views = pa.concat_tables([reused, pa.Table.from_pylist(made, schema=SYNTHETIC_VIEWS)])
        views = views.filter(pc.invert(pc.and_(pc.equal(views["relation"], "color_variant"),
                                               pc.is_in(views["product_id"], pa.array(sorted(taken), pa.string())))))
        views = _sorted(views, ["source_product_id", "source_image_id", "op", "image_id", "product_id"])
        res.dropped = old_views.num_rows - reused.num_rows
        written = res.tables_written

        # synthetic_views first: every other synthetic row is derived from it, so a run killed after this
        # write is completed by the next run from the views it kept.
        if not _same(old_views, views, ["image_id", "product_id", "source_image_id"]):
            ws.write_table("synthetic_views", views)
            written.append("synthetic_views")

        derived = ws.sql(
            """SELECT *, 999 + row_number() OVER (PARTITION BY product_id
                                                  ORDER BY source_image_id, op, image_id) AS position
               FROM v""", v=views)
        urls = [view_url(ws, i) for i in derived.column("image_id").to_pylist()]
        derived = derived.append_column("url", pa.array(urls, pa.string()))

        old_images = ws.read_table("synthetic_images")
        new_images = _view_facts(ws, views, old_images, facts, run.run_id)
        if not _same(old_images, new_images, ["image_id"]):
            ws.write_table("synthetic_images", new_images)
            written.append("synthetic_images")

        old_pi = ws.read_table("synthetic_product_images")
        new_pi = _sorted(conform(pa.table({
            "product_id": derived["product_id"], "position": derived["position"].cast(pa.int32()),
            "url": derived["url"], "source": derived["source"], "recipe": derived["recipe"]}), PRODUCT_IMAGES),
            ["product_id", "position", "url"])
        if not _same(old_pi, new_pi, ["product_id", "position", "url", "source", "recipe"]):
            ws.write_table("synthetic_product_images", new_pi)
            written.append("synthetic_product_images")

        old_products = ws.read_table("synthetic_products")
        new_products = _sorted(_variant_products(derived, products, old_products, run.run_id), ["product_id"])
        if not _same(old_products, new_products, ["product_id"]):
            ws.write_table("synthetic_products", new_products)
            written.append("synthetic_products")

        _quarantine_if_changed(ws, refused, run.run_id)
        run.counts = {"products_in": res.products, "source_images": res.source_images,
                      "rendered_images": res.rendered_images, "reused_views": res.reused,
                      "dropped_views": res.dropped, "same_product_views": res.same_product_views,
                      "color_variants": res.color_variants, "failed": res.failed,
                      "tables_written": len(written), **{f"op_{k}": v for k, v in sorted(res.by_op.items())}}
    return res


def _facts(ws: Workspace, image_id: str, data: bytes) -> dict:
    """The `images` row of a view's bytes: inspect's own facts function, with inspect's decode limits."""
    cfg = ws.config.inspect
    return facts_row(image_id, data, fmt="jpeg", max_pixels=cfg.max_pixels, max_decoded_bytes=cfg.max_decoded_bytes)


def _view_facts(ws: Workspace, views: pa.Table, old: pa.Table, made: dict[str, dict], run_id: str) -> pa.Table:
    """`synthetic_images`: one row per view image, from this run's renders (`made`), else the row kept from an
    earlier run, else computed from the stored bytes (views kept from a workspace written before the table)."""
    kept = {r["image_id"]: r for r in old.to_pylist()}
    rows = []
    for iid in sorted(set(views.column("image_id").to_pylist())):
        if iid in made:
            rows.append({**made[iid], "run_id": run_id})
        elif iid in kept:
            rows.append(kept[iid])
        else:
            rows.append({**_facts(ws, iid, ws.store.get(iid, "jpg")), "run_id": run_id})
    return pa.Table.from_pylist(rows, schema=IMAGES)


def refuse_legacy_layout(ws: Workspace) -> None:
    """Raise when `products` still holds the colour variants an older synth stage wrote into it: the catalog
    stage moves them out at its next ingest (then this stage writes them into `synthetic_products`)."""
    products = ws.read_table("products", ["product_id", "source_file"])
    legacy = products.filter(is_synthetic_product(products)).column("product_id").to_pylist()
    if legacy:
        raise ValueError(
            f"products holds {len(legacy)} synthetic colour variants written by an older synth stage (source_file "
            f"'synthetic', e.g. product_id {legacy[0]!r}); synth now writes them into synthetic_products. Re-ingest "
            "the catalog (`visprep catalog <files>` or `visprep run <files>`), which drops them, then rerun synth.")


def _variant_products(derived: pa.Table, catalog: pa.Table, old_synthetic: pa.Table, run_id: str) -> pa.Table:
    """`synthetic_products` rows of the colour variants of `derived` (views with url), from their sources' current rows."""
    variants = derived.filter(pc.equal(derived["relation"], "color_variant"))
    if variants.num_rows == 0:
        return PRODUCTS.empty_table()
    sources = catalog.filter(pc.is_in(catalog["product_id"], variants["source_product_id"]))
    source_of = {r["product_id"]: r for r in sources.to_pylist()}
    old = dict(zip(old_synthetic.column("product_id").to_pylist(),
                   zip(old_synthetic.column("row_hash").to_pylist(), old_synthetic.column("updated_run").to_pylist())))
    rows = []
    for v in variants.select(["product_id", "source_product_id", "source_image_id", "op", "recipe", "generator",
                              "color", "url"]).to_pylist():
        src = source_of.get(v["source_product_id"])
        if src is None:  # source product gone: its views go at the next run (no longer a source image)
            continue
        recipe = json.loads(v["recipe"])
        color = variant_color(v["color"] or "recoloured", src.get("color"), recipe.get("hue_shift_deg"))
        row = variant_product_row(src, product_id=v["product_id"], color=color, url=v["url"],
                                  source_image_id=v["source_image_id"], op=v["op"], recipe=recipe,
                                  generator=v["generator"], updated_run=run_id)
        prev = old.get(v["product_id"])
        if prev and prev[0] == row["row_hash"]:
            row["updated_run"] = prev[1]  # unchanged: keep the run that made it, so the table stays equal
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PRODUCTS)


def _quarantine_if_changed(ws: Workspace, refused: list[QuarantineRecord], run_id: str) -> None:
    """Record the refused sources, unless the same ones are already recorded (keeps the table untouched)."""
    part = ws.table_path("quarantine") / f"part-{STAGE}-all.parquet"
    if part.exists():
        import pyarrow.parquet as pq

        old = pq.read_table(part, columns=["record_id", "reason", "detail"]).to_pylist()
        if sorted(map(str, old)) == sorted(str({"record_id": r.record_id, "reason": r.reason, "detail": r.detail})
                                           for r in refused):
            return
    elif not refused:
        return
    ws.quarantine(refused, stage=STAGE, run_id=run_id, key="all")
