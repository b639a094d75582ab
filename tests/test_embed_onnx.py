"""The ONNX Runtime backend of the bundled EfficientNet-Lite0: same vectors as torch on real images,
exported once per (model, size) and cached, the staged embed stage (decode overlapped with the model), the thread
plan recorded in the run record."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from visprep.demo import data_dir, load_fashion_mnist_subset
from visprep.embed.efficientnet import EfficientNetLite0Embedder
from visprep.embed.onnx_runtime import cache_dir, export_key
from visprep.embed.registry import get_embedder
from visprep.embed.stage import embed_stage
from visprep.embed.store import FeatureStore
from visprep.engines.threads import apply_threads, plan_threads
from visprep.images.preprocess import encode_jpeg
from visprep.schema import IMAGES
from visprep.views.features import features_root
from visprep.workspace import Workspace


@pytest.fixture(scope="module")
def real_images() -> list[bytes]:
    """Real photos: bundled Fashion-MNIST garments (as 256-px JPEGs) and the bundled OpenCV sample photos."""
    fm = load_fashion_mnist_subset()
    out = [encode_jpeg(cv2.resize(np.stack([g] * 3, -1), (256, 256), interpolation=cv2.INTER_LINEAR))
           for g in fm.images[:24]]
    return out + [(data_dir() / n).read_bytes() for n in ("box.png", "box_in_scene.png", "Blender_Suzanne1.jpg",
                                                          "Blender_Suzanne2.jpg")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[EfficientNetLite0Embedder, EfficientNetLite0Embedder]:
    os.environ["VISPREP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield EfficientNetLite0Embedder(backend="onnxruntime", threads=2), EfficientNetLite0Embedder(backend="torch",
                                                                                                  threads=2)
    finally:
        os.environ.pop("VISPREP_CACHE", None)


def test_onnxruntime_and_torch_agree_on_real_images(pair, real_images: list[bytes]) -> None:
    ort, torch = pair
    assert ort.model_id == torch.model_id  # same meaning: one feature store serves both
    a, b = ort.embed(real_images), torch.embed(real_images)
    assert a.shape == b.shape == (len(real_images), 1280)
    assert float((a * b).sum(axis=1).min()) >= 0.9999
    # Other input sizes (the demo's 64-px profile) and the in-memory path too.
    garments = load_fashion_mnist_subset().images[:16]
    for size in (64, 96):
        pa_, pb = ort.embed_pixels(garments, size=size), torch.embed_pixels(garments, size=size)
        assert float((pa_ * pb).sum(axis=1).min()) >= 0.9999


def test_export_is_cached_per_model_and_size(pair) -> None:
    ort, _ = pair
    files = sorted(cache_dir().glob("*.onnx"))
    assert {f.stem for f in files} >= {export_key(ort.model_id, 224), export_key(ort.model_id, 64)}
    before = {f: f.stat().st_mtime_ns for f in files}
    again = EfficientNetLite0Embedder(backend="onnxruntime", threads=1)
    again.embed([encode_jpeg(np.full((64, 64, 3), 128, np.uint8))])
    assert {f: f.stat().st_mtime_ns for f in sorted(cache_dir().glob("*.onnx"))} == before  # reused, not re-exported
    assert again._torch_model is None  # a cached export needs no torch model at all
    assert not list(cache_dir().glob(".*.tmp"))
    assert export_key(ort.model_id, 224) != export_key(ort.model_id + "x", 224) != export_key(ort.model_id, 64)


def test_bad_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; valid: onnxruntime, torch"):
        EfficientNetLite0Embedder(backend="tensorrt")


def _workspace(root: Path, blobs: list[bytes], config: str) -> tuple[Workspace, list[str]]:
    ws = Workspace(root)
    ws.root.mkdir(parents=True)
    ws.config_path.write_text(config)
    ids = [ws.store.put(b, "jpg") for b in blobs]
    ws.write_table("images", pa.Table.from_pylist([{"image_id": i, "status": "ok", "format": "jpeg"} for i in ids],
                                                  schema=IMAGES))
    return ws, ids


def test_stage_vectors_match_per_image_embedding_and_record_the_plan(tmp_path: Path, pair,
                                                                      real_images: list[bytes]) -> None:
    """The read-ahead pipeline keeps ids and vectors together across batches, checkpoints and a bad image."""
    ort, torch = pair
    blobs = [b for b in real_images if b[:2] == b"\xff\xd8"][:20]
    bad = b"\xff\xd8\xff\xe0" + b"\x00" * 64  # a JPEG signature, nothing decodable
    ws, ids = _workspace(tmp_path / "ws", [*blobs[:7], bad, *blobs[7:]],
                         "[embed]\nbatch_size = 4\ncheckpoint_every = 6\nthreads = 1\n")
    os.environ["VISPREP_CACHE"] = str(cache_dir().parent)
    try:
        r = embed_stage(ws)
    finally:
        os.environ.pop("VISPREP_CACHE", None)
    assert (r.embedded, r.failed, r.by_reason) == (len(blobs), 1, {"embed_decode": 1})
    store = FeatureStore.open_existing(features_root(ws), ort.model_id)
    got, found = store.get([i for i in ids if i != ws.store.put(bad, "jpg")])
    assert found.all() and len(store) == len(blobs)
    want = torch.embed(blobs)
    assert float((got * want).sum(axis=1).min()) >= 0.9999
    run = ws.last_run("embed")
    assert run["metrics"]["backend"] == "onnxruntime"
    assert run["metrics"]["threads"]["model"] == 1 and run["metrics"]["threads"]["opencv"] == 1
    q = [row for row in ws.read_table("quarantine").to_pylist() if row["stage"] == "embed"]
    assert len(q) == 1 and q[0]["reason"] == "embed_decode"


def test_thread_plan_splits_cores_and_is_applied() -> None:
    import torch

    plan = plan_threads(workers=1)
    assert plan.model == plan.cores >= 1 and plan.decode == 1 and plan.opencv == 1
    assert plan_threads(workers=plan.cores * 2).model == 1
    assert plan_threads(model_threads=3).model == 3
    with pytest.raises(ValueError, match="workers >= 1"):
        plan_threads(workers=0)
    before = torch.get_num_threads()
    try:
        apply_threads(plan_threads(model_threads=1))
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before)


def test_registry_passes_backend_only_to_embedders_that_take_it() -> None:
    from visprep.embed.registry import accepts_option

    assert accepts_option("efficientnet-lite0", "backend")
    assert not accepts_option("open_clip", "backend") and not accepts_option("no-such-model", "backend")
    e = get_embedder("efficientnet-lite0", backend="torch", threads=1)
    assert e.backend == "torch"
