"""End to end on the bundled real demo data: every stage, quarantine, incremental reruns, shards read back."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import torch
from torch.utils.data import DataLoader

from visprep.demo.sources import write_demo_sources
from visprep.export.loader import ShardDataset, webdataset_pipeline
from visprep.export.shards import read_manifest
from visprep.pipeline import run_pipeline
from visprep.views.catalog import all_product_images, all_products, all_splits, variant_sources
from visprep.views.images import usable_images
from visprep.workspace import Workspace

# The demo's own reason codes -> (stage, reason) the pipeline records.
EXPECTED = {
    "missing_product_id": [("catalog", "missing_product_id")],
    "missing_title": [("catalog", "missing_title")],
    "bad_price": [("catalog", "unparsable_price")],
    "invalid_utf8": [("catalog", "invalid_utf8")],
    "conflicting_duplicate_sku": [("catalog", "conflicting_duplicate_sku")],
    "no_images": [("catalog", "empty_image_list")],
    "not_an_image": [("fetch", "not_image")],
    "corrupt_image": [("inspect", "truncated"), ("inspect", "corrupt")],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, object, dict]:
    root = tmp_path_factory.mktemp("demo")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text("[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 32\n"
                              '[embed]\noptions = { profile = "imagenet-64" }\n'
                              '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')
    src = write_demo_sources(root / "src", n_products=120, seed=3)
    report = run_pipeline(ws, src.catalog_files)
    return ws, src, report


def test_quarantine_holds_every_planted_bad_record(demo: tuple) -> None:
    ws, src, _ = demo
    q = ws.read_table("quarantine").to_pylist()
    got: dict[tuple[str, str], int] = {}
    for row in q:
        got[(row["stage"], row["reason"])] = got.get((row["stage"], row["reason"]), 0) + 1
        assert row["detail"] and row["reason"]
    for code, n in src.expected_bad_rows.items():
        assert sum(got.get(k, 0) for k in EXPECTED[code]) == n, (code, got)
    assert sum(got.values()) == sum(src.expected_bad_rows.values())


def test_products_images_pairs_and_no_split_leak(demo: tuple) -> None:
    ws, src, _ = demo
    imgs = usable_images(ws)
    variants = variant_sources(ws)
    assert len(set(imgs["product_id"].to_pylist()) - set(variants)) == src.n_products
    splits = dict(zip(*(all_splits(ws)[c].to_pylist() for c in ("product_id", "split"))))
    # The synth stage's colour variants are products of their own, in their source's split, and only in train.
    assert variants and all(splits[v] == splits[source] == "train" for v, source in variants.items())
    pairs = ws.read_table("pairs").to_pylist()
    kinds = {p["kind"] for p in pairs}
    assert kinds == {"same_product", "image_title"}
    for p in pairs:
        assert p["anchor_product_id"] == p["positive_product_id"]
        assert splits[p["anchor_product_id"]] == p["split"]
        assert (p["positive_id"] is None) == (p["kind"] == "image_title")
    products = {r["product_id"]: r for r in all_products(ws).to_pylist()}
    negs = ws.read_table("negatives").to_pylist()
    assert negs
    groups = dict(zip(*(all_splits(ws)[c].to_pylist() for c in ("product_id", "group_id"))))
    # run mines too: other_category from pairs, and the miners' kinds, none of them ever within a product group.
    assert {"other_category", "random", "brand", "ann"} <= {n["kind"] for n in negs}
    for n in negs:
        assert splits[n["anchor_product_id"]] == splits[n["negative_product_id"]] == n["split"]
        assert groups[n["anchor_product_id"]] != groups[n["negative_product_id"]]
        if n["kind"] == "other_category":
            assert (products[n["anchor_product_id"]]["top_category"]
                    != products[n["negative_product_id"]]["top_category"])
    # Synthetic views keep their mark and recipe all the way from the catalog.
    pi = all_product_images(ws).to_pylist()
    synthetic = [r for r in pi if r["source"] == "synthetic"]
    assert synthetic and all(json.loads(r["recipe"]) for r in synthetic)
    # Shared and byte-identical photos are stored once.
    latest = ws.latest_urls()
    ok = latest.filter(pc.equal(latest["status"], "ok"))
    assert len(set(ok["image_id"].to_pylist())) < ok.num_rows


def test_shards_read_back_through_webdataset_and_dataloader(demo: tuple) -> None:
    ws, _, _ = demo
    imgs = usable_images(ws)
    for split in ("train", "eval"):
        out = ws.shards_dir / split
        manifest = read_manifest(out)
        expected = imgs.filter(pc.equal(imgs["split"], split)).num_rows
        assert manifest.total_samples == expected
        keys_wds = [s["key"] for s in webdataset_pipeline(out)]
        assert len(keys_wds) == len(set(keys_wds)) == expected
        loader = DataLoader(ShardDataset(out), batch_size=None, num_workers=2)
        seen = []
        for sample in loader:
            assert sample["image"].shape == (224, 224, 3)
            assert sample["meta"]["split"] == split and sample["meta"]["source"] in ("catalog", "synthetic")
            assert isinstance(sample["positives"], list)
            seen.append(sample["key"])
        assert sorted(seen) == sorted(keys_wds)
    assert torch.get_num_threads() >= 1


def test_second_run_does_no_work_and_params_change_reruns(demo: tuple) -> None:
    ws, _, _ = demo
    tars = {p: p.stat().st_mtime_ns for p in ws.shards_dir.rglob("*.tar")}
    again = run_pipeline(ws)
    assert again["fetch"].attempted == 0 and again["inspect"].inspected == 0
    assert again["split"] == again["pairs"] == again["export"] == "up to date"
    assert {p: p.stat().st_mtime_ns for p in ws.shards_dir.rglob("*.tar")} == tars
    ws.config_path.write_text(ws.config_path.read_text() + "[mining]\nother_category_per_anchor = 2\n")
    changed = Workspace(ws.root)
    rerun = run_pipeline(changed)
    assert rerun["split"] == rerun["pairs"] == "up to date"  # a mining option reruns mining and what follows only
    assert rerun["mine"] != "up to date"
    negs = changed.read_table("negatives")
    negs = negs.filter(pc.equal(negs["kind"], "other_category"))  # the miners' kinds rank their own candidates
    assert pc.max(negs["rank"]).as_py() == 2
    runs = [r for r in changed.runs() if r["stage"] == "mine"]
    assert runs[-1]["params"]["mining"]["other_category_per_anchor"] == 2 and runs[-1]["status"] == "ok"
    assert runs[-1]["counts"]["other_category.rows"] == negs.num_rows
