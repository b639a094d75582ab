"""The user-photo mix as its own table (`user_pairs`), its photos in the shards, and mix + shift as stages of
`visprep run`: on the real demo catalog with real OpenCV sample photos degraded as phone uploads."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from photo_fixtures import IN_DEMO, OPENCV, ThumbEmbedder, write_user_photos
from typer.testing import CliRunner

from visprep.cli import app
from visprep.demo.sources import write_demo_sources
from visprep.embed.registry import register_embedder, unregister_embedder
from visprep.export.loader import webdataset_pipeline
from visprep.export.stage import resolve_profile
from visprep.images.preprocess import encode_jpeg, preprocess_uint8
from visprep.pipeline import is_up_to_date, run_pipeline
from visprep.quality.mix import export_user_pairs, mix_stage, mix_user_photos
from visprep.quality.popularity import popularity_stage
from visprep.quality.shift import shift_stage
from visprep.quality.stage import quality_stage
from visprep.schema import INTERACTION_PAIRS, PAIRS
from visprep.workspace import Workspace

N_TRAIN_LINKS = 12
STAGES = '["fetch", "inspect", "embed", "split", "pairs", "mix", "shift", "export"]'



def _config(fraction: float, quality: str = "") -> str:
    return (f'[embed]\nmodel = "thumb16"\n[shift]\nfolds = 4\n[mix]\nfraction = {fraction}\n[quality]\n{quality}'
            f'[pipeline]\nstages = {STAGES}\n[inspect]\nworkers = 1\n[export]\nworkers = 1\n')


def _shard_samples(ws: Workspace, split: str) -> list[dict]:
    return list(webdataset_pipeline(ws.shards_dir / split))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    photos = sorted(p for p in OPENCV.glob("*") if p.suffix in (".jpg", ".png") and p.name not in IN_DEMO)
    if len(photos) < 20:
        pytest.skip(f"needs the opencv-doc sample photos in {OPENCV}")
    register_embedder("thumb16", lambda **_: ThumbEmbedder(), replace=True)
    root = tmp_path_factory.mktemp("mix")
    sources = write_demo_sources(root / "src", n_products=40, seed=1)
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(_config(0.5))
    first = run_pipeline(ws, sources.catalog_files)
    # User photos: cleaned uploads in the image store and tables/queries, as the queries stage leaves them.
    queries = write_user_photos(ws, photos, limit=N_TRAIN_LINKS + 4)
    splits = {r["product_id"]: r["split"] for r in ws.read_table("splits").to_pylist()}
    train = sorted(p for p, s in splits.items() if s == "train")
    evals = sorted(p for p, s in splits.items() if s == "eval")
    assert len(train) >= N_TRAIN_LINKS + 1 and len(evals) >= 2
    # Searches that ended in a purchase: 12 photos -> train products (by cleaned id and by upload sha), 2 -> eval
    # products (never mixed), one evaluation query's photo -> a train product (never mixed).
    links, linked = [], {}
    for k, q in enumerate(queries[:N_TRAIN_LINKS]):
        links.append({"anchor_id": f"q{k}", "anchor_type": "query", "product_id": train[k], "kind": "purchase",
                      "anchor_image_id": q["image_id"] if k % 2 else q["input_sha256"], "count": 1,
                      "raw_weight": 1.0})
        linked[q["image_id"]] = train[k]
    for k, q in enumerate(queries[N_TRAIN_LINKS:N_TRAIN_LINKS + 2]):
        links.append({"anchor_id": f"e{k}", "anchor_type": "query", "anchor_image_id": q["image_id"],
                      "product_id": evals[k], "kind": "purchase", "count": 1, "raw_weight": 1.0})
    held = queries[N_TRAIN_LINKS + 2]
    links.append({"anchor_id": "h", "anchor_type": "query", "anchor_image_id": held["image_id"],
                  "product_id": train[N_TRAIN_LINKS], "kind": "purchase", "count": 1, "raw_weight": 1.0})
    ws.write_table("interaction_pairs", pa.Table.from_pylist(links, schema=INTERACTION_PAIRS))
    ws.write_table("eval_queries", pa.table({"query_id": [held["input_sha256"]]}))
    second = run_pipeline(ws)
    yield ws, first, second, linked, queries
    unregister_embedder("thumb16")


def test_mix_and_shift_apply_only_with_user_photos(mixed) -> None:
    ws, first, second, _, _ = mixed
    # No events and no queries: neither stage has anything to work on, and no table of theirs appears.
    assert first["mix"] == first["shift"] == "nothing to do"
    assert second["mix"]["added"] == N_TRAIN_LINKS and second["mix"]["linked"] == N_TRAIN_LINKS + 2
    assert second["shift"].report is not None and second["shift"].report.n_user >= 4
    assert second["export"] != "up to date"
    runs = {r["stage"]: r for r in ws.runs()}
    assert set(runs["mix"]["reads"]) >= {"pairs", "interaction_pairs", "queries", "eval_queries", "label_issues"}
    assert runs["shift"]["counts"]["user_images"] == len(mixed[4])
    # The third run: nothing changed, so nothing reruns and the shards are untouched.
    tars = {p: p.stat().st_mtime_ns for p in ws.shards_dir.rglob("*.tar")}
    again = run_pipeline(ws)
    assert again["mix"] == again["shift"] == again["export"] == again["pairs"] == "up to date"
    assert {p: p.stat().st_mtime_ns for p in ws.shards_dir.rglob("*.tar")} == tars


def test_user_pairs_are_their_own_table(mixed) -> None:
    ws, _, _, linked, _ = mixed
    rows = ws.read_table("user_pairs").to_pylist()
    assert len(rows) == N_TRAIN_LINKS and {r["kind"] for r in rows} == {"user_photo"}
    assert {r["anchor_id"]: r["anchor_product_id"] for r in rows} == linked
    assert all(r["split"] == "train" and r["positive_product_id"] == r["anchor_product_id"] for r in rows)
    assert "user_photo" not in set(ws.read_table("pairs").column("kind").to_pylist())


def test_export_writes_user_photos_into_train_shards_only(mixed) -> None:
    ws, _, _, linked, queries = mixed
    profile, quality = resolve_profile(ws.config.preprocess), ws.config.preprocess.jpeg_quality
    train = _shard_samples(ws, "train")
    users = [s for s in train if s["meta"]["source"] == "user"]
    assert len(users) == N_TRAIN_LINKS
    # One photo can be listed by several products (the demo has such): a sample is a (product, image).
    catalog = {(s["meta"]["product_id"], s["meta"]["image_id"]): s for s in train if s["meta"]["source"] != "user"}
    for s in users:
        uid = s["meta"]["image_id"]
        assert s["meta"]["product_id"] == linked[uid] and s["meta"]["split"] == "train"
        # The bytes: the stored cleaned photo, preprocessed exactly as the catalog photos are.
        assert s["jpg"] == encode_jpeg(preprocess_uint8(ws.store.get(uid, "jpg"), profile), quality=quality)
        assert s["image"].shape == (profile.size, profile.size, 3)
        (pos,) = [p for p in s["positives"] if p["kind"] == "user_photo"]
        assert pos["weight"] == 1.0
        positive = catalog[(linked[uid], pos["image_id"])]
        assert positive["meta"]["source"] == "catalog"
        assert {"image_id": uid, "kind": "user_photo", "weight": 1.0} in positive["positives"]
        assert any(p["kind"] == "image_title" and p["text"] == s["meta"]["title"] for p in s["positives"])
    # A catalog sample lists exactly the user photos paired with its own product (not those of another product
    # that lists the same photo).
    for (pid, _), s in catalog.items():
        got = {p["image_id"] for p in s["positives"] if p["kind"] == "user_photo"}
        assert got <= {u for u, q in linked.items() if q == pid}
    assert sum(p["kind"] == "user_photo" for s in catalog.values() for p in s["positives"]) == N_TRAIN_LINKS
    # Eval shards: no user photo at all, and the photos linked to eval products or held out appear nowhere.
    assert not [s for s in _shard_samples(ws, "eval") if s["meta"]["source"] == "user"]
    unlinked = {q["image_id"] for q in queries} - set(linked)
    exported = {s["meta"]["image_id"] for split in ("train", "eval") for s in _shard_samples(ws, split)}
    assert not unlinked & exported


def test_batch_plan_puts_user_photos_in_their_product_class(mixed) -> None:
    """The sampler plans the exported user photos as images of their product (train only), so a P x K batch can
    hold a user photo and its product's catalog photos in one class."""
    from visprep.sampling.stage import sample_stage

    ws, _, _, linked, _ = mixed
    counts = sample_stage(ws)  # the fixture's pipeline leaves the sampler out
    assert counts["user_photos"] == len(linked)
    plan = ws.read_table("batch_plan").to_pylist()
    users = {r["image_id"]: r for r in plan if r["image_id"] in linked}
    assert set(users) == set(linked)
    for uid, r in users.items():
        assert r["product_id"] == linked[uid] and r["split"] == "train"
    # In the first epoch each user photo shares its batch slot row (class) with its product's catalog photos.
    first = [r for r in plan if r["epoch"] == 0]
    for uid, pid in linked.items():
        (cls,) = {(r["batch"], r["class_index"]) for r in first if r["image_id"] == uid and not r["repeat"]} or {None}
        assert cls is not None
        same = [r for r in first if (r["batch"], r["class_index"]) == cls]
        assert {r["product_id"] for r in same} == {pid}


