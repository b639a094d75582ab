"""Training batches and `visprep experiment` on a small workspace built from the bundled real demo data."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from visprep.demo.sources import write_demo_sources
from visprep.export.loader import iter_tar_samples
from visprep.export.manifest import read_manifest
from visprep.export.shards import encode_sample  # noqa: F401 - the writer the index describes
from visprep.images.preprocess import normalize
from visprep.pipeline import run_pipeline
from visprep.schema import INTERACTION_PAIRS
from visprep.training import TrainingBatches, TrainingSource
from visprep.views.catalog import all_splits
from visprep.workspace import Workspace

torch = pytest.importorskip("torch")

CONFIG = ("[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 32\n"
          '[embed]\noptions = { profile = "imagenet-64" }\n[preprocess]\nsize = 64\n'
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n'
          "[sampling]\np = 6\nk = 3\nepochs = 2\n[augment]\nimage_size = 48\n")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("training")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    src = write_demo_sources(root / "src", n_products=120, seed=5)
    run_pipeline(ws, src.catalog_files)
    return ws


def _all_batches(source: TrainingSource, epoch: int = 0, **kw) -> list[dict]:
    return list(source.iter_batches(epoch, **kw))


def test_batches_follow_the_plan_with_the_shard_images(ws: Workspace) -> None:
    src = TrainingSource.from_workspace(ws, negatives_per_anchor=2)
    plan = ws.read_table("batch_plan")
    plan = plan.filter(pc.and_(pc.equal(plan["split"], "train"), pc.equal(plan["epoch"], 0))).to_pylist()
    batches = _all_batches(src)
    n = 6 * 3
    assert len(batches) * n == len(plan) and src.num_batches(0) == len(batches)
    split_dir = ws.shards_dir / "train"
    by_key = {k: m for r in read_manifest(split_dir).shards for k, m in iter_tar_samples(split_dir / r.name)}
    import simplejpeg

    from visprep.export.stage import sample_key

    for b in batches:
        rows = plan[b["batch"] * n : (b["batch"] + 1) * n]
        assert b["image_id"].tolist() == [r["image_id"] for r in rows]
        assert b["product_id"].tolist() == [r["product_id"] for r in rows]
        assert b["labels"].tolist() == [r["class_index"] for r in rows]
        np.testing.assert_array_equal(b["weight"], np.array([r["weight"] for r in rows], np.float32))
        # Same label <=> same product inside a batch.
        same_label = b["labels"][:, None] == b["labels"][None, :]
        assert (same_label == (b["product_id"][:, None] == b["product_id"][None, :])).all()
        assert b["images"].shape == (n, 64, 64, 3) and b["images"].dtype == np.uint8
        for j in (0, n - 1):  # the pixels are the shard sample of that (product, image), decoded
            members = by_key[sample_key(b["product_id"][j], b["image_id"][j])]
            np.testing.assert_array_equal(b["images"][j], simplejpeg.decode_jpeg(members["jpg"], colorspace="RGB"))
            assert b["source"][j] == json.loads(members["json"])["source"]
        assert set(b["source"]) <= {"catalog", "synthetic", "user"}


def test_negatives_never_share_product_or_group_and_keep_their_kind_and_score(ws: Workspace) -> None:
    src = TrainingSource.from_workspace(ws, negatives_per_anchor=3)
    negs = ws.read_table("negatives").to_pylist()
    known = {(r["anchor_product_id"], r["anchor_id"], r["negative_id"], r["negative_product_id"], r["kind"]): r
             for r in negs}
    groups = dict(zip(*(all_splits(ws)[c].to_pylist() for c in ("product_id", "group_id"))))  # variants too
    drawn = 0
    for b in _all_batches(src):
        nb = b["negatives"]
        assert nb["images"].shape[:2] == nb["mask"].shape == (len(b["image_id"]), 3)
        for i, j in zip(*np.nonzero(nb["mask"])):
            drawn += 1
            p, g = b["product_id"][i], b["group_id"][i]
            assert nb["product_id"][i, j] != p and groups[nb["product_id"][i, j]] != g
            row = known[(p, b["image_id"][i], nb["image_id"][i, j], nb["product_id"][i, j], nb["kind"][i, j])]
            assert row["split"] == "train"
            assert row["rank"] == nb["rank"][i, j]
            if row["score"] is not None:
                assert nb["score"][i, j] == pytest.approx(row["score"])
        assert not nb["images"][~nb["mask"]].any()  # padding stays zero
    assert drawn > 0


def test_a_stale_table_negative_in_the_anchor_group_is_never_returned(ws: Workspace) -> None:
    base = TrainingSource.from_workspace(ws, negatives_per_anchor=2)
    b0 = next(base.iter_batches(0))
    p, i = b0["product_id"][0], b0["image_id"][0]
    twin = b0["image_id"][1]  # another slot of the same product
    bad = pa.table({"anchor_id": [i, i], "negative_id": [twin, b0["image_id"][3]], "kind": ["ann", "ann"],
                    "score": pa.array([0.9, 0.5], pa.float32()), "rank": pa.array([1, 2], pa.int32()),
                    "anchor_product_id": [p, p], "negative_product_id": [p, b0["product_id"][3]],
                    "split": ["train", "train"]})
    src = TrainingSource.from_workspace(ws, negatives=bad, negatives_per_anchor=2)
    nb = next(src.iter_batches(0))["negatives"]
    assert nb["mask"][0].sum() == 1 and nb["product_id"][0, 0] == b0["product_id"][3]


def test_deterministic_resumable_and_split_across_readers(ws: Workspace) -> None:
    src = TrainingSource.from_workspace(ws, negatives_per_anchor=2)
    a, again = _all_batches(src), _all_batches(src)
    for x, y in zip(a, again):
        np.testing.assert_array_equal(x["negatives"]["image_id"], y["negatives"]["image_id"])
    tail = _all_batches(src, start_batch=3)
    assert [t["batch"] for t in tail] == [x["batch"] for x in a[3:]]
    np.testing.assert_array_equal(tail[0]["images"], a[3]["images"])
    np.testing.assert_array_equal(tail[0]["negatives"]["image_id"], a[3]["negatives"]["image_id"])
    parts = [_all_batches(src, reader=r, readers=3) for r in range(3)]
    assert sorted(x["batch"] for part in parts for x in part) == [x["batch"] for x in a]
    # A DataLoader with two workers delivers the batches in plan order.
    loader = torch.utils.data.DataLoader(TrainingBatches(src), batch_size=None, num_workers=2)
    got = list(loader)
    assert [int(x["batch"]) for x in got] == [x["batch"] for x in a]
    assert torch.equal(got[2]["images"], torch.from_numpy(a[2]["images"]))
    ranks = [list(TrainingBatches(src, rank=r, world_size=2)) for r in range(2)]
    assert sorted(int(x["batch"]) for r in ranks for x in r) == [x["batch"] for x in a]


def test_epochs_beyond_the_stored_plan_are_planned_as_the_sample_stage_would(ws: Workspace) -> None:
    src = TrainingSource.from_workspace(ws, negatives_per_anchor=0)
    stored = src.epoch_plan(1)
    src.stored.pop(1)
    assert src.epoch_plan(1).equals(stored)  # replanned with seed + 1: identical rows
    assert not src.epoch_plan(2).equals(stored)


def test_features_payload_and_float_layout(ws: Workspace) -> None:
    from visprep.embed.store import FeatureStore
    from visprep.mining.stage import ann_model_id
    from visprep.views.features import features_root

    feats = TrainingSource.from_workspace(ws, payload="features", negatives_per_anchor=1)
    b = next(feats.iter_batches(0))
    store = FeatureStore.open_existing(features_root(ws), ann_model_id(ws))
    vecs, found = store.get(b["image_id"].tolist())
    assert found.all()
    np.testing.assert_array_equal(b["features"], vecs)
    assert b["negatives"]["features"].shape == (18, 1, vecs.shape[1])
    pix = TrainingSource.from_workspace(ws, negatives_per_anchor=0)
    flt = TrainingSource.from_workspace(ws, negatives_per_anchor=0, layout="float")
    u8, f32 = next(pix.iter_batches(0))["images"], next(flt.iter_batches(0))["images"]
    np.testing.assert_allclose(f32, normalize(u8, pix.profile), rtol=1e-6)


def test_augmentation_is_seeded_per_batch(ws: Workspace) -> None:
    aug = TrainingSource.from_workspace(ws, negatives_per_anchor=1, augment=True)
    a, b = list(islice(aug.iter_batches(0), 2)), list(islice(aug.iter_batches(0), 2))  # two batches, not the epoch
    assert a[0]["images"].shape == (18, 48, 48, 3)
    np.testing.assert_array_equal(a[0]["images"], b[0]["images"])
    assert not np.array_equal(a[0]["images"], a[1]["images"])
    assert a[0]["negatives"]["images"].shape == (18, 1, 48, 48, 3)
    other = aug.with_options(seed=1)
    assert not np.array_equal(next(other.iter_batches(0))["images"], a[0]["images"])
    flt = TrainingSource.from_workspace(ws, negatives_per_anchor=0, augment=True, layout="float")
    assert next(flt.iter_batches(0))["images"].shape == (18, 3, 48, 48)


def test_event_positives_come_from_interaction_pairs_within_the_split(ws: Workspace) -> None:
    src = TrainingSource.from_workspace(ws, negatives_per_anchor=0)
    b0 = next(src.iter_batches(0))
    train = sorted(set(src.items.product_id[src.planned[0]].tolist()))
    splits = dict(zip(*(ws.read_table("splits")[c].to_pylist() for c in ("product_id", "split"))))
    evals = sorted(p for p, s in splits.items() if s == "eval")
    a = b0["product_id"][0]
    partner = next(p for p in train if p != a)
    rows = [
        {"anchor_id": a, "anchor_type": "product", "product_id": partner, "kind": "coview", "count": 3,
         "raw_weight": 3.0, "debiased_weight": 0.5},
        {"anchor_id": a, "anchor_type": "product", "product_id": evals[0], "kind": "click", "count": 9,
         "raw_weight": 9.0, "debiased_weight": 2.0},  # an eval product never enters training
        {"anchor_id": a, "anchor_type": "product", "product_id": train[-1], "kind": "skip_above", "count": 1,
         "raw_weight": 1.0, "debiased_weight": 1.0},  # a negative signal, not a positive
    ]
    table = pa.Table.from_pylist(rows, schema=INTERACTION_PAIRS)
    ev = TrainingSource.from_workspace(ws, negatives_per_anchor=0, event_positives_per_anchor=2,
                                       interactions=table)
    eb = next(ev.iter_batches(0))["event_positives"]
    for j in np.flatnonzero(b0["product_id"] == a):
        assert eb["mask"][j].tolist() == [True, False]
        assert eb["product_id"][j, 0] == partner and eb["kind"][j, 0] == "coview"
        assert eb["raw_weight"][j, 0] == 3.0 and eb["debiased_weight"][j, 0] == 0.5
        assert eb["image_id"][j, 0] in ev.images_of[partner] and eb["images"][j, 0].any()
    assert eb["mask"].sum() == (b0["product_id"] == a).sum() + (b0["product_id"] == partner).sum()


def test_refuses_the_eval_split_and_a_missing_payload(ws: Workspace, tmp_path) -> None:
    with pytest.raises(ValueError, match="evaluation split"):
        TrainingSource.from_workspace(ws, split="eval")
    from visprep.training.batches import FeaturePayload

    empty = FeaturePayload([], np.zeros((0, 4), np.float32), "none")
    with pytest.raises(ValueError, match="not in the features payload.*visprep embed"):
        TrainingSource.from_workspace(ws, payload=empty, negatives_per_anchor=0)


def test_a_stale_plan_is_refused(ws: Workspace) -> None:
    text = ws.config_path.read_text()
    ws.config_path.write_text(text.replace("p = 6\nk = 3", "p = 9\nk = 2"))
    try:
        with pytest.raises(ValueError, match="stale.*visprep run"):
            TrainingSource.from_workspace(Workspace(ws.root))
    finally:
        ws.config_path.write_text(text)
    assert TrainingSource.from_workspace(Workspace(ws.root), negatives_per_anchor=0).num_batches(0) > 0


def test_threaded_reader_gives_the_same_batches(ws: Workspace) -> None:
    src = TrainingSource.from_workspace(ws, negatives_per_anchor=2)
    plain = _all_batches(src)
    threaded = list(src.iter_batches(0, threads=2, prefetch=3))
    assert [b["batch"] for b in threaded] == [b["batch"] for b in plain]
    for x, y in zip(plain, threaded):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["negatives"]["images"], y["negatives"]["images"])
    resumed = list(src.iter_batches(0, start_batch=2, threads=2))
    np.testing.assert_array_equal(resumed[0]["images"], plain[2]["images"])
    loader = torch.utils.data.DataLoader(TrainingBatches(src, threads=2), batch_size=None, num_workers=0)
    assert [int(b["batch"]) for b in loader] == [b["batch"] for b in plain]


def test_a_split_with_fewer_groups_than_p_gets_smaller_whole_batches(tmp_path) -> None:
    small = Workspace(tmp_path / "ws")
    small.root.mkdir()
    small.config_path.write_text(CONFIG.replace("p = 6\nk = 3", "p = 500\nk = 2"))
    src = write_demo_sources(tmp_path / "src", n_products=30, seed=1)
    run_pipeline(small, src.catalog_files)
    run = small.last_run("sample")
    p = run["counts"]["train.p"]
    assert 2 <= p < 500 and any("fewer than sampling.p" in n for n in run["notes"])
    source = TrainingSource.from_workspace(small, negatives_per_anchor=1)
    assert source.batch_size() == p * 2
    for b in source.iter_batches(0):
        assert len(b["image_id"]) == p * 2 and len(set(b["labels"].tolist())) == p
