"""Synthetic rows across catalog re-ingest: synth's views and colour-variant products follow their source product
(refreshed when it changed, dropped with it) in synth's own tables; colour naming of variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from visprep.catalog.stage import ingest_catalog
from visprep.demo.sources import write_demo_sources
from visprep.fetch.stage import fetch_stage
from visprep.images.stage import inspect_stage
from visprep.split.stage import split_stage
from visprep.synthetic.products import color_name, variant_color
from visprep.synthetic.stage import synth_stage
from visprep.views.catalog import all_products, all_splits, variant_sources
from visprep.workspace import Workspace

CONFIG = ("[split]\nfractions = { train = 0.7, eval = 0.3 }\n[inspect]\nworkers = 1\n"
          "[synthetic]\nbackgrounds = [\"solid\"]\nreframe_scales = [0.8]\nhue_shifts_deg = [120.0]\n")


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Workspace, list[Path]]:
    """Demo catalog -> fetch -> inspect -> split -> synth: a workspace with synthetic rows."""
    sources = write_demo_sources(tmp_path / "src", n_products=20)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "visprep.toml").write_text(CONFIG)
    ws = Workspace(tmp_path / "ws")
    ingest_catalog(ws, sources.catalog_files)
    fetch_stage(ws)
    inspect_stage(ws)
    split_stage(ws)
    synth_stage(ws)
    return ws, [Path(p) for p in sources.catalog_files]


def _stage_rows(ws: Workspace) -> list[tuple]:
    """The product_images rows the synth stage wrote."""
    return sorted((r["product_id"], r["url"]) for r in ws.read_table("synthetic_product_images").to_pylist())


def _jsonl_source(ws: Workspace, files: list[Path]) -> tuple[str, Path]:
    """A product of the JSONL file that has a colour variant and same-SKU views."""
    variants = variant_sources(ws)
    jsonl = next(f for f in files if f.suffix == ".jsonl")
    origin = {p["product_id"]: p["source_file"] for p in ws.read_table("products").to_pylist()}
    same_sku = {pid for pid, _ in _stage_rows(ws)}
    chosen = sorted(src for src in variants.values() if Path(origin[src]).name == jsonl.name and src in same_sku)
    assert chosen, "the demo catalog should have a JSONL product with synthetic views"
    return chosen[0], jsonl


def _rewrite_jsonl(path: Path, pid: str, change) -> None:
    out = []
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(row, dict) and row.get("product_id") == pid:
            row = change(row)
            if row is None:
                continue
            line = json.dumps(row)
        out.append(line)
    path.write_text("\n".join(out) + "\n", encoding="utf-8", errors="surrogateescape")


def test_reingest_leaves_synthetic_rows_to_synth_which_follows_their_source(built):
    ws, files = built
    synthetic = ("synthetic_products", "synthetic_product_images", "synthetic_images", "synthetic_views")
    # 1. The same files again: nothing changes; the catalog's tables never held synthetic rows.
    before = {t: ws.table_fingerprint(t) for t in ("products", "product_images", *synthetic)}
    r = ingest_catalog(ws, files)
    assert (r.new, r.changed, r.removed, r.synthetic_dropped) == (0, 0, 0, 0)
    assert {t: ws.table_fingerprint(t) for t in ("products", "product_images", *synthetic)} == before

    # 2. A source product changes: synth refreshes only its variant's row (same views, same images).
    pid, jsonl = _jsonl_source(ws, files)
    rows_before = _stage_rows(ws)
    variants_before = variant_sources(ws)
    _rewrite_jsonl(jsonl, pid, lambda row: {**row, "title": row["title"] + " Limited Edition"})
    r = ingest_catalog(ws, files)
    assert r.changed == 1 and r.synthetic_dropped == 0
    s = synth_stage(ws)
    assert s.rendered_images == 0 and s.dropped == 0 and s.tables_written == ["synthetic_products"]
    assert _stage_rows(ws) == rows_before and variant_sources(ws) == variants_before
    products = {p["product_id"]: p for p in all_products(ws).to_pylist()}
    mine = {v for v, src in variants_before.items() if src == pid}
    assert mine and all("Limited Edition" in products[v]["title"] for v in mine)
    assert synth_stage(ws).tables_written == []

    # 3. The source product is removed: synth drops its views and variants, every other one stays.
    others = [row for row in _stage_rows(ws) if row[0] != pid and row[0] not in mine]
    _rewrite_jsonl(jsonl, pid, lambda row: None)
    r = ingest_catalog(ws, files)
    assert r.removed == 1 and r.synthetic_dropped == 0
    split_stage(ws)
    s = synth_stage(ws)
    assert s.dropped > 0 and s.rendered_images == 0
    assert _stage_rows(ws) == others
    pids = set(all_products(ws, ["product_id"]).column("product_id").to_pylist())
    assert pid not in pids and not (mine & pids)
    assert set(variants_before) - mine <= pids
    views = ws.read_table("synthetic_views").to_pylist()
    assert views and all(v["source_product_id"] != pid for v in views)
    assert not (mine & set(all_splits(ws).column("product_id").to_pylist()))


@pytest.mark.parametrize(("rgb", "name"), [
    ((220, 30, 30), "red"), ((240, 140, 20), "orange"), ((230, 220, 40), "yellow"), ((40, 180, 60), "green"),
    ((30, 200, 210), "cyan"), ((40, 60, 210), "blue"), ((140, 40, 200), "purple"), ((230, 60, 170), "pink"),
    ((110, 60, 25), "brown"), ((250, 250, 250), "white"), ((128, 128, 128), "grey"), ((15, 15, 15), "black"),
])
def test_color_name_of_plain_and_shaded_patches(rgb, name):
    patch = np.tile(np.asarray(rgb, np.uint8), (12, 12, 1))
    assert color_name(patch) == name
    shaded = np.clip(patch.astype(np.int16) + np.random.default_rng(0).integers(-12, 13, patch.shape), 0, 255)
    assert color_name(shaded.astype(np.uint8)) == name
    mask = np.zeros((12, 12), bool)
    mask[3:9, 3:9] = True
    framed = np.full_like(patch, 255)
    framed[mask] = rgb
    assert color_name(framed, mask) == name  # only the product counts, not the white background


def test_color_name_refuses_empty_selection_and_variant_colour_never_reads_as_the_source():
    with pytest.raises(ValueError, match="no pixel"):
        color_name(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool))
    assert variant_color("green", "Red", 120.0) == "green"
    assert variant_color("red", "Red", 10.0) == "red (hue +10 deg)"


def _reference_name(rgb: tuple[int, int, int]) -> str | None:
    """Brute-force oracle of one uniform colour with colorsys; None near a decision boundary."""
    import colorsys

    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    chroma = s * v
    if abs(chroma - 0.12) < 0.02:
        return None
    if chroma < 0.12:
        if min(abs(v - 0.25), abs(v - 0.8)) < 0.02:
            return None
        return "black" if v < 0.25 else "white" if v > 0.8 else "grey"
    angle = h * 360
    bounds = (15, 40, 70, 165, 195, 255, 290, 345)
    if min(abs(angle - b) for b in (*bounds, 0, 360)) < 3:
        return None
    names = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "red")
    name = names[sum(angle >= b for b in bounds)]
    if name in ("orange", "red") and abs(v - 0.5) < 0.02:
        return None
    return "brown" if name in ("orange", "red") and v < 0.5 else name


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_color_name_matches_a_colorsys_oracle_on_uniform_colours(rgb):
    expected = _reference_name(rgb)
    assume(expected is not None)
    assert color_name(np.tile(np.asarray(rgb, np.uint8), (4, 4, 1))) == expected