def test_export_rechecks_user_pairs(mixed) -> None:
    ws, _, _, _, queries = mixed
    good = ws.read_table("user_pairs")
    split_of = {r["product_id"]: r["split"] for r in ws.read_table("splits").to_pylist()}
    evals = sorted(p for p, s in split_of.items() if s == "eval")
    row = good.slice(0, 1).to_pylist()[0]
    held = queries[N_TRAIN_LINKS + 2]["image_id"]  # an evaluation query's photo (its upload sha is the query id)
    bad = [{**row, "anchor_id": held},  # an eval query in a train pair
           {**row, "anchor_product_id": evals[0], "positive_product_id": evals[0], "split": "eval"},  # eval split
           {**row, "split": "val"}]  # not the product's split (a stale row)
    try:
        ws.write_table("user_pairs", pa.concat_tables([good, pa.Table.from_pylist(bad, schema=PAIRS)]))
        kept = export_user_pairs(ws, split_of)
        assert kept.num_rows == good.num_rows and kept.to_pylist() == good.to_pylist()
    finally:
        ws.write_table("user_pairs", good)


def test_label_policy_and_legacy_rows(mixed) -> None:
    ws, _, _, linked, _ = mixed
    flagged = sorted(set(linked.values()))[:3]
    ws.write_table("label_issues", pa.table({"product_id": flagged}))
    ws.config_path.write_text(_config(0.5, 'policy = "exclude"\n'))
    ws = Workspace(ws.root)
    out = mix_user_photos(ws)  # policy exclude: flagged products get no user-photo pair either
    assert out["policy_touched"] == 3 and out["added"] == N_TRAIN_LINKS - 3
    assert not set(ws.read_table("user_pairs").column("anchor_product_id").to_pylist()) & set(flagged)
    ws.table_path("label_issues").unlink()
    # `visprep quality` writes the flags; the mix (in `visprep run`, stale through its label_issues input) rebuilds
    # the user pairs under them.
    ws.config_path.write_text(_config(0.5, 'min_class_size = 2\nfolds = 2\npolicy = "exclude"\n'))
    ws = Workspace(ws.root)
    res = quality_stage(ws)
    flagged = set(ws.read_table("label_issues").column("product_id").to_pylist())
    from visprep.pipeline import is_up_to_date

    assert not is_up_to_date(ws, "mix")
    mix_stage(ws)
    users = ws.read_table("user_pairs").column("anchor_product_id").to_pylist()
    assert not set(users) & flagged and len(users) == N_TRAIN_LINKS - len(flagged & set(linked.values()))
    print(f"quality flagged {res.flagged} products, {len(flagged & set(linked.values()))} of them linked")
    ws.table_path("label_issues").unlink()
    ws.config_path.write_text(_config(0.5))
    ws = Workspace(ws.root)
    result = CliRunner().invoke(app, ["pairs", "-w", str(ws.root), "--with-deps"])  # pairs afresh
    assert result.exit_code == 0, result.output
    # A workspace from before user_pairs existed: user_photo rows inside pairs. The pairs stage is their table's
    # one writer: the changed table makes it stale, and its rerun writes the pairs without them.
    pairs = ws.read_table("pairs")
    legacy = pa.Table.from_pylist([{"anchor_id": "x", "positive_id": "y", "kind": "user_photo", "weight": 1.0,
                                    "anchor_product_id": "p", "positive_product_id": "p", "split": "train"}],
                                  schema=PAIRS)
    ws.write_table("pairs", pa.concat_tables([pairs, legacy]))
    assert not is_up_to_date(ws, "pairs")
    report = run_pipeline(ws)
    assert report["pairs"] != "up to date" and report["mix"]["added"] == N_TRAIN_LINKS
    assert ws.read_table("pairs").num_rows == pairs.num_rows
    assert run_pipeline(ws)["pairs"] == "up to date"


