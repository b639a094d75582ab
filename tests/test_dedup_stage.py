"""The dedup stage on a workspace built from real photos with known near duplicates and look-alikes."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from visprep.cli import app
from visprep.dedup.benchset import build_dedup_benchmark
from visprep.images.facts import inspect_image
from visprep.workspace import Workspace


@pytest.fixture(scope="module")
def bench():
    return build_dedup_benchmark(80, seed=3)


def _workspace(root, bench, *, extra_listing=None) -> Workspace:
    """Write products, product_images, urls and images as the catalog/fetch/inspect stages would."""
    ws = Workspace(root)
    ids = bench.image_ids()
    listings = [(p, i) for p, i in zip(bench.product_ids, ids)] + list(extra_listing or [])
    ws.write_table("products", pa.Table.from_pylist(
        [{"product_id": p, "title": t, "category": c, "top_category": c}
         for p, t, c in zip(bench.product_ids, bench.titles, bench.top_categories)]))
    ws.write_table("product_images", pa.Table.from_pylist(
        [{"product_id": p, "position": 0, "url": f"file:///img/{p}.jpg", "source": "catalog"} for p, _ in listings]))
    now = dt.datetime.now(dt.UTC)
    ws.write_table("urls", pa.Table.from_pylist(
        [{"url": f"file:///img/{p}.jpg", "status": "ok", "image_id": i, "format": "jpeg", "fetched_at": now}
         for p, i in listings]))
    codes = {i: inspect_image(b).phash for i, b in zip(ids, bench.images)}
    ws.write_table("images", pa.table({"image_id": list(codes), "status": ["ok"] * len(codes),
                                       "phash": pa.array(list(codes.values()), pa.uint64())}))
    return ws


def test_dedup_stage_groups_duplicates_and_keeps_evidence(tmp_path, bench):
    # A marketplace SKU listing a byte-identical copy of FM-000001's photo, with an unrelated title.
    ident = bench.image_ids()[bench.product_ids.index("FM-000001")]
    bench_extra = [("MKT-1", ident)]
    ws = _workspace(tmp_path, bench, extra_listing=bench_extra)
    products = ws.read_table("products")
    ws.write_table("products", pa.concat_tables([products, pa.Table.from_pylist(
        [{"product_id": "MKT-1", "title": "Clearance lot 17", "category": "Misc", "top_category": "Misc"}],
        schema=products.schema)]))
    result = CliRunner().invoke(app, ["dedup", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    groups = ws.read_table("product_groups").to_pylist()
    assert len(groups) == len(bench.product_ids) + 1
    gid = {g["product_id"]: g["group_id"] for g in groups}
    canon = {g["product_id"]: g["canonical_product_id"] for g in groups}
    assert gid["MKT-1"] == gid["FM-000001"] == "FM-000001"  # smallest product id names the group
    assert canon["MKT-1"] in ("FM-000001", "MKT-1")
    for g in groups:  # the canonical product is a member of its own group
        assert gid[g["canonical_product_id"]] == g["group_id"]
    found = np.mean([gid[a] == gid[b] for a, b, _ in bench.duplicate_pairs])
    easy = [(a, b) for a, b, t in bench.duplicate_pairs if t in ("reencode", "resize", "brightness")]
    merged = np.mean([gid[a] == gid[b] for a, b in bench.lookalike_pairs])
    assert np.mean([gid[a] == gid[b] for a, b in easy]) >= 0.8
    assert found >= 0.5 and merged <= 0.1
    edges = ws.read_table("duplicate_edges").to_pylist()
    assert {"identical_image", "phash", "title"} >= {e["signal"] for e in edges}
    ident_edges = [e for e in edges if e["signal"] == "identical_image"]
    assert [(e["product_a"], e["product_b"]) for e in ident_edges] == [("FM-000001", "MKT-1")]
    for e in edges:
        assert e["accepted"] and e["product_a"] < e["product_b"] and e["run_id"]
        assert gid[e["product_a"]] == gid[e["product_b"]]
        if e["signal"] == "phash":
            assert 0 <= e["distance"] <= 64 and e["image_a"] and e["image_b"]
    run = ws.last_run("dedup")
    assert run["counts"]["candidate_pairs"] >= run["counts"]["accepted_pairs"] > 0
    assert run["params"]["dedup"]["rule"] == ws.config.dedup.rule


def test_dedup_rule_comes_from_config(tmp_path, bench):
    ws = _workspace(tmp_path, bench)
    ws.config_path.write_text('[dedup]\nrule = "identical_image"\nkeep_rejected_edges = true\n')
    assert CliRunner().invoke(app, ["dedup", "-w", str(tmp_path)]).exit_code == 0
    groups = ws.read_table("product_groups")
    assert set(groups.column("group_size").to_pylist()) == {1}  # every image is distinct: nothing merged
    edges = ws.read_table("duplicate_edges")
    assert edges.num_rows > 0 and not any(edges.column("accepted").to_pylist())
    ws.config_path.write_text('[dedup]\nrule = "image_similar"\n')
    bad = CliRunner().invoke(app, ["dedup", "-w", str(tmp_path)])
    assert bad.exit_code == 2 and "dedup.rule" in bad.output
