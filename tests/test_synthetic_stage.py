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
from visprep.workspace import Workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    sources = write_demo_sources(root / "src", n_products=20)
    ws = root / "ws"
    ws.mkdir()
    (ws / "visprep.toml").write_text("[split]\nfractions = { train = 0.7, eval = 0.3 }\n"
                                     "[synthetic]\nbackgrounds = [\"solid\", \"texture\"]\nreframe_scales = [0.8]\n"
                                     "hue_shifts_deg = [120.0]\n")
    runner = CliRunner()
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


def test_same_sku_views_feed_pairs_and_colour_variants_do_not(workspace):
    views = workspace.read_table("synthetic_views").to_pylist()
    same = {v["image_id"] for v in views if v["relation"] == "same_product"}
    variants = {v["image_id"] for v in views if v["relation"] == "color_variant"}
    pairs = workspace.read_table("pairs").to_pylist()
    in_pairs = {p["positive_id"] for p in pairs} | {p["anchor_id"] for p in pairs}
    assert same <= in_pairs
    assert not (variants & in_pairs)
    syn_pairs = [p for p in pairs if p["kind"] == "same_product" and (p["anchor_id"] in same or p["positive_id"] in same)]
    assert syn_pairs and all(p["weight"] == 0.5 and p["split"] == "train" for p in syn_pairs)
    pi = workspace.read_table("product_images").to_pylist()
    assert all(json.loads(r["recipe"])["op"] != "recolor" for r in pi if r["source"] == "synthetic" and r["recipe"]
               and "generator" in json.loads(r["recipe"]))


def test_rerun_replaces_rather_than_duplicates(workspace):
    before = workspace.read_table("synthetic_views").num_rows
    n_pi = workspace.read_table("product_images").num_rows
    result = CliRunner().invoke(app, ["synth", "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert workspace.read_table("synthetic_views").num_rows == before
    assert workspace.read_table("product_images").num_rows == n_pi


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
