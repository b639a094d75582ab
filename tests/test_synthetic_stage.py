"""The synth stage on the bundled demo catalog: views stored with recipes, colour variants never the same SKU,
eval products untouched, the pairs stage picking the same-SKU views up; the generator plug-in point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from visprep.cli import app
from visprep.demo.sources import write_demo_sources
from visprep.synthetic.generators import (
    GENERATORS,
    GeneratedView,
    ViewGenerator,
    make_generator,
    register_generator,
)
from visprep.views.catalog import all_product_images, all_products, all_splits
from visprep.workspace import Workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    sources = write_demo_sources(root / "src", n_products=20)
    ws = root / "ws"
    ws.mkdir()
    # The stages this test runs by hand (dedup and label noise left out: each command checks its upstream).
    (ws / "visprep.toml").write_text('[pipeline]\nstages = ["fetch", "inspect", "split", "synth", "pairs", "export"]\n'
                                     "[split]\nfractions = { train = 0.7, eval = 0.3 }\n"
                                     "[synthetic]\nbackgrounds = [\"solid\", \"texture\"]\nreframe_scales = [0.8]\n"
                                     "hue_shifts_deg = [120.0]\n")
    runner = CliRunner()
    # Each command runs its own stage only: synth records its views' facts itself (no second inspect), and a
    # colour variant's split is its source's (no second split).
    for args in (["catalog", *map(str, sources.catalog_files)], ["fetch"], ["inspect"], ["split"], ["synth"],
                 ["pairs"]):
        result = runner.invoke(app, [*args, "-w", str(ws)])
        assert result.exit_code == 0, (args, result.output)
    return Workspace(ws)


def test_views_are_recorded_with_recipes_and_relations(workspace):
    views = workspace.read_table("synthetic_views").to_pylist()
    assert views
    splits = {r["product_id"]: r["split"] for r in workspace.read_table("splits").to_pylist()}
    for v in views:
        assert v["source"] == "synthetic" and v["split"] == "train" == splits[v["source_product_id"]]
        recipe = json.loads(v["recipe"])
        assert recipe["op"] == v["op"] and recipe["derived_from"] == v["source_image_id"]
        assert workspace.store.exists(v["image_id"], "jpg")
        if v["op"] == "recolor":
            assert v["relation"] == "color_variant" and v["grade"] == 3
            assert v["product_id"] != v["source_product_id"]  # never the same SKU
        else:
            assert v["relation"] == "same_product" and v["grade"] == 4 and v["product_id"] == v["source_product_id"]
    assert {v["op"] for v in views} >= {"replace_background", "reframe"}


def test_same_sku_views_feed_pairs_and_colour_variants_never_pair_with_their_source(workspace):
    views = workspace.read_table("synthetic_views").to_pylist()
    same = {v["image_id"] for v in views if v["relation"] == "same_product"}
    variants = {v["image_id"]: v for v in views if v["relation"] == "color_variant"}
    assert variants
    pairs = workspace.read_table("pairs").to_pylist()
    in_pairs = {p["positive_id"] for p in pairs} | {p["anchor_id"] for p in pairs}
    assert same <= in_pairs
    for p in pairs:
        for image in (p["anchor_id"], p["positive_id"]):
            if image in variants:  # only ever as the variant's own product: never with the source SKU
                assert p["anchor_product_id"] == p["positive_product_id"] == variants[image]["product_id"]
    assert any(p["kind"] == "image_title" and p["anchor_id"] in variants for p in pairs)
    syn_pairs = [p for p in pairs if p["kind"] == "same_product" and (p["anchor_id"] in same or p["positive_id"] in same)]
    assert syn_pairs and all(p["weight"] == 0.5 and p["split"] == "train" for p in syn_pairs)
    pi = all_product_images(workspace).to_pylist()
    sources = {v["source_product_id"] for v in variants.values()}
    for r in pi:  # a recoloured image is never attached to the SKU it came from
        if r["source"] == "synthetic" and r["recipe"] and json.loads(r["recipe"]).get("op") == "recolor":
            assert r["product_id"] not in sources and r["product_id"] in {v["product_id"] for v in variants.values()}


def test_colour_variants_are_synthetic_products_in_their_source_split_and_group(workspace):
    views = [v for v in workspace.read_table("synthetic_views").to_pylist() if v["relation"] == "color_variant"]
    products = {p["product_id"]: p for p in all_products(workspace).to_pylist()}
    splits = {s["product_id"]: s for s in all_splits(workspace).to_pylist()}
    synthetic = {p["product_id"] for p in workspace.read_table("synthetic_products").to_pylist()}
    assert synthetic and not synthetic & set(workspace.read_table("splits").column("product_id").to_pylist())
    for v in views:
        variant, source = products[v["product_id"]], products[v["source_product_id"]]
        assert variant["source_file"] == "synthetic" and source["source_file"] != "synthetic"
        assert variant["color"] == v["color"] and variant["color"].lower() != (source["color"] or "").lower()
        assert variant["category"] == source["category"] and variant["color"] in variant["title"]
        attrs = json.loads(variant["attributes"])
        assert attrs["synthetic"]["source_product_id"] == source["product_id"]
        assert attrs["synthetic"]["recipe"] == json.loads(v["recipe"])
        assert attrs.get("family_id") == json.loads(source["attributes"] or "{}").get("family_id")
        assert splits[variant["product_id"]]["split"] == splits[source["product_id"]]["split"] == "train"
        assert splits[variant["product_id"]]["group_id"] == splits[source["product_id"]]["group_id"]
    # Eval stays real: with synthetic.include_eval = false no synthetic product is outside train.
    assert all(splits[pid]["split"] == "train" for pid, p in products.items() if p["source_file"] == "synthetic")


def _fingerprints(ws):
    return {t: ws.table_fingerprint(t) for t in ("products", "product_images", "urls", "images", "synthetic_views",
                                                "synthetic_products", "synthetic_product_images", "synthetic_images",
                                                "splits", "quarantine")}


def test_rerun_writes_nothing_and_keeps_fingerprints(workspace):
    from visprep.synthetic.stage import synth_stage

    n_views = workspace.read_table("synthetic_views").num_rows
    result = CliRunner().invoke(app, ["synth", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert workspace.read_table("synthetic_views").num_rows == n_views
    before = _fingerprints(workspace)
    r = synth_stage(workspace)
    assert r.tables_written == [] and not r.changed
    assert (r.rendered_images, r.same_product_views, r.color_variants, r.reused) == (0, 0, 0, n_views)
    assert _fingerprints(workspace) == before


def test_incremental_renders_only_new_sources_and_redoes_changed_settings(workspace, tmp_path):
    import shutil

    from visprep.synthetic.stage import synth_stage

    root = tmp_path / "ws"
    shutil.copytree(workspace.root, root)
    ws = Workspace(root)
    old = {(v["source_image_id"], v["image_id"], v["product_id"]) for v in ws.read_table("synthetic_views").to_pylist()}
    toml = root / "visprep.toml"
    toml.write_text(toml.read_text().replace("[synthetic]\n", "[synthetic]\nmax_images_per_product = 2\n"))
    r = synth_stage(Workspace(root))
    assert r.reused == len(old) and r.dropped == 0 and r.rendered_images == r.source_images - r.products > 0
    new = {(v["source_image_id"], v["image_id"], v["product_id"]) for v in ws.read_table("synthetic_views").to_pylist()}
    assert old < new
    assert synth_stage(Workspace(root)).tables_written == []
    # Other settings draw other views: everything is made again and the old views go.
    toml.write_text(toml.read_text().replace("hue_shifts_deg = [120.0]", "hue_shifts_deg = [200.0]"))
    r = synth_stage(Workspace(root))
    assert r.reused == 0 and r.dropped == len(new) and r.rendered_images == r.source_images
    variants = {v["product_id"] for v in ws.read_table("synthetic_views").to_pylist() if v["relation"] == "color_variant"}
    synthetic_products = set(ws.read_table("synthetic_products").column("product_id").to_pylist())
    assert variants == synthetic_products and not (variants & {p for _, _, p in old})


def test_generator_plugin_point():
    with pytest.raises(ValueError, match="diffusion models are plug-ins"):
        make_generator("diffusion")

    class Mirror(ViewGenerator):
        name = "mirror-test"

        def _generate(self, rgb, *, rng):
            return [GeneratedView(np.ascontiguousarray(rgb[:, ::-1]), {"op": "mirror"}, True)]

    register_generator("mirror-test", Mirror)
    try:
        views = make_generator("mirror-test").generate(np.zeros((4, 4, 3), np.uint8), rng=np.random.default_rng(0))
        assert views[0].recipe == {"op": "mirror"}
        with pytest.raises(ValueError, match="taken"):
            register_generator("classical", Mirror)
    finally:
        GENERATORS.pop("mirror-test")


def test_run_killed_after_the_views_is_completed_by_the_next_run(workspace, tmp_path, monkeypatch):
    import shutil

    from visprep.synthetic.stage import synth_stage

    root = tmp_path / "ws"
    shutil.copytree(workspace.root, root)
    toml = root / "visprep.toml"
    toml.write_text(toml.read_text().replace("hue_shifts_deg = [120.0]", "hue_shifts_deg = [60.0]"))
    ws = Workspace(root)
    real = Workspace.write_table

    def dies_on_product_images(self, name, table):
        if name == "synthetic_product_images":
            raise KeyboardInterrupt("killed")
        return real(self, name, table)

    monkeypatch.setattr(Workspace, "write_table", dies_on_product_images)
    with pytest.raises(KeyboardInterrupt):
        synth_stage(ws)
    monkeypatch.setattr(Workspace, "write_table", real)
    ws = Workspace(root)
    views = ws.read_table("synthetic_views").to_pylist()
    r = synth_stage(ws)
    assert r.rendered_images == 0 and r.reused == len(views)  # nothing made twice
    assert "synthetic_product_images" in r.tables_written and "synthetic_views" not in r.tables_written
    prefix = ws.store.root.as_uri() + "/"
    pi = ws.read_table("synthetic_product_images").to_pylist()
    assert all(x["url"].startswith(prefix) for x in pi)
    assert sorted((x["product_id"], x["url"].rsplit("/", 1)[1][:-4]) for x in pi) == sorted(
        (v["product_id"], v["image_id"]) for v in views)
    variants = {v["product_id"] for v in views if v["relation"] == "color_variant"}
    assert variants == set(ws.read_table("synthetic_products").column("product_id").to_pylist())
    assert synth_stage(ws).tables_written == []
