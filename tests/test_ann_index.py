"""One ANN index per (model, pool): built once and reused, rebuilt when the pool, the store or the parameters
change or the saved file is damaged, and searching like a freshly built index (a numpy brute-force oracle)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visprep.embed.registry import l2_normalize
from visprep.embed.store import FeatureStore
from visprep.mining.ann import build_pool_index
from visprep.views import ann_index
from visprep.views.ann_index import INDEX_DIR, STATS, index_source

OPTIONS = {"ivf_nlist": 8, "ivf_nprobe": 8, "hnsw_m": 16, "hnsw_ef_search": 64, "seed": 0}


@pytest.fixture(autouse=True)
def _fresh_process() -> None:
    """Each test starts as a new process would: nothing in memory, counts at zero."""
    ann_index._MEMORY.clear()
    for k in STATS:
        STATS[k] = 0


def _store(tmp_path, n: int = 400, dim: int = 16, seed: int = 0) -> tuple[FeatureStore, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"img{i:04d}" for i in range(n)]
    vecs = l2_normalize(rng.normal(size=(n, dim))).astype(np.float32)
    store = FeatureStore(tmp_path / "features", "m@1", dim)
    store.append(ids, vecs)
    return store, ids, vecs


def _pool(store: FeatureStore, ids: list[str]) -> np.ndarray:
    vecs, found = store.get(ids)
    assert found.all()
    return vecs


def _get(store, ids, search="exact", **kw):
    return index_source(store, ids, _pool(store, ids), search=search, options={**OPTIONS, **kw}, auto_k=10)()


def test_the_second_user_of_a_pool_does_not_rebuild(tmp_path) -> None:
    store, ids, _ = _store(tmp_path)
    pool = ids[::2]
    first, _ = _get(store, pool)
    again, _ = _get(store, pool)
    assert STATS == {"builds": 1, "loads": 0, "memory_hits": 1} and again is first
    ann_index._MEMORY.clear()  # another process: the saved file serves it
    _get(store, pool)
    assert STATS["builds"] == 1 and STATS["loads"] == 1
    assert len(list((store.path / INDEX_DIR).glob("*.faiss"))) == 1


def test_lazy_until_called(tmp_path) -> None:
    store, ids, _ = _store(tmp_path)
    index_source(store, ids, _pool(store, ids), search="exact", options=OPTIONS, auto_k=10)
    assert STATS["builds"] == 0 and not (store.path / INDEX_DIR).exists()


@pytest.mark.parametrize("change", ["pool", "order", "search", "option"])
def test_another_pool_or_setting_builds_its_own(tmp_path, change) -> None:
    store, ids, _ = _store(tmp_path)
    _get(store, ids[:200])
    other = {"pool": (ids[:201], {}), "order": (ids[:200][::-1], {}), "search": (ids[:200], {"search": "hnsw"}),
             "option": (ids[:200], {"seed": 1})}
    pool, kw = other[change]
    _get(store, pool, **kw)
    assert STATS["builds"] == 2


def test_a_changed_store_rebuilds_and_drops_the_stale_file(tmp_path) -> None:
    store, ids, vecs = _store(tmp_path)
    _get(store, ids[:100])
    old = set((store.path / INDEX_DIR).glob("*.faiss"))
    # A new part that replaces the first image's vector: same ids, other vectors.
    store.append([ids[0]], l2_normalize(np.ones((1, vecs.shape[1]))).astype(np.float32))
    index, _ = _get(store, ids[:100])
    assert STATS["builds"] == 2
    assert not old & set((store.path / INDEX_DIR).glob("*.faiss"))
    _, got = index.search(_pool(store, ids[:1]), 1)
    assert got[0, 0] == 0  # the new vector is indexed (it is its own nearest)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "sidecar", "checksum"])
def test_a_damaged_file_is_rebuilt_not_trusted(tmp_path, damage) -> None:
    store, ids, _ = _store(tmp_path)
    _get(store, ids)
    folder = store.path / INDEX_DIR
    data, side = next(folder.glob("*.faiss")), next(folder.glob("*.json"))
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "garbage":
        raw = bytearray(data.read_bytes())
        raw[-64:] = b"\xff" * 64
        data.write_bytes(bytes(raw))
    elif damage == "sidecar":
        side.write_text("{not json")
    else:
        meta = json.loads(side.read_text())
        meta["key"]["size"] = 3
        side.write_text(json.dumps(meta))
    ann_index._MEMORY.clear()
    index, _ = _get(store, ids)
    assert STATS["builds"] == 2 and STATS["loads"] == 0
    assert index.ntotal == len(ids)
    ann_index._MEMORY.clear()
    _get(store, ids)
    assert STATS["loads"] == 1  # the rebuilt file is whole again


def test_exact_index_matches_a_brute_force_oracle(tmp_path) -> None:
    store, ids, _ = _store(tmp_path, n=300)
    pool = ids[50:250]
    vecs = _pool(store, pool)
    _get(store, pool)
    ann_index._MEMORY.clear()
    index, info = _get(store, pool)  # read back from disk
    assert STATS["loads"] == 1 and info == {"search": "exact"}
    sims, got = index.search(vecs, 10)
    oracle = np.argsort(-(vecs @ vecs.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got, oracle)
    np.testing.assert_allclose(sims, np.take_along_axis(vecs @ vecs.T, oracle, axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("search", ["ivf", "hnsw", "auto"])
def test_a_saved_index_searches_like_a_freshly_built_one(tmp_path, search) -> None:
    store, ids, _ = _store(tmp_path, n=600)
    vecs = _pool(store, ids)
    _get(store, ids, search=search)
    ann_index._MEMORY.clear()
    loaded, info = _get(store, ids, search=search)
    fresh, fresh_info = build_pool_index(vecs, search, options=OPTIONS, auto_k=10)
    assert STATS["loads"] == 1 and info == json.loads(json.dumps(fresh_info))
    s1, i1 = loaded.search(vecs, 10)
    s2, i2 = fresh.search(vecs, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_ids_and_vectors_must_agree(tmp_path) -> None:
    store, ids, vecs = _store(tmp_path)
    with pytest.raises(ValueError, match="m@1: 3 ids but 400 vectors"):
        index_source(store, ids[:3], vecs, search="exact", options=OPTIONS, auto_k=10)


def test_mining_twice_then_the_experiment_build_one_index(tmp_path) -> None:
    """The mine stage (incremental off: every anchor re-mined) twice, then the experiment's in-process ANN mining
    of the same pool, guard on and off: one build; the rows equal those of an index built on the spot."""
    from test_mining_stage import _workspace

    from visprep.experiment.stage import mine_ann
    from visprep.mining.stage import mine_stage
    from visprep.training.batches import FeaturePayload
    from visprep.views.features import features_root
    from visprep.views.items import load_items

    ws = _workspace(tmp_path)
    ws.config_path.write_text(ws.config_path.read_text().replace("[mining]\n", "[mining]\nincremental = false\n"))
    ws = type(ws)(tmp_path)
    mine_stage(ws)
    mine_stage(ws)
    assert STATS["builds"] == 1
    items = load_items(ws)
    store = FeatureStore.open_existing(features_root(ws), "test@1")
    payload = FeaturePayload.from_store(ws, "test@1", items.image_id.tolist())
    for guard in (True, False):
        shared = mine_ann(ws, items, "train", payload, guard=guard, store=store)
        own = mine_ann(ws, items, "train", payload, guard=guard)
        assert shared.equals(own) and shared.num_rows > 0
    assert STATS["builds"] == 1
    mined = ws.read_table("negatives")
    ann = mined.filter(np.array(mined.column("kind").to_pylist()) == "ann")
    key = [("anchor_id", "ascending"), ("negative_id", "ascending")]
    assert ann.sort_by(key).equals(mine_ann(ws, items, "train", payload, guard=True, store=store).sort_by(key))
