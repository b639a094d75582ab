"""The per-batch functions the registry names (`Stage.per_batch`): top-level and picklable, taking and returning plain
data, one result per record (a bad record is a row with its reason, never an exception), and equal to what the
stage wrote for the same records (the stage bodies run through them)."""

from __future__ import annotations

import importlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from photo_fixtures import IN_DEMO, OPENCV

from visprep import stages
from visprep.demo.sources import write_demo_sources
from visprep.embed.stage import EmbedderSpec, embed_batch, embedder_for, embedder_spec
from visprep.embed.store import FeatureStore
from visprep.export.stage import PreprocessFailure, preprocess_batch, resolve_profile
from visprep.fetch.stage import client_settings, fetch_batch, local_roots_by_url
from visprep.images.signature import CODE_COLUMNS, COLOR_COLUMNS
from visprep.images.sniff import extension_for
from visprep.images.stage import inspect_batch
from visprep.pipeline import run_pipeline
from visprep.schema import IMAGES, SYNTHETIC_VIEWS
from visprep.synthetic.stage import GeneratorSpec, generator_spec, render_batch
from visprep.views.features import features_root
from visprep.workspace import ImageStore, Workspace

CONFIG = ('[pipeline]\nstages = ["fetch", "inspect", "dedup", "split", "synth", "embed", "embed_views", "pairs", '
          '"export"]\n'
          "[export]\nmax_count = 20\n"
          "[inspect]\nworkers = 1\nbatch_size = 8\n"
          '[embed]\noptions = { profile = "imagenet-64" }\n'
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n'
          "max_images_per_product = 1\n")
MISSING = "/nonexistent/visprep-per-batch/missing.jpg"
NOT_BATCHED: set[str] = set()  # every per_batch function has a case below


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("per-batch")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    src = write_demo_sources(root / "src", n_products=20, seed=3)
    run_pipeline(ws, src.catalog_files)
    return Workspace(ws.root)


