"""Model-holding steps at the model's speed: the MiniLM title embedder on ONNX Runtime gives
torch's vectors; every ONNX Runtime session of the query cleaner (NudeNet, yolo, super-resolution) takes its intra-op
threads from the thread plan and never spins; the queries stage records the plan it applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("nudenet")

from visprep.config import QueriesConfig
from visprep.demo import data_dir, load_fashion_mnist_subset
from visprep.demo.sources import _plan
from visprep.embed.minilm import MiniLMTextEmbedder
from visprep.embed.onnx_runtime import cache_dir
from visprep.engines.ort_sessions import model_threads
from visprep.engines.threads import plan_threads
from visprep.queries import QueryCleaner, make_detector
from visprep.queries.nsfw import NUDENET_LABELS, NudeNetClassifier, nudenet_model_path
from visprep.queries.stage import queries_stage
from visprep.queries.superres import OnnxUpscaler, TorchScriptUpscaler
from visprep.workspace import Workspace


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ONNX Runtime session built while the test runs (a spy on `InferenceSession`)."""
    built: list[Any] = []

    class Spy(ort.InferenceSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(ort, "InferenceSession", Spy)
    return built


def _settings(session: Any) -> tuple[int, int, str]:
    """(intra-op threads, inter-op threads, allow_spinning) as the session itself reports them."""
    o = session.get_session_options()
    try:
        spin = o.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # noqa: BLE001 - onnxruntime raises a bare RuntimeError/Fail when the entry is unset
        spin = "unset (spins)"
    return o.intra_op_num_threads, o.inter_op_num_threads, spin


def _by_model(sessions: list[Any]) -> dict[str, tuple[int, int, str]]:
    return {Path(s._model_path).name: _settings(s) for s in sessions}


@pytest.fixture(scope="module")
def sr_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny 2x super-resolution network (conv + pixel shuffle), as ONNX and TorchScript files."""
    root = tmp_path_factory.mktemp("sr")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2),
                              torch.nn.Sigmoid()).eval()
    example = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(root / "sr2.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h2", 3: "w2"}}, opset_version=17,
                          dynamo=False)
        torch.jit.trace(net, example).save(str(root / "sr2.pt"))
    return {"onnx": root / "sr2.onnx", "torchscript": root / "sr2.pt"}


def test_model_threads_resolves_zero_to_the_plan_and_refuses_nonsense() -> None:
    assert model_threads(0) == plan_threads().model == plan_threads().cores
    assert model_threads(3) == 3
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"model threads must be an int >= 0.*got"):
            model_threads(bad)  # type: ignore[arg-type]


def test_nudenet_session_takes_the_plan_threads_and_does_not_spin(sessions: list[Any]) -> None:
    NudeNetClassifier()
    NudeNetClassifier(threads=1)
    NudeNetClassifier(threads=3)
    assert [_settings(s) for s in sessions] == [(plan_threads().model, 1, "0"), (1, 1, "0"), (3, 1, "0")]


def test_yolo_detector_and_onnx_upscaler_sessions_take_threads(sessions: list[Any],
                                                               sr_models: dict[str, Path]) -> None:
    detector = make_detector("yolo", weights=str(nudenet_model_path()), labels=NUDENET_LABELS, size=320,
                             channel_order="bgr", threads=1)
    up = OnnxUpscaler(weights=sr_models["onnx"], scale=2)
    assert _by_model(sessions) == {"320n.onnx": (1, 1, "0"), "sr2.onnx": (plan_threads().model, 1, "0")}
    assert detector.model.threads == 1 and up.threads == plan_threads().model
    # The sessions still work: the network doubles a 20 x 30 image (then resized to the exact target).
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert up.upscale(rgb, 60, 40).shape == (40, 60, 3)
    assert isinstance(detector.detect(rgb), list)


def test_torchscript_models_set_torch_threads(sr_models: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        TorchScriptUpscaler(weights=sr_models["torchscript"], scale=2, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cleaner_from_config_hands_threads_to_every_model_unless_options_name_their_own(
        sessions: list[Any], sr_models: dict[str, Path]) -> None:
    cfg = QueriesConfig(detector="yolo", detector_options={"weights": str(nudenet_model_path()),
                                                           "labels": list(NUDENET_LABELS), "size": 320},
                        upscaler="onnx", sr_weights=str(sr_models["onnx"]), sr_scale=2)
    QueryCleaner.from_config(cfg, threads=1)
    assert sorted(_settings(s) for s in sessions) == [(1, 1, "0")] * 3  # detector, NSFW, upscaler
    sessions.clear()
    cfg.detector_options["threads"] = 3
    cleaner = QueryCleaner.from_config(cfg, threads=1)
    assert sorted(_settings(s) for s in sessions) == [(1, 1, "0"), (1, 1, "0"), (3, 1, "0")]
    assert "threads" not in str(cleaner.describe())  # machine-dependent: in the run's metrics, not its params
    # A plug-in without a threads option (the saliency default) is not handed one.
    assert QueryCleaner.from_config(QueriesConfig(nsfw="none"), threads=2).detector.name == "saliency"


def test_queries_stage_applies_and_records_the_thread_plan(tmp_path: Path, sessions: list[Any]) -> None:
    photo = tmp_path / "box.png"
    photo.write_bytes((data_dir() / "box.png").read_bytes())
    ws = Workspace(tmp_path / "ws")
    cv_before, torch_before = cv2.getNumThreads(), torch.get_num_threads()
    try:
        cv2.setNumThreads(max(2, cv_before))
        res = queries_stage(ws, [str(photo)])
        assert cv2.getNumThreads() == 1  # the plan's OpenCV threads were applied
    finally:
        cv2.setNumThreads(cv_before)
        torch.set_num_threads(torch_before)
    assert res.inputs == 1
    plan = plan_threads()
    assert ws.last_run("queries")["metrics"]["threads"] == plan.as_dict()
    assert _by_model(sessions) == {"320n.onnx": (plan.model, 1, "0")}  # the default NudeNet, from the plan


@pytest.fixture(scope="module")
def titles() -> list[str]:
    """500 demo product titles (brand, colour, material, style, noun), plus edge cases: empty, one character,
    and one far over max_length (truncated)."""
    products = _plan(load_fashion_mnist_subset(), 500, np.random.default_rng(0))
    out = [p.row["title"] for p in products]
    return out + ["", "x", " ".join(out[:60])]


@pytest.fixture(scope="module")
def minilm_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISPREP_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield MiniLMTextEmbedder(threads=1), MiniLMTextEmbedder(backend="torch", threads=1)


def test_minilm_onnxruntime_gives_torch_vectors_on_demo_titles(minilm_pair: Any, titles: list[str]) -> None:
    fast, eager = minilm_pair
    assert fast.backend == "onnxruntime" and eager.backend == "torch"
    assert fast.model_id == eager.model_id == "all-minilm-l6-v2@gt-0.1.0"  # one feature store serves both
    # Batches of 32 as the embed stage sends them, plus a batch of 1 and an odd one: both axes are dynamic.
    batches = [titles[:1], titles[1:38]] + [titles[i:i + 32] for i in range(38, len(titles), 32)]
    a = np.concatenate([fast.embed(b) for b in batches])
    b = np.concatenate([eager.embed(b) for b in batches])
    assert a.shape == b.shape == (len(titles), 384)
    assert float((a * b).sum(axis=1).min()) >= 0.9999
    assert _settings(fast._ort()) == (1, 1, "0")


def test_minilm_export_is_cached_and_reused_without_torch(minilm_pair: Any, monkeypatch: pytest.MonkeyPatch,
                                                          titles: list[str]) -> None:
    fast, _ = minilm_pair
    monkeypatch.setenv("VISPREP_CACHE", str(Path(fast._ort()._model_path).parent.parent))
    files = sorted(cache_dir().glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith("all-minilm-l6-v2_gt-0.1.0-")
    before = files[0].stat().st_mtime_ns
    again = MiniLMTextEmbedder(threads=1)
    assert float((again.embed(titles[:8]) * fast.embed(titles[:8])).sum(axis=1).min()) >= 0.9999
    assert again._torch_model is None  # a cached export needs no torch model
    assert sorted(cache_dir().glob("*.onnx")) == files and files[0].stat().st_mtime_ns == before
    assert not list(cache_dir().glob(".*.tmp"))


def test_minilm_refuses_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; valid: onnxruntime, torch"):
        MiniLMTextEmbedder(backend="tensorrt")
