"""The mine and sample stages end to end on a small hand-made workspace (no model: vectors written directly)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from visprep.cli import app
from visprep.embed.registry import l2_normalize
from visprep.embed.store import FeatureStore
from visprep.pairs.stage import pairs_stage
from visprep.schema import IMAGES, INTERACTION_PAIRS, PRODUCT_IMAGES, PRODUCTS, SPLITS, URLS
from visprep.views.features import features_root
from visprep.workspace import Workspace


def _workspace(tmp_path, *, interactions: bool = True) -> Workspace:
    ws = Workspace(tmp_path)
    ws.config_path.write_text('[mining]\nmodel = "test@1"\nskip_top = 1\nband_max = 8\nann_per_anchor = 3\n'
                              '[sampling]\np = 4\nk = 2\nsplits = ["train"]\n')
    rng = np.random.default_rng(0)
    products, pimgs, urls, images, splits = [], [], [], [], []
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for i in range(24):
        pid = f"P{i:02d}"
        top = ["shoes", "bags", "hats"][i % 3]
        products.append({"product_id": pid, "title": f"item {i}", "category": f"{top}/sub{i % 2}",
                         "top_category": top, "brand": f"brand{i % 4}"})
        # P00/P01 form one near-duplicate group; the rest are their own groups.
        splits.append({"product_id": pid, "group_id": "G0" if i < 2 else pid, "split": "train"})
        for j in range(3):
            url = f"file:///img/{pid}-{j}.jpg"
            iid = f"{pid}-img{j}"
            pimgs.append({"product_id": pid, "position": j, "url": url, "source": "catalog"})
            urls.append({"url": url, "status": "ok", "image_id": iid, "fetched_at": now})
            images.append({"image_id": iid, "status": "ok", "format": "jpeg"})
    ws.write_table("products", pa.Table.from_pylist(products, schema=PRODUCTS))
    ws.write_table("product_images", pa.Table.from_pylist(pimgs, schema=PRODUCT_IMAGES))
    ws.write_table("urls", pa.Table.from_pylist(urls, schema=URLS))
    ws.write_table("images", pa.Table.from_pylist(images, schema=IMAGES))
    ws.write_table("splits", pa.Table.from_pylist(splits, schema=SPLITS))
    # Vectors: clustered by product, P00/P01 nearly identical (the near-duplicate trap).
    centers = rng.normal(size=(24, 16))
    centers[1] = centers[0]
    ids = [r["image_id"] for r in images]
    vecs = l2_normalize(np.repeat(centers, 3, axis=0) + 0.3 * rng.normal(size=(72, 16)))
    FeatureStore(features_root(ws), "test@1", 16).append(ids, vecs)
    if interactions:
        rows = [{"anchor_id": "P05", "anchor_type": "product", "product_id": "P07", "kind": "click", "count": 4},
                {"anchor_id": "P05", "anchor_type": "product", "product_id": "P08", "kind": "skip_above",
                 "count": 2},
                {"anchor_id": "P00", "anchor_type": "product", "product_id": "P01", "kind": "skip_above",
                 "count": 2}]
        ws.write_table("interaction_pairs", pa.Table.from_pylist(rows, schema=INTERACTION_PAIRS))
    pairs_stage(ws)  # after the events tables, as the pipeline runs it: other_category reads interaction positives
    return ws


def test_mine_stage_writes_every_kind_and_never_a_positive(tmp_path) -> None:
    ws = _workspace(tmp_path)
    result = CliRunner().invoke(app, ["mine", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    neg = ws.read_table("negatives").to_pylist()
    kinds = {r["kind"] for r in neg}
    assert kinds == {"other_category", "random", "brand", "skip_above", "ann"}
    group = {f"P{i:02d}": ("G0" if i < 2 else f"P{i:02d}") for i in range(24)}
    known_pairs = {("P05", "P07"), ("P07", "P05")}
    for r in neg:
        a, n = r["anchor_product_id"], r["negative_product_id"]
        assert group[a] != group[n], r
        assert (a, n) not in known_pairs, r
    skip = [r for r in neg if r["kind"] == "skip_above"]
    assert [(r["anchor_id"], r["negative_id"]) for r in skip] == [("P05-img0", "P08-img0")]
    ann = [r for r in neg if r["kind"] == "ann"]
    assert ann and all(2 <= r["rank"] <= 8 for r in ann)  # skip_top = 1, band_max = 8
    counts = ws.last_run("mine")["counts"]
    assert counts["skip_above.positive"] == 1  # P00 -> P01 is one group
    assert counts["ann.self"] == 72 and counts["ann.positive"] > 0 and counts["ann.band_top"] == 72
    assert "ann.guard_relative" in counts and "ann.guard_absolute" in counts


def test_mine_without_interaction_pairs_skips_cleanly(tmp_path) -> None:
    ws = _workspace(tmp_path, interactions=False)
    result = CliRunner().invoke(app, ["mine", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = ws.last_run("mine")
    assert run["counts"]["skip_above.skipped_no_interaction_pairs"] == 1
    assert "skip_above" not in {r["kind"] for r in ws.read_table("negatives").to_pylist()}


def test_sample_stage_plans_covering_batches(tmp_path) -> None:
    ws = _workspace(tmp_path)
    result = CliRunner().invoke(app, ["sample", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    plan = ws.read_table("batch_plan").to_pylist()
    assert {r["image_id"] for r in plan} == {f"P{i:02d}-img{j}" for i in range(24) for j in range(3)}
    by_batch: dict[int, list[dict]] = {}
    for r in plan:
        by_batch.setdefault(r["batch"], []).append(r)
    for rows in by_batch.values():
        assert len(rows) == 8  # P x K
        classes: dict[int, set[str]] = {}
        for r in rows:
            classes.setdefault(r["class_index"], set()).add(r["group_id"])
        groups = [next(iter(g)) for g in classes.values()]
        assert all(len(g) == 1 for g in classes.values()) and len(groups) == len(set(groups)) == 4


def test_mining_from_a_trainers_checkpoint_embeddings(tmp_path) -> None:
    """A trainer exports its checkpoint's vectors; `visprep embed --import` puts them in a store and `visprep mine
    --model` mines from them; a second checkpoint that moves a few vectors appends only those."""
    import pyarrow.parquet as pq

    (tmp_path / "ws").mkdir()
    ws = _workspace(tmp_path / "ws")
    ids = ws.read_table("images", ["image_id"]).column("image_id").to_pylist()
    rng = np.random.default_rng(3)
    # The "trained" model: products are tight, and sit in clusters by top category.
    tops = {f"P{i:02d}": i % 3 for i in range(24)}
    centers, own = rng.normal(size=(3, 16)), {p: rng.normal(size=16) for p in tops}
    vecs = np.stack([centers[tops[i.split("-")[0]]] + 0.5 * own[i.split("-")[0]] for i in ids])
    vecs = vecs + 0.05 * rng.normal(size=(len(ids), 16))
    ckpt = tmp_path / "epoch1.parquet"
    pq.write_table(pa.table({"id": ids + ["not-an-image"], "vector": [v.tolist() for v in vecs] + [[0.1] * 16]}),
                   ckpt)
    out = CliRunner().invoke(app, ["embed", "-w", str(ws.root), "--import", str(ckpt), "--model-id", "head@epoch"])
    assert out.exit_code == 0, out.output
    assert "changed 72, unchanged 0, unknown ids 1" in out.output
    q = [r for r in ws.read_table("quarantine").to_pylist() if r["stage"] == "embed-import"]
    assert [(r["reason"], r["record_id"]) for r in q] == [("unknown_image", "not-an-image")]
    out = CliRunner().invoke(app, ["mine", "-w", str(ws.root), "--model", "head@epoch"])
    assert out.exit_code == 0, out.output
    ann = [r for r in ws.read_table("negatives").to_pylist() if r["kind"] == "ann"]
    assert ann
    # Mined from the checkpoint: hard negatives now share the anchor's top category (its new neighbourhood).
    same_top = np.mean([tops[r["anchor_product_id"]] == tops[r["negative_product_id"]] for r in ann])
    assert same_top > 0.9
    # Epoch 2 moves 5 vectors: only those are appended.
    vecs[:5] = rng.normal(size=(5, 16))
    pq.write_table(pa.table({"image_id": ids, "vector": [v.tolist() for v in vecs]}), ckpt)
    from visprep.embed.stage import import_embeddings

    r = import_embeddings(ws, ckpt, model_id="head@epoch")
    assert (r.changed, r.unchanged, r.unknown, r.store_total) == (5, 67, 0, 77)
    with pytest.raises(ValueError, match="vectors have 8 dimensions; the feature store of .head@epoch. holds 16"):
        bad = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"id": ids[:2], "vector": [[0.0] * 8, [1.0] * 8]}), bad)
        import_embeddings(ws, bad, model_id="head@epoch")


def test_item_pool_string_columns_share_one_object_per_value() -> None:
    """The pool's split/category/brand columns hold one Python string per distinct value (a pointer per row), with
    None for nulls, in row order across Arrow chunks."""
    import pyarrow as pa

    from visprep.views.items import shared_strings

    col = pa.chunked_array([["train", None, "val"], ["train", "val", "train"]])
    out = shared_strings(col)
    assert out.dtype == object and out.tolist() == ["train", None, "val", "train", "val", "train"]
    assert out[0] is out[3] is out[5] and out[2] is out[4]
    assert shared_strings(pa.chunked_array([], pa.string())).tolist() == []
    assert shared_strings(pa.array([None], pa.string())).tolist() == [None]
