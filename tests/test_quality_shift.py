"""Distribution shift on real images: demo catalog photos vs real OpenCV sample photos, degraded as user uploads
(AUC high, verdict shift); catalog vs catalog (AUC near 0.5, no shift); the PSI oracle; the user-photo mix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from photo_fixtures import IN_DEMO, OPENCV, ThumbEmbedder, write_user_photos
from typer.testing import CliRunner

from visprep.cli import app
from visprep.config import ShiftConfig
from visprep.demo.sources import write_demo_sources
from visprep.embed.registry import register_embedder, unregister_embedder
from visprep.embed.stage import features_root
from visprep.embed.store import part_writer, store_dir_name
from visprep.quality.mix import mix_user_photos
from visprep.quality.shift import (
    FEATURES,
    catalog_images,
    image_stats,
    psi,
    shift_report,
    vectors_for,
)
from visprep.schema import INTERACTION_PAIRS
from visprep.workspace import Workspace


@pytest.fixture(scope="module")
def shift_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    photos = sorted(p for p in OPENCV.glob("*") if p.suffix in (".jpg", ".png") and p.name not in IN_DEMO)
    if len(photos) < 40:
        pytest.skip(f"needs the opencv-doc sample photos in {OPENCV}")
    register_embedder("thumb16", lambda **_: ThumbEmbedder(), replace=True)
    root = tmp_path_factory.mktemp("shift")
    sources = write_demo_sources(root / "src", n_products=70)
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text('[embed]\nmodel = "thumb16"\n[shift]\nfolds = 4\n')
    runner = CliRunner()
    for args in (["catalog", *map(str, sources.catalog_files)], ["fetch"], ["inspect"], ["dedup"], ["split"],
                 ["pairs"]):
        result = runner.invoke(app, [*args, "-w", str(ws.root)])
        assert result.exit_code == 0, (args, result.output)
    write_user_photos(ws, photos)
    yield ws
    unregister_embedder("thumb16")


def test_catalog_vs_user_photos_is_a_shift(shift_ws: Workspace) -> None:
    result = CliRunner().invoke(app, ["shift", "-w", str(shift_ws.root)])
    assert result.exit_code == 0, result.output
    assert "verdict: shift" in result.output
    rows = {r["check"]: r for r in shift_ws.read_table("domain_shift").to_pylist()}
    auc = rows["domain_auc"]
    print(f"catalog vs degraded opencv photos: AUC {auc['value']:.3f} (n {auc['n_catalog']}/{auc['n_user']}); "
          + ", ".join(f"{f} KS {rows[f]['value']:.2f} PSI {rows[f]['psi']:.2f}" for f in FEATURES))
    assert auc["value"] >= 0.9 and auc["shift"]
    assert set(rows) == {"domain_auc", *FEATURES}
    # The uploads were cut to a 160-320 px shorter side; the studio renders are smooth (low Laplacian variance), so
    # the sharpness of the photos still differs from theirs even after the blur.
    assert 160 <= rows["resolution"]["user_median"] <= 320
    assert rows["resolution"]["shift"] and rows["blur"]["shift"]
    # Every photo now has a vector in the configured model's store: a rerun embeds nothing.
    run = shift_ws.last_run("shift")
    assert run["counts"]["embedded"] == auc["n_catalog"] + auc["n_user"]
    assert run["metrics"]["shift"]["verdict"] == "shift"
    ids = sorted(catalog_images(shift_ws).column("image_id").to_pylist())[:5]
    _, found, added, _, _ = vectors_for(shift_ws, ids, ["jpg"] * 5, embedder=ThumbEmbedder())
    assert found.all() and added == 0
    # The shift stage tags its store parts: the catalog's vectors (writer embed) are not its.
    parts = (features_root(shift_ws) / store_dir_name(ThumbEmbedder().model_id) / "parts").glob("part-*.parquet")
    assert {part_writer(p) for p in parts} == {"shift"}
    status = CliRunner().invoke(app, ["status", "-w", str(shift_ws.root), "--json"])
    assert status.exit_code == 0, status.output
    q = json.loads(status.output)["quality"]
    assert q["shift"]["verdict"] == "shift" and q["shift"]["domain_auc"] == pytest.approx(auc["value"], abs=1e-4)


def test_catalog_vs_catalog_is_no_shift(shift_ws: Workspace) -> None:
    cat = catalog_images(shift_ws)
    ids = cat.column("image_id").to_pylist()
    exts = ["jpg" if f == "jpeg" else "png" for f in cat.column("format").to_pylist()]
    vecs, found, _, _, _ = vectors_for(shift_ws, ids, exts, embedder=ThumbEmbedder())
    assert found.all()
    stats = np.stack([image_stats(shift_ws.store.get(i, e)) for i, e in zip(ids, exts)])
    aucs = []
    for seed in range(2):
        perm = np.random.default_rng(seed).permutation(len(ids))
        a, b = perm[: len(ids) // 2], perm[len(ids) // 2:]
        rep = shift_report(vecs[a], vecs[b], stats[a], stats[b], cfg=ShiftConfig(folds=4, seed=seed))
        aucs.append(rep.auc)
        assert not rep.shift, rep.as_dict()
    print(f"catalog vs catalog (2 random halves of {len(ids)}): AUC {[round(x, 3) for x in aucs]}")
    assert 0.3 <= np.mean(aucs) <= 0.65


def _psi_oracle(r: list[float], c: list[float], bins: int = 10, floor: float = 1e-4) -> float:
    pooled = sorted(r + c)
    edges = sorted(set(np.quantile(pooled, [k / bins for k in range(1, bins)]).tolist()))

    def props(xs: list[float]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for x in xs:
            counts[sum(1 for e in edges if x >= e)] += 1
        return [max(n / len(xs), floor) for n in counts]

    rp, cp = props(r), props(c)
    return sum((b - a) * np.log(b / a) for a, b in zip(rp, cp))


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=80),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=80))
@settings(max_examples=150, deadline=None)
def test_psi_matches_brute_force(r: list[float], c: list[float]) -> None:
    assert psi(np.array(r), np.array(c)) == pytest.approx(_psi_oracle(r, c), rel=1e-9, abs=1e-12)


def test_psi_of_identical_samples_is_zero_and_grows_with_shift() -> None:
    x = np.random.default_rng(0).normal(size=2000)
    assert psi(x, x) == 0.0
    assert psi(x, x + 0.1) < psi(x, x + 1.0)


def test_user_photo_mix(shift_ws: Workspace) -> None:
    ws = shift_ws
    queries = ws.read_table("queries").to_pylist()
    splits = {r["product_id"]: r["split"] for r in ws.read_table("splits").to_pylist()}
    train = sorted(p for p, s in splits.items() if s == "train")
    evals = sorted(p for p, s in splits.items() if s == "eval")
    # 30 photos matched to train products (half by cleaned id, half by upload sha), 3 to eval products, one held
    # out as an evaluation query, one only skip-above (not a link).
    links = []
    for k, q in enumerate(queries[:30]):
        ref = q["image_id"] if k % 2 else q["input_sha256"]
        links.append({"anchor_id": f"q{k}", "anchor_type": "query", "anchor_image_id": ref, "product_id": train[k],
                      "kind": "purchase" if k < 5 else "click", "count": 1, "raw_weight": 1.0,
                      "debiased_weight": 1.0})
    for k, q in enumerate(queries[30:33]):
        links.append({"anchor_id": f"e{k}", "anchor_type": "query", "anchor_image_id": q["image_id"],
                      "product_id": evals[k], "kind": "purchase", "count": 1, "raw_weight": 3.0})
    links.append({"anchor_id": "h", "anchor_type": "query", "anchor_image_id": queries[33]["image_id"],
                  "product_id": train[40], "kind": "purchase", "count": 1, "raw_weight": 3.0})
    links.append({"anchor_id": "s", "anchor_type": "query", "anchor_image_id": queries[34]["image_id"],
                  "product_id": train[41], "kind": "skip_above", "count": 1, "raw_weight": 1.0})
    ws.write_table("interaction_pairs", pa.Table.from_pylist(links, schema=INTERACTION_PAIRS))
    ws.write_table("eval_queries", pa.table({"query_id": [queries[33]["image_id"]]}))
    n_cat = sum(1 for r in ws.read_table("pairs").to_pylist() if r["kind"] == "same_product" and r["split"] == "train")

    ws.config_path.write_text('[embed]\nmodel = "thumb16"\n[mix]\nfraction = 0.1\n')
    ws._config = None
    pairs_before = ws.read_table("pairs")
    out = mix_user_photos(ws)
    rows = ws.read_table("user_pairs").to_pylist()
    assert {r["kind"] for r in rows} == {"user_photo"}
    assert ws.read_table("pairs").equals(pairs_before)  # the mix never writes the pairs stage's table
    assert out["linked"] == 33 and out["eligible"] == 30  # eval products and the eval query are left out
    assert out["target"] == int(0.1 / 0.9 * n_cat) and out["added"] == min(30, out["target"]) == len(rows)
    by_img = {q["image_id"]: k for k, q in enumerate(queries)}
    assert all(r["split"] == "train" and r["anchor_product_id"] == train[by_img[r["anchor_id"]]] for r in rows)
    assert sum(by_img[r["anchor_id"]] < 5 for r in rows) == min(5, len(rows))  # purchases go first
    positives = {r["image_id"] for r in ws.read_table("images").to_pylist()}
    assert all(r["positive_id"] in positives for r in rows)
    # Rerun: replaced, not duplicated; a rerun of the pairs stage keeps them; fraction 0 removes them; a large
    # fraction is capped by the links.
    mix_user_photos(ws)
    assert ws.read_table("user_pairs").to_pylist() == rows
    result = CliRunner().invoke(app, ["pairs", "-w", str(ws.root), "--with-deps"])
    assert result.exit_code == 0, result.output
    assert ws.read_table("user_pairs").to_pylist() == rows
    assert "user_photo" not in set(ws.read_table("pairs").column("kind").to_pylist())
    ws.config_path.write_text('[embed]\nmodel = "thumb16"\n[mix]\nfraction = 0.9\n')
    ws._config = None
    out = mix_user_photos(ws)
    assert out["added"] == 30 and "only 30" in out["note"]
    ws.config_path.write_text('[embed]\nmodel = "thumb16"\n[shift]\nfolds = 4\n[mix]\nfraction = 0.0\n')
    ws._config = None
    out = mix_user_photos(ws)
    assert out["added"] == 0 and ws.has_table("user_pairs") and ws.read_table("user_pairs").num_rows == 0


def test_no_link_says_so(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.write_table("pairs", pa.table({"anchor_id": ["a"], "kind": ["same_product"]}))
    ws.config_path.write_text("[mix]\nfraction = 0.2\n")
    out = mix_user_photos(ws)
    assert out["added"] == 0 and "no user photo is linked" in out["note"]