def test_fraction_zero_exports_no_user_photo(mixed) -> None:
    ws, _, _, _, _ = mixed
    ws.config_path.write_text(_config(0.0))
    ws = Workspace(ws.root)
    report = run_pipeline(ws)
    assert report["mix"]["added"] == 0 and ws.read_table("user_pairs").num_rows == 0
    assert report["export"] != "up to date"
    train = _shard_samples(ws, "train")
    assert train and not [s for s in train if s["meta"]["source"] == "user"]
    assert not [p for s in train for p in s["positives"] if p["kind"] == "user_photo"]
    out = CliRunner().invoke(app, ["mix", "-w", str(ws.root)])  # the run left it up to date: no work
    assert out.exit_code == 0 and "mix: up to date" in out.output, out.output
    out = CliRunner().invoke(app, ["mix", "-w", str(ws.root), "--force"])
    assert out.exit_code == 0 and "user-photo pairs: 0 in tables/user_pairs" in out.output, out.output
    status = CliRunner().invoke(app, ["status", "-w", str(ws.root), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["quality"]["shift"]["mix"]["added"] == 0


def test_each_stage_is_stale_only_for_the_config_it_reads(mixed) -> None:
    """popularity, shift and mix record only the sections they read: a change to one stage's section reruns that
    stage alone (they all shared [quality] before, so changing shift.auc reran popularity and the mix for nothing)."""
    ws = Workspace(mixed[0].root)
    ws.config_path.write_text(_config(0.5))
    ws = Workspace(ws.root)
    stages = {"popularity": popularity_stage, "shift": shift_stage, "mix": mix_stage}
    for run in stages.values():
        run(ws)

    def stale_after(section: str, **update: object) -> set[str]:
        ws.set_config(ws.config.model_copy(update={section: getattr(ws.config, section).model_copy(update=update)}))
        stale = {name for name in stages if not is_up_to_date(ws, name)}
        for name in stale:
            stages[name](ws)
        return stale

    assert stale_after("embed") == set()  # all three up to date after one run
    assert stale_after("shift", auc=0.9) == {"shift"}
    assert stale_after("popularity", temperature=4.0) == {"popularity"}
    assert stale_after("mix", fraction=0.3) == {"mix"}
    assert stale_after("shift", seed=5) == {"shift"}
    # The mix reads the label-issue policy ([quality]) and the image floors ([pairs]); shift and popularity do not.
    assert stale_after("quality", down_weight=0.5) == {"mix"}
    assert stale_after("pairs", min_side=32) == {"mix"}
    assert ws.last_run("shift")["params"].keys() == {"shift", "embed"}
    assert ws.last_run("popularity")["params"].keys() == {"popularity"}
    assert ws.last_run("mix")["params"].keys() == {"mix", "quality", "labels", "pairs"}
