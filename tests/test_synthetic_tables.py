"""Synth's own tables (one writer per table): what it writes, the union views readers see, the split without
synthetic input, the facts of a view, the embedding of views, and the migration of a workspace an older synth
stage wrote into the catalog's tables."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from visprep.catalog.stage import ingest_catalog
from visprep.demo.sources import write_demo_sources
from visprep.embed.registry import Embedder
from visprep.embed.stage import embed_stage, embed_views_stage, features_root
from visprep.embed.store import FeatureStore, part_writer, writer_fingerprint
from visprep.fetch.stage import fetch_stage
from visprep.images.facts import facts_row
from visprep.images.stage import inspect_batch, inspect_stage
from visprep.schema import WRITERS
from visprep.split.stage import split_stage
from visprep.synthetic.stage import synth_stage
from visprep.views.catalog import (
    SYNTHETIC_TABLES,
    all_images,
    all_latest_urls,
    all_product_images,
    all_products,
    all_splits,
    is_synth_view_row,
    synthetic_urls,
    variant_sources,
)
from visprep.workspace import Workspace

CONFIG = ("[split]\nfractions = { train = 0.7, eval = 0.3 }\n[inspect]\nworkers = 1\n"
          "[synthetic]\nbackgrounds = [\"solid\"]\nreframe_scales = [0.8]\nhue_shifts_deg = [120.0]\n")
OWN = ("synthetic_products", "synthetic_product_images", "synthetic_images")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Workspace, list[str]]:
    """Demo catalog -> fetch -> inspect -> split -> synth (the graph's order: no second inspect or split)."""
    root = tmp_path_factory.mktemp("synth-tables")
    sources = write_demo_sources(root / "src", n_products=20)
    (root / "ws").mkdir()
    (root / "ws" / "visprep.toml").write_text(CONFIG)
    ws = Workspace(root / "ws")
    ingest_catalog(ws, sources.catalog_files)
    fetch_stage(ws)
    inspect_stage(ws)
    split_stage(ws)
    synth_stage(ws)
    return ws, list(sources.catalog_files)


def _copy(ws: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(ws.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _per(table: pa.Table, column: str) -> Counter:
    return Counter("synthetic" if v == "synthetic" else "catalog" for v in table.column(column).to_pylist())


def test_each_catalog_table_has_one_writer_and_synth_writes_only_its_own(built):
    ws, _ = built
    for table in ("products", "product_images", "urls", "images"):
        assert len(WRITERS[table]) == 1
    assert all(WRITERS[t] == ("synth",) for t in (*OWN, "synthetic_views"))
    # No synthetic row in the catalog's tables after synth; synth's tables hold them all.
    assert not pc.any(pc.equal(ws.read_table("products").column("source_file"), "synthetic")).as_py()
    assert not pc.any(is_synth_view_row(ws.read_table("product_images"), ws.store.root.as_uri())).as_py()
    view_ids = set(ws.read_table("synthetic_views").column("image_id").to_pylist())
    assert view_ids and not view_ids & set(ws.read_table("urls").column("image_id").to_pylist())
    assert not view_ids & set(ws.read_table("images").column("image_id").to_pylist())
    assert set(ws.read_table("synthetic_images").column("image_id").to_pylist()) == view_ids
    # A stage that writes another's table is refused where it happens.
    with ws.run("synth", {}), pytest.raises(PermissionError, match="its writer is catalog"):
        ws.write_table("products", ws.read_table("products"))


def test_union_views_hold_what_the_combined_tables_held(built):
    ws, _ = built
    views = ws.read_table("synthetic_views")
    rel = views.column("relation").to_pylist()
    n_views, distinct = views.num_rows, len(set(views.column("image_id").to_pylist()))
    variants = {p for p, r in zip(views.column("product_id").to_pylist(), rel) if r == "color_variant"}
    # products: the catalog's plus one per colour variant (source_file "synthetic"), as one table had them.
    assert _per(all_products(ws), "source_file") == _per(ws.read_table("products"), "source_file") + Counter(
        synthetic=len(variants))
    assert set(variant_sources(ws)) == variants
    # product_images: one synthetic row per view (same-SKU views on their source, a variant's on the variant),
    # beside the synthetic images a catalog file declares itself.
    assert _per(all_product_images(ws), "source") == _per(ws.read_table("product_images"), "source") + Counter(
        synthetic=n_views)
    # urls and images: one more row per view image, and every synthetic product image resolves to its view.
    assert all_latest_urls(ws).num_rows == ws.latest_urls().num_rows + distinct
    assert all_images(ws).num_rows == ws.read_table("images").num_rows + distinct
    mine = all_product_images(ws).filter(is_synth_view_row(all_product_images(ws), ws.store.root.as_uri()))
    joined = ws.sql("""SELECT pi.product_id, u.image_id, i.status FROM pi JOIN u ON u.url = pi.url
                       JOIN i ON i.image_id = u.image_id""", pi=mine, u=all_latest_urls(ws), i=all_images(ws))
    assert sorted(zip(joined.column("product_id").to_pylist(), joined.column("image_id").to_pylist())) == sorted(
        zip(views.column("product_id").to_pylist(), views.column("image_id").to_pylist()))
    assert set(joined.column("status").to_pylist()) == {"ok"}
    assert set(synthetic_urls(ws).column("reason").to_pylist()) == {"synthetic view"}


def test_split_reads_no_synthetic_table_and_a_variant_is_in_its_source_split(built, tmp_path):
    ws = _copy(built[0], tmp_path)
    before = ws.table_fingerprint("splits")
    split_stage(ws)  # after synth: the split has nothing new to say
    assert ws.table_fingerprint("splits") == before
    assert not set(ws.last_run("split")["reads"]) & {*SYNTHETIC_TABLES}
    assert ws.read_table("splits").column("product_id").to_pylist() == ws.read_table("products").column(
        "product_id").to_pylist()
    splits = {r["product_id"]: r for r in all_splits(ws).to_pylist()}
    sources = variant_sources(ws)
    assert sources
    for variant, source in sources.items():
        assert (splits[variant]["split"], splits[variant]["group_id"]) == (splits[source]["split"],
                                                                           splits[source]["group_id"])


def test_a_view_s_facts_are_what_inspect_computes_for_its_bytes(built, tmp_path):
    ws, _ = built
    cfg = ws.config.inspect
    rows = ws.read_table("synthetic_images").to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows)
    items = [(r["image_id"], str(ws.store.path(r["image_id"], "jpg")), "jpeg", cfg.max_pixels, cfg.max_decoded_bytes)
             for r in rows]
    inspected = inspect_batch(items)
    for r, got in zip(rows, inspected):
        data = ws.store.get(r["image_id"], "jpg")
        want = facts_row(r["image_id"], data, fmt="jpeg", max_pixels=cfg.max_pixels,
                         max_decoded_bytes=cfg.max_decoded_bytes)
        assert got == want
        for k, v in want.items():
            assert r[k] == pytest.approx(v) if isinstance(v, float) else r[k] == v, k


class _Hash(Embedder):
    """8-d vectors from the bytes' hash."""

    dim = 8
    modality = "image"
    model_id = "hash8-views@v1"

    def _embed(self, inputs):
        return np.stack([np.frombuffer(hashlib.sha256(d).digest()[:8], np.uint8).astype(np.float32) - 127.5
                         for d in inputs])


def test_embed_views_embeds_the_views_and_embed_only_the_catalog(built, tmp_path):
    ws = _copy(built[0], tmp_path)
    catalog = set(pc.filter(ws.read_table("images")["image_id"], pc.equal(ws.read_table("images")["status"], "ok"))
                  .to_pylist())
    views = set(ws.read_table("synthetic_images").column("image_id").to_pylist())
    r = embed_stage(ws, embedder=_Hash())
    store = FeatureStore.open_existing(features_root(ws), _Hash.model_id)
    assert r.embedded == len(catalog) and set(store.ids()) == catalog
    model = _Hash.model_id
    embed_print = writer_fingerprint(ws, model, "embed")
    assert writer_fingerprint(ws, model, "embed_views") == writer_fingerprint(ws, model, "shift")  # none yet
    r = embed_views_stage(ws, embedder=_Hash())
    store = FeatureStore.open_existing(features_root(ws), model)
    assert r.embedded == len(views) and set(store.ids()) == catalog | views
    # Tagged parts: the catalog's vectors' fingerprint did not move, the views' did; neither removed the other's.
    assert writer_fingerprint(features_root(ws), model, "embed") == embed_print
    assert writer_fingerprint(ws, model, "embed_views") != writer_fingerprint(ws, model, "shift")
    assert {part_writer(p) for p in (store.path / "parts").glob("part-*.parquet")} == {"embed", "embed_views"}
    assert embed_stage(ws, embedder=_Hash()).embedded == 0 and embed_views_stage(ws, embedder=_Hash()).embedded == 0
    assert set(FeatureStore.open_existing(features_root(ws), model).ids()) == catalog | views
    with pytest.raises(ValueError, match="unknown feature store writer"):
        writer_fingerprint(ws, model, "mine")


def _legacy(ws: Workspace) -> None:
    """Rewrite `ws` into the layout an older synth stage left: its rows inside products, product_images, urls
    (a part of its own, reason "synthetic view") and images, and no tables of its own but synthetic_views."""
    products = pa.concat_tables([ws.read_table("products"), ws.read_table("synthetic_products")])
    pi = pa.concat_tables([ws.read_table("product_images"), ws.read_table("synthetic_product_images")])
    images = pa.concat_tables([ws.read_table("images"), ws.read_table("synthetic_images")])
    urls = synthetic_urls(ws)
    urls = urls.set_column(urls.schema.get_field_index("fetched_at"), "fetched_at",
                           pa.array([ws.read_table("urls")["fetched_at"][0].as_py()] * urls.num_rows,
                                    urls.schema.field("fetched_at").type))
    ws.write_table("products", products.sort_by("product_id"))
    ws.write_table("product_images", pi)
    ws.write_table("images", images)
    ws.write_part("urls", urls, "synthetic")
    for t in OWN:
        shutil.rmtree(ws.table_path(t)) if ws.table_path(t).is_dir() else ws.table_path(t).unlink()


def test_a_workspace_of_the_old_layout_is_refused_then_migrated_by_each_table_s_writer(built, tmp_path):
    ws = _copy(built[0], tmp_path)
    files = built[1]
    synth_stage(ws)  # its rows name their files in this copy's store
    def union() -> tuple[pa.Table, pa.Table]:  # a variant's updated_run is the run that makes it again
        return all_products(ws).drop_columns(["updated_run"]).sort_by("product_id"), all_splits(ws)

    before = union()
    pi_before = sorted(map(str, all_product_images(ws).to_pylist()))
    facts_before = ws.read_table("synthetic_images").sort_by("image_id")
    _legacy(ws)
    legacy_images = ws.read_table("images").num_rows
    with pytest.raises(ValueError, match="older synth stage.*Re-ingest the catalog"):
        synth_stage(ws)
    r = ingest_catalog(ws, files)  # catalog: its tables lose the legacy rows
    assert r.synthetic_dropped > 0 and (r.new, r.changed, r.removed) == (0, 0, 0)
    assert not pc.any(pc.equal(ws.read_table("products").column("source_file"), "synthetic")).as_py()
    assert not pc.any(is_synth_view_row(ws.read_table("product_images"), ws.store.root.as_uri())).as_py()
    fetch_stage(ws)  # fetch: urls loses the views' rows
    assert "synthetic view" not in ws.read_table("urls").column("reason").to_pylist()
    i = inspect_stage(ws)  # inspect: images loses the views' rows (nothing is decoded)
    assert i.inspected == 0 and i.dropped == legacy_images - ws.read_table("images").num_rows > 0
    split_stage(ws)
    s = synth_stage(ws)  # synth: its tables again, from the views it kept (facts from the stored bytes)
    assert s.rendered_images == 0 and set(s.tables_written) == set(OWN)
    after_products, after_splits = union()
    diff = [(k, x[k], y[k]) for x, y in zip(after_products.to_pylist(), before[0].to_pylist()) for k in x if x[k] != y[k]]
    assert not diff, diff[:3]
    assert after_splits.equals(before[1])
    assert sorted(map(str, all_product_images(ws).to_pylist())) == pi_before
    after = ws.read_table("synthetic_images").sort_by("image_id")
    assert after.drop_columns(["run_id"]).equals(facts_before.drop_columns(["run_id"]))
    assert synth_stage(ws).tables_written == []
