"""Embedders, the feature store and the incremental embed stage."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from visprep.embed.registry import (
    Embedder,
    EmbedderUnavailable,
    get_embedder,
    l2_normalize,
    register_embedder,
    unregister_embedder,
)
from visprep.embed.stage import embed_stage
from visprep.embed.store import FeatureStore
from visprep.images.decode import ImageDecodeError
from visprep.images.preprocess import encode_jpeg
from visprep.schema import IMAGES
from visprep.views.features import features_root
from visprep.workspace import Workspace


class HashEmbedder(Embedder):
    """A tiny deterministic test embedder: 8-d vector from the bytes' hash; bytes starting b'BAD' fail to decode."""

    dim = 8
    modality = "image"

    def __init__(self, version: str = "v1") -> None:
        self.model_id = f"hash8@{version}"
        self.calls = 0

    def _embed(self, inputs):
        self.calls += 1
        out = []
        for data in inputs:
            if data.startswith(b"BAD"):
                raise ImageDecodeError("corrupt", "test bytes")
            out.append(np.frombuffer(hashlib.sha256(data).digest()[:8], np.uint8).astype(np.float32) - 127.5)
        return np.stack(out)


@pytest.fixture
def hash_embedder():
    register_embedder("hash8", HashEmbedder, replace=True)
    yield
    unregister_embedder("hash8")


def _add_images(ws: Workspace, blobs: list[bytes]) -> list[str]:
    old = ws.read_table("images")
    ids = [ws.store.put(b, "jpg") for b in blobs]
    new = pa.Table.from_pylist([{"image_id": i, "status": "ok", "format": "jpeg"} for i in ids], schema=IMAGES)
    ws.write_table("images", pa.concat_tables([old, new]))
    return ids


def test_unknown_embedder_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="efficientnet-lite0.*minilm-l6-v2"):
        get_embedder("no-such-model")


def test_plugins_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match="needs local weights"):
        get_embedder("timm", arch="resnet50")
    with pytest.raises(EmbedderUnavailable, match="not found"):
        get_embedder("open_clip", arch="ViT-B-32", weights=tmp_path / "missing.pt")
    with pytest.raises(EmbedderUnavailable, match="config.json"):
        get_embedder("hf", weights=tmp_path)


def test_base_validates_and_normalises() -> None:
    e = HashEmbedder()
    v = e.embed([b"a", b"b"])
    assert v.shape == (2, 8) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(TypeError, match="input 1 must be bytes"):
        e.embed([b"a", "text"])
    vecs, ok, errors = e.embed_partial([b"a", b"BAD", b"c"])
    assert ok.tolist() == [True, False, True] and vecs.shape == (2, 8) and errors[0].startswith("1:")
    assert np.all(l2_normalize(np.zeros((1, 3))) == 0)


