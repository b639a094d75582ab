"""Stale embeddings and class imbalance in `visprep status`: every staleness reason on a hand-built workspace, fixed by
the incremental embed; the stratified shares against the planner itself and the realised batch plan."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from visprep.cli import app
from visprep.embed.registry import Embedder, register_embedder, unregister_embedder
from visprep.embed.stage import embed_stage
from visprep.embed.store import FeatureStore
from visprep.quality.imbalance import category_balance, imbalance_ratio, stratified_shares
from visprep.quality.staleness import stale_embeddings
from visprep.sampling.planner import plan_epoch
from visprep.sampling.stage import sample_stage
from visprep.schema import IMAGES, PRODUCT_IMAGES, PRODUCTS, SPLITS, URLS
from visprep.views.features import features_root
from visprep.workspace import Workspace

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class BytesEmbedder(Embedder):
    """Deterministic 8-d vectors from the bytes (the store only needs some vector per image)."""

    dim = 8
    modality = "image"

    def __init__(self, version: str = "v2") -> None:
        self.model_id = f"bytes8@{version}"

    def _embed(self, inputs):
        return np.stack([np.frombuffer(hashlib.sha256(bytes(d)).digest()[:8], np.uint8).astype(np.float32) + 1
                         for d in inputs])


@pytest.fixture
def embedder():
    built: list[str] = []

    def factory(**o):  # no model_id_for: telling the id means building the model
        built.append(o.get("version", "v2"))
        return BytesEmbedder(o.get("version", "v2"))

    register_embedder("bytes8", factory, replace=True)
    yield built
    unregister_embedder("bytes8")


def _stale_workspace(root: Path) -> tuple[Workspace, dict[str, str]]:
    """P0 current, P1 partial, P2 image changed since embedded, P3 old model only, P4 never embedded, P5 no image."""
    ws = Workspace(root)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.config_path.write_text('[embed]\nmodel = "bytes8"\noptions = { version = "v2" }\n')
    ids = {name: ws.store.put(f"image {name}".encode(), "jpg") for name in
           ("p0a", "p0b", "p1a", "p1b", "p2old", "p2new", "p3", "p4")}
    urls, pimgs = [], []

    def listing(pid: str, name: str, image: str | None, when: dt.datetime, status: str = "ok") -> None:
        url = f"file:///{pid}/{name}.jpg"
        pimgs.append({"product_id": pid, "position": len(pimgs), "url": url, "source": "catalog"})
        urls.append({"url": url, "status": status, "image_id": image, "fetched_at": when})

    listing("P0", "a", ids["p0a"], T0)
    listing("P0", "b", ids["p0b"], T0)
    listing("P1", "a", ids["p1a"], T0)
    listing("P1", "b", ids["p1b"], T0)
    listing("P2", "a", ids["p2old"], T0)
    urls.append({"url": "file:///P2/a.jpg", "status": "ok", "image_id": ids["p2new"],  # re-fetched: new bytes
                 "fetched_at": T0 + dt.timedelta(days=3)})
    listing("P3", "a", ids["p3"], T0)
    listing("P4", "a", ids["p4"], T0)
    listing("P5", "a", None, T0, status="http_404")
    ws.write_table("products", pa.Table.from_pylist(
        [{"product_id": f"P{k}", "title": f"t{k}", "category": "c", "top_category": "c"} for k in range(6)],
        schema=PRODUCTS))
    ws.write_table("product_images", pa.Table.from_pylist(pimgs, schema=PRODUCT_IMAGES))
    ws.write_table("urls", pa.Table.from_pylist(urls, schema=URLS))
    ws.write_table("images", pa.Table.from_pylist(
        [{"image_id": i, "status": "ok", "format": "jpeg"} for i in ids.values()], schema=IMAGES))
    emb = BytesEmbedder("v2")
    cur = FeatureStore(features_root(ws), emb.model_id, 8)
    done = ["p0a", "p0b", "p1a", "p2old"]
    cur.append([ids[n] for n in done], emb.embed([f"image {n}".encode() for n in done]),
               made_at=T0 + dt.timedelta(days=1))
    old = BytesEmbedder("v1")
    FeatureStore(features_root(ws), old.model_id, 8).append([ids["p3"]], old.embed([b"image p3"]))
    return ws, ids


def test_every_staleness_reason_and_the_embed_fix(tmp_path: Path, embedder) -> None:
    ws, _ = _stale_workspace(tmp_path)
    rep = stale_embeddings(ws)
    assert rep.model_id == "bytes8@v2"
    assert (rep.products, rep.up_to_date, rep.partial, rep.no_image) == (5, 1, 1, 1)
    assert rep.stale == {"image_changed": 1, "other_model": 1, "not_embedded": 1}
    assert rep.images_to_embed == 4  # p1b, p2new, p3, p4
    by = {e["product_id"]: e for e in rep.examples}
    assert set(by) == {"P2", "P3", "P4"}
    assert by["P2"]["reason"] == "image_changed" and "2024-01-04" in by["P2"]["detail"]
    assert by["P3"]["reason"] == "other_model" and "bytes8@v1" in by["P3"]["detail"]
    assert rep.other_models == {"bytes8@v1": 1}
    out = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert "1 of 5 products current" in out.output and "fix: `visprep embed`" in out.output
    assert "P2: image_changed" in out.output
    js = CliRunner().invoke(app, ["status", "-w", str(ws.root), "--json"])
    assert js.exit_code == 0, js.output
    q = json.loads(js.output)["quality"]
    assert q["stale_embeddings"]["stale"]["other_model"] == 1 and "class_balance" in q
    # The incremental embed embeds exactly the 4 images and leaves nothing stale.
    r = embed_stage(ws)
    assert r.embedded == 4 and r.skipped == 4
    built = len(embedder)
    rep = stale_embeddings(ws)
    assert (rep.up_to_date, rep.partial, sum(rep.stale.values()), rep.images_to_embed) == (5, 0, 0, 0)
    assert len(embedder) == built  # status took the model id from the embed run, no model was built


def test_stratified_shares_match_the_planner() -> None:
    rng = np.random.default_rng(0)
    sizes = {0: (300, 2), 1: (40, 2), 2: (8, 3)}  # category: (products, images each)
    product, category = [], []
    pid = 0
    for c, (n, m) in sizes.items():
        for _ in range(n):
            product += [pid] * m
            category += [c] * m
            pid += 1
    product, category = np.array(product), np.array(category)
    k, p = 2, 8
    cells = np.array([n * int(np.ceil(m / k)) for n, m in sizes.values()])
    for temperature in (1.0, 2.0, 4.0):
        plan = plan_epoch(product, product, category, p=p, k=k, temperature=temperature, rng=rng)
        cls_cat = category[plan.item[:, :, 0]].ravel()
        realised = np.bincount(cls_cat, minlength=3) / cls_cat.size
        want = stratified_shares(cells, temperature)
        # The last batch's top-up cells (fewer than P) are the only cells the formula does not count.
        assert np.abs(realised - want).max() <= p / cls_cat.size + 1e-9, (temperature, realised, want)
    assert stratified_shares(cells, 1.0) == pytest.approx(cells / cells.sum())
    assert imbalance_ratio(stratified_shares(cells, 4.0)) < imbalance_ratio(cells)
    with pytest.raises(ValueError, match="temperature"):
        stratified_shares(cells, 0.5)


def test_category_balance_on_a_workspace_with_a_batch_plan(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.config_path.write_text("[sampling]\np = 4\nk = 2\ntemperature = 3.0\n")
    products, pimgs, urls, images, splits = [], [], [], [], []
    counts = {"shoes": 60, "bags": 12, "lamps": 4}
    for top, n in counts.items():
        for j in range(n):
            pid = f"{top}-{j}"
            products.append({"product_id": pid, "title": pid, "category": top, "top_category": top})
            splits.append({"product_id": pid, "group_id": pid, "split": "train"})
            for v in range(2):
                url = f"file:///{pid}/{v}.jpg"
                pimgs.append({"product_id": pid, "position": v, "url": url, "source": "catalog"})
                urls.append({"url": url, "status": "ok", "image_id": f"{pid}-{v}", "fetched_at": T0})
                images.append({"image_id": f"{pid}-{v}", "status": "ok", "format": "jpeg"})
    for name, rows, schema in (("products", products, PRODUCTS), ("product_images", pimgs, PRODUCT_IMAGES),
                               ("urls", urls, URLS), ("images", images, IMAGES), ("splits", splits, SPLITS)):
        ws.write_table(name, pa.Table.from_pylist(rows, schema=schema))
    before = category_balance(ws).as_dict()
    assert all(c["realised_share"] is None for c in before["categories"])
    sample_stage(ws)
    bal = category_balance(ws).as_dict()
    rows = {c["category"]: c for c in bal["categories"]}
    assert {c: rows[c]["products"] for c in counts} == counts
    assert rows["lamps"]["natural_share"] == pytest.approx(4 / 76, abs=1e-6)
    assert rows["lamps"]["stratified_share"] > rows["lamps"]["natural_share"]
    total_classes = ws.read_table("batch_plan").num_rows // 2
    for c in rows.values():
        assert abs(c["realised_share"] - c["stratified_share"]) <= 4 / total_classes + 1e-9
    assert bal["imbalance_ratio_stratified"] < bal["imbalance_ratio_natural"] == pytest.approx(15.0)
    out = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert "class balance (train, K = 2, temperature 3.0)" in out.output and "lamps: 4 products" in out.output