@pytest.fixture(scope="module")
def garbage(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("garbage") / "not-an-image.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 50)
    return str(path)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn` as an engine on another machine would: its arguments go through pickle first."""
    args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
    return fn(*args, **kwargs)


def _stored(ws: Workspace, n: int) -> list[tuple[str, str, str]]:
    """(image_id, path, format) of the first `n` stored catalog images, by image id."""
    latest = ws.latest_urls()
    ok = latest.filter(pc.equal(latest["status"], "ok")).sort_by("image_id")
    seen: dict[str, str] = dict(zip(ok["image_id"].to_pylist(), ok["format"].to_pylist()))
    return [(i, str(ws.store.path(i, extension_for(f))), f) for i, f in list(seen.items())[:n]]


def test_every_per_batch_is_a_picklable_top_level_function() -> None:
    named = [s for s in stages.STAGES if s.per_batch]
    assert {s.name for s in named} >= {"fetch", "inspect", "embed", "embed_views", "dedup", "synth", "export"}
    for spec in named:
        module, _, name = spec.per_batch.partition(":")
        fn = getattr(importlib.import_module(module), name)
        assert fn.__qualname__ == name and fn.__module__ == module, spec.per_batch  # top level, not a closure
        assert pickle.loads(pickle.dumps(fn)) is fn, spec.per_batch


def test_every_batched_stage_has_a_case_here() -> None:
    """A stage given a per_batch function gets its case below (one row per record, equal to the stage's)."""
    cases = {n.removeprefix("test_").removesuffix("_batch_matches_the_stage")
             for n in globals() if n.endswith("_batch_matches_the_stage")}
    batched = {s.name for s in stages.STAGES if s.per_batch} - NOT_BATCHED
    assert batched <= cases, f"per_batch functions without a case: {sorted(batched - cases)}"


def test_fetch_batch_matches_the_stage(ws: Workspace, tmp_path: Path) -> None:
    latest = ws.latest_urls().sort_by("url")
    rows = latest.slice(0, 6).to_pylist()
    urls = [r["url"] for r in rows] + [MISSING]
    store = tmp_path / "store"
    got = _call(fetch_batch, urls, client_settings(ws.config.fetch), local_roots_by_url(ws, urls[:-1]),
                store_root=str(store))
    assert [g["url"] for g in got] == urls  # one row per URL, in input order
    keys = ["url", "status", "http_status", "attempts", "reason", "final_url", "format", "image_id", "bytes"]
    assert [{k: g[k] for k in keys} for g in got[:-1]] == [{k: r[k] for k in keys} for r in rows]
    for g in got[:-1]:
        if g["image_id"]:  # the bytes went into the given store folder, where the stage put them in its own
            ext = extension_for(g["format"])
            assert ImageStore(store).get(g["image_id"], ext) == ws.store.get(g["image_id"], ext)
    bad = got[-1]
    assert bad["status"] != "ok" and bad["image_id"] is None and MISSING in bad["reason"]


def test_inspect_batch_matches_the_stage(ws: Workspace) -> None:
    cfg = ws.config.inspect
    items = [(i, p, f, cfg.max_pixels, cfg.max_decoded_bytes) for i, p, f in _stored(ws, 5)]
    items.append(("missing", MISSING, "jpeg", cfg.max_pixels, cfg.max_decoded_bytes))
    rows = _call(inspect_batch, items)
    assert [r["image_id"] for r in rows] == [i[0] for i in items]
    got = pa.Table.from_pylist(rows[:-1], schema=IMAGES).drop_columns(["run_id"])
    images = ws.read_table("images")
    wrote = images.filter(pc.is_in(images["image_id"], got["image_id"])).sort_by("image_id").drop_columns(["run_id"])
    assert got.sort_by("image_id").equals(wrote.cast(got.schema))
    assert rows[-1]["status"] == "unreadable" and MISSING in rows[-1]["reason"]


def _embed_case(ws: Workspace, items: list[tuple[str, str]], garbage: str) -> None:
    spec = embedder_spec(ws.config.embed, model_threads=1)
    model_id = embedder_for(spec).model_id
    batch = [*items, ("missing", MISSING), ("garbage", garbage)]
    ids, vecs, failures = _call(embed_batch, batch, spec)
    assert sorted(ids + [f["image_id"] for f in failures]) == sorted(i for i, _ in batch)  # one result each
    assert ids == [i for i, _ in items] and vecs.shape == (len(items), embedder_for(spec).dim)
    assert {f["image_id"]: f["reason"] for f in failures} == {"missing": "missing_bytes", "garbage": "embed_decode"}
    assert all(f["detail"] for f in failures)
    stored, found = FeatureStore.open_existing(features_root(ws), model_id).get(ids)
    assert found.all()
    np.testing.assert_allclose(vecs, stored, atol=1e-5)


def test_embed_batch_matches_the_stage(ws: Workspace, garbage: str) -> None:
    _embed_case(ws, [(i, p) for i, p, _ in _stored(ws, 4)], garbage)


def test_embed_views_batch_matches_the_stage(ws: Workspace, garbage: str) -> None:
    views = ws.read_table("synthetic_images", ["image_id", "status"])
    ok = sorted(views.filter(pc.equal(views["status"], "ok"))["image_id"].to_pylist())[:3]
    assert ok, "the demo made no synthetic views"
    _embed_case(ws, [(i, str(ws.store.path(i, "jpg"))) for i in ok], garbage)


def test_embedder_spec_is_built_once_per_process(ws: Workspace) -> None:
    spec = embedder_spec(ws.config.embed, model_threads=1)
    again = pickle.loads(pickle.dumps(spec))
    assert isinstance(again, EmbedderSpec) and embedder_for(again) is embedder_for(spec)


def test_synth_batch_matches_the_stage(ws: Workspace, tmp_path: Path) -> None:
    views = ws.read_table("synthetic_views")
    assert views.num_rows, "the demo made no synthetic views"
    fmt = dict(zip(ws.latest_urls()["image_id"].to_pylist(), ws.latest_urls()["format"].to_pylist()))
    sources = sorted({(r["source_product_id"], r["source_image_id"], r["split"])
                      for r in views.select(["source_product_id", "source_image_id", "split"]).to_pylist()})[:3]
    batch = [(p, i, str(ws.store.path(i, extension_for(fmt[i]))), s) for p, i, s in sources]
    batch.append(("p-missing", "missing", MISSING, "train"))
    cfg, inspect = ws.config.synthetic, ws.config.inspect
    taken = set(ws.read_table("products", ["product_id"])["product_id"].to_pylist())
    spec = generator_spec(ws)
    assert isinstance(spec, GeneratorSpec)
    rows = _call(render_batch, batch, spec, store=ImageStore(tmp_path / "store"), seed=cfg.seed,
                 jpeg_quality=cfg.jpeg_quality, max_pixels=inspect.max_pixels,
                 max_decoded_bytes=inspect.max_decoded_bytes, taken=taken)
    assert [(r["product_id"], r["image_id"]) for r in rows] == [(b[0], b[1]) for b in batch]
    made = [v for r in rows for v in r["views"]]
    facts = pa.Table.from_pylist([v.pop("facts") for v in made], schema=IMAGES).drop_columns(["run_id"])
    key = [(k, "ascending") for k in ("source_image_id", "op", "image_id", "product_id")]
    got = pa.Table.from_pylist(made, schema=SYNTHETIC_VIEWS).drop_columns(["run_id"]).sort_by(key)
    chosen = pa.array([f"{p}\x00{i}" for p, i, _ in sources])
    pair = pc.binary_join_element_wise(views["source_product_id"], views["source_image_id"], "\x00")
    wrote = views.filter(pc.is_in(pair, chosen)).drop_columns(["run_id"]).sort_by(key)
    assert got.equals(wrote)
    images = ws.read_table("synthetic_images").drop_columns(["run_id"])
    wrote_facts = images.filter(pc.is_in(images["image_id"], got["image_id"])).sort_by("image_id")
    assert facts.sort_by("image_id").equals(wrote_facts.cast(facts.schema))
    for v in made:  # the view images went into the given store folder by content address
        assert ImageStore(tmp_path / "store").get(v["image_id"], "jpg") == ws.store.get(v["image_id"], "jpg")
    bad = rows[-1]
    assert bad["status"] == "synth_failed" and bad["views"] == [] and "FileNotFoundError" in bad["reason"]
    assert [q["reason"] for q in bad["refused"]] == ["synth_failed"]


def test_dedup_batch_matches_the_stage(ws: Workspace, garbage: str) -> None:
    """Dedup decodes the images of its candidate pairs that lack a stored signature as inspect stores them."""
    fn = stages.get("dedup").per_batch
    module, _, name = fn.partition(":")
    signature_batch = getattr(importlib.import_module(module), name)
    items = [(i, p) for i, p, _ in _stored(ws, 4)] + [("missing", MISSING), ("garbage", garbage)]
    rows = _call(signature_batch, items)
    assert [r["image_id"] for r in rows] == [i for i, _ in items]
    cols = [*CODE_COLUMNS, *COLOR_COLUMNS]
    images = ws.read_table("images", ["image_id", *cols])
    stored = {r["image_id"]: r for r in images.to_pylist()}
    for r in rows[:-2]:
        assert r["status"] == "ok" and {c: r[c] for c in cols} == pytest.approx({c: stored[r["image_id"]][c]
                                                                                 for c in cols})
    assert [(r["status"], r["image_id"] in (r["reason"] or "")) for r in rows[-2:]] == [("unreadable", True),
                                                                                        ("undecodable", True)]
    assert all(rows[-1][c] is None for c in cols)


def test_export_batch_matches_the_stage(ws: Workspace, garbage: str) -> None:
    """export's function (the stage's own tests compare its shards); here: one result per record, the bad ones
    with their reasons."""
    profile = resolve_profile(ws.config.preprocess)
    q = ws.config.preprocess.jpeg_quality
    items = [(p, profile, q) for _, p, _ in _stored(ws, 3)] + [(MISSING, profile, q), (garbage, profile, q)]
    out = _call(preprocess_batch, items)
    assert len(out) == len(items)
    assert all(isinstance(o, bytes) and o[:2] == b"\xff\xd8" for o in out[:3])
    assert isinstance(out[3], PreprocessFailure) and out[3].reason == "missing_bytes" and MISSING in out[3].detail
    assert isinstance(out[4], PreprocessFailure) and garbage in out[4].detail


def test_queries_batch_matches_the_stage(tmp_path: Path, garbage: str) -> None:
    """The queries stage's rows (cleaned photos stored by content, a refused one with its reason) are what
    `clean_query_batch` gives for the same bytes with the section as plain data."""
    from visprep.queries.clean import clean_query_batch
    from visprep.queries.stage import queries_stage

    photos = sorted(p for p in OPENCV.glob("*.jpg") if p.name not in IN_DEMO)[:3] if OPENCV.exists() else []
    if not photos:
        pytest.skip(f"no sample photos in {OPENCV} (Debian's opencv-doc)")
    qws = Workspace(tmp_path / "q")
    qws.root.mkdir()
    qws.config_path.write_text('[queries]\nnsfw = "none"\nblur_threshold = 5.0\n')
    sources = [str(p) for p in photos] + [garbage]
    queries_stage(qws, sources)
    stored = {r["source"]: r for r in qws.read_table("queries").to_pylist()}
    store = tmp_path / "store"
    got = _call(clean_query_batch, [(src, Path(src).read_bytes()) for src in sources],
                qws.config.queries.model_dump(mode="json"), store_root=str(store),
                jpeg_quality=qws.config.queries.jpeg_quality)
    assert [r["source"] for r in got] == sources
    for row in got:
        want = stored[row["source"]]
        assert {k: want[k] for k in row if k != "steps"} == {k: v for k, v in row.items() if k != "steps"}
        assert [st["step"] for st in json.loads(row["steps"])] == [st["step"] for st in json.loads(want["steps"])]
        if row["status"] == "accepted":
            assert (store / Path(qws.store.path(row["image_id"], "jpg")).relative_to(qws.store.root)).read_bytes() \
                == qws.store.get(row["image_id"], "jpg")
    assert got[-1]["status"] == "rejected" and got[-1]["reason"]
    assert any(r["status"] == "accepted" for r in got)