def test_store_roundtrip_bulk_get_and_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = l2_normalize(rng.normal(size=(10, 8)))
    ids = [f"img{i}" for i in range(10)]
    store = FeatureStore(tmp_path, "m@1", 8)
    store.append(ids[:6], vecs[:6])
    store.append(ids[6:], vecs[6:], update_index=False)
    again = FeatureStore.open_existing(tmp_path, "m@1")
    got, found = again.get(["img7", "nope", "img0"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got[[0, 2]], vecs[[7, 0]])
    assert again.current(["img3", "nope"]).tolist() == [True, False]
    index = again.index()  # catches up with the part written without an index update
    assert index.ntotal == 10
    _, nn = index.search(vecs[[4]], 1)
    assert nn[0, 0] == 4
    table = again.table()
    assert table.column("content_hash").to_pylist() == ids and table.column("made_at").null_count == 0
    with pytest.raises(ValueError, match="dim"):
        FeatureStore(tmp_path, "m@1", 16)


def test_store_lookup_newest_row_wins_and_reads_only_wanted_vectors(tmp_path: Path, monkeypatch) -> None:
    """`get` finds an id embedded twice at its newest row (a later part), in the caller's order, without reading
    the whole store's vectors at once (`vectors`), and `vectors_at` checks its positions."""
    rng = np.random.default_rng(1)
    vecs = l2_normalize(rng.normal(size=(7, 8)))
    store = FeatureStore(tmp_path, "m@1", 8)
    store.append(["a", "b", "c"], vecs[:3])
    store.append(["d", "b"], vecs[3:5], update_index=False)
    store.append(["e", "a"], vecs[5:7], update_index=False)
    again = FeatureStore.open_existing(tmp_path, "m@1")
    monkeypatch.setattr(FeatureStore, "vectors", lambda self, start=0: pytest.fail("read every vector"))
    assert again.positions(["a", "b", "zz", "c", "e"]).tolist() == [6, 4, -1, 2, 5]
    got, found = again.get(["b", "zz", "a", "c", "a"])
    assert found.tolist() == [True, False, True, True, True]
    np.testing.assert_array_equal(got[[0, 2, 3, 4]], vecs[[4, 6, 2, 6]])
    assert not got[1].any()
    assert len(again) == 7
    store.append(["f"], vecs[:1], update_index=False)  # a store object's lookups see its own appends
    assert store.positions(["f", "a"]).tolist() == [7, 6]
    with pytest.raises(ValueError, match="positions"):
        again.vectors_at(np.array([0, 7]))


def test_embed_is_incremental_and_counts_failures(tmp_path: Path, hash_embedder) -> None:
    ws = Workspace(tmp_path)
    ids = _add_images(ws, [f"photo {i}".encode() for i in range(5)] + [b"BAD bytes"])
    r1 = embed_stage(ws, embedder=HashEmbedder())
    assert (r1.embedded, r1.skipped, r1.failed, r1.store_total) == (5, 0, 1, 5)
    assert ws.read_table("quarantine").column("reason").to_pylist() == ["embed_decode"]
    # No-op except the failed one, which is retried (and fails again): no model call for the others.
    e2 = HashEmbedder()
    r2 = embed_stage(ws, embedder=e2)
    assert (r2.embedded, r2.skipped, r2.failed) == (0, 5, 1)
    # New images: only they are embedded and appended to the index.
    new = _add_images(ws, [b"photo new 1", b"photo new 2"])
    r3 = embed_stage(ws, embedder=HashEmbedder())
    assert (r3.embedded, r3.skipped, r3.store_total) == (2, 5, 7)
    store = FeatureStore.open_existing(features_root(ws), "hash8@v1")
    assert store.index().ntotal == 7
    assert set(store.ids()) == set(ids[:5]) | set(new)
    vec, found = store.get(new)
    assert found.all()
    np.testing.assert_allclose(vec, HashEmbedder().embed([b"photo new 1", b"photo new 2"]), rtol=1e-6)
    # A changed model id starts a new store.
    r4 = embed_stage(ws, embedder=HashEmbedder("v2"))
    assert r4.embedded == 7 and (features_root(ws) / "hash8@v2").is_dir()
    assert ws.last_run("embed")["counts"]["embedded"] == 7


def test_noop_run_loads_no_model(tmp_path: Path, hash_embedder) -> None:
    ws = Workspace(tmp_path)
    ws.config_path.write_text('[embed]\nmodel = "hash8"\n')
    _add_images(ws, [f"p{i}".encode() for i in range(50)])
    assert embed_stage(ws).embedded == 50
    unregister_embedder("hash8")  # a no-op run must not build the embedder at all ...

    class IdOnly:  # ... only resolve its model id
        @staticmethod
        def model_id_for(**_):
            return "hash8@v1"

        def __call__(self, **_):
            raise AssertionError("model built on a no-op run")

    register_embedder("hash8", IdOnly(), replace=True)
    t0 = time.perf_counter()
    r = embed_stage(ws)
    assert (r.embedded, r.skipped) == (0, 50)
    assert time.perf_counter() - t0 < 5


def test_efficientnet_lite0_real_weights() -> None:
    e = get_embedder("efficientnet-lite0")
    assert e.model_id.startswith("efficientnet-lite0@imagenet-") and e.dim == 1280
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    other = np.zeros((64, 64, 3), np.uint8)
    other[:, :32] = 255
    jpgs = [encode_jpeg(base), encode_jpeg(np.clip(base.astype(int) + 8, 0, 255).astype(np.uint8)),
            encode_jpeg(other)]
    v = e.embed(jpgs)
    assert v.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # a slightly brighter copy is nearer than a different picture
