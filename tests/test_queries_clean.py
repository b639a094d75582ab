"""visprep.queries: cleaning real photos (scikit-image's bundled images) with known rotations, blur and sizes."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from visprep.queries import (
    Detection,
    NsfwClassifier,
    NsfwVerdict,
    QueryCleaner,
    SaliencyDetector,
    calibrate_blur_threshold,
    crop_box,
    iou_matrix,
    make_detector,
    make_nsfw_classifier,
    make_upscaler,
    query_blur_score,
)
from visprep.queries.sharpness import calibrate_blur_from_files
from visprep.queries.superres import ClassicalUpscaler

# The transpose that turns an upright image into what a camera stores under each EXIF orientation.
_STORE_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def _jpeg(rgb: np.ndarray, *, orientation: int = 1, quality: int = 95) -> bytes:
    image = Image.fromarray(rgb)
    if _STORE_AS[orientation] is not None:
        image = image.transpose(_STORE_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


class _Never(NsfwClassifier):
    name = "never"

    def _classify(self, rgb):
        return NsfwVerdict(False, 0.0, [])


class _Always(NsfwClassifier):
    name = "always"

    def _classify(self, rgb):
        return NsfwVerdict(True, 0.99, ["FEMALE_BREAST_EXPOSED"])


def _cleaner(**kw) -> QueryCleaner:
    kw.setdefault("detector", None)
    kw.setdefault("nsfw", _Never())
    kw.setdefault("upscaler", ClassicalUpscaler())
    return QueryCleaner(**kw)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skimage_data.chelsea()  # 300 x 451, not symmetric under any flip


def _scene(obj: np.ndarray, background: np.ndarray, *, at=(350, 150), side=300):
    """Paste a real photo into a real texture; return the scene and the object's true box."""
    img = background.copy()
    oh, ow = obj.shape[:2]
    f = side / max(oh, ow)
    obj = cv2.resize(obj, (round(ow * f), round(oh * f)), interpolation=cv2.INTER_AREA)
    x, y = at
    img[y:y + obj.shape[0], x:x + obj.shape[1]] = obj
    return img, (x, y, x + obj.shape[1], y + obj.shape[0])


def _gray_bg(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(getattr(skimage_data, name)(), (800, 600)), cv2.COLOR_GRAY2RGB)


# --- 1. EXIF orientation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_upright(chelsea, orientation):
    out = _cleaner().clean(_jpeg(chelsea, orientation=orientation))
    assert out.accepted, out.detail
    assert out.image.shape == chelsea.shape
    # JPEG noise only: a wrong orientation would differ by tens of gray levels
    assert np.abs(out.image.astype(int) - chelsea.astype(int)).mean() < 3
    step = out.steps[0]
    assert step["step"] == "orientation" and step["exif_orientation"] == orientation
    assert (step["decision"] == "upright") == (orientation == 1)


# --- 2. main-object crop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("obj_name,bg_name", [("coffee", None), ("chelsea", "gravel"), ("astronaut", "brick"),
                                              ("coffee", "grass"), ("rocket", None)])
def test_saliency_finds_a_real_object_on_a_real_background(obj_name, bg_name):
    obj = {"coffee": skimage_data.coffee()[20:380, 200:560], "chelsea": skimage_data.chelsea()[50:280, 100:320],
           "astronaut": skimage_data.astronaut()[:, 100:420],
           "rocket": skimage_data.rocket()[100:420, 250:480]}[obj_name]
    bg = np.full((600, 800, 3), 235, np.uint8) if bg_name is None else _gray_bg(bg_name)
    scene, truth = _scene(obj, bg)
    dets = SaliencyDetector().detect(scene)
    assert dets and iou_matrix(np.array(dets[0].as_list()), np.array(truth))[0, 0] > 0.6
    out = _cleaner(detector=SaliencyDetector(), crop_margin=0.0).clean(_jpeg(scene))
    crop = out.steps[1]
    assert crop["decision"] == "cropped"
    assert iou_matrix(np.array(crop["box"]), np.array(truth))[0, 0] > 0.6
    x0, y0, x1, y1 = crop["box"]
    assert out.image.shape == (y1 - y0, x1 - x0, 3)


def test_nothing_found_keeps_the_whole_image():
    flat = np.full((240, 320, 3), 128, np.uint8)
    assert SaliencyDetector().detect(flat) == []
    out = _cleaner(detector=SaliencyDetector(), blur_threshold=0).clean(_jpeg(flat))
    assert out.steps[1]["decision"] == "whole_image" and out.steps[1]["why"] == "nothing found"
    assert out.image.shape == flat.shape


def test_crop_box_is_the_largest_with_margin_and_clipped():
    dets = [Detection(10, 10, 30, 30, 0.9), Detection(50, 40, 90, 100, 0.5), Detection(0, 0, 5, 5, 1.0)]
    assert crop_box(dets, 100, 100, margin=0.1) == (46, 34, 94, 100)
    assert crop_box(dets, 100, 100, margin=0.1, min_score=0.6) == (8, 8, 32, 32)
    assert crop_box([], 100, 100, margin=0.1) is None


def test_unknown_plugins_name_the_valid_ones():
    with pytest.raises(ValueError, match="saliency, yolo"):
        make_detector("detr")
    with pytest.raises(ValueError, match="nudenet"):
        make_nsfw_classifier("clip-nsfw")
    with pytest.raises(ValueError, match="classical, onnx, torchscript"):
        make_upscaler("esrgan")


# --- 3. blur ---------------------------------------------------------------------------------------------


def _photos() -> list[np.ndarray]:
    return [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket(),
            skimage_data.hubble_deep_field()]


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_blurred_photos_are_rejected_and_sharp_ones_pass(sigma):
    """`sigma` is in pixels of the 256-px scoring scale, so each photo is equally defocused whatever its size."""
    cleaner = _cleaner()
    for rgb in _photos():
        sharp = cleaner.clean(_jpeg(rgb))
        assert sharp.accepted, sharp.steps
        blurred = cleaner.clean(_jpeg(cv2.GaussianBlur(rgb, (0, 0), sigma * min(rgb.shape[:2]) / 256)))
        assert blurred.status == "rejected" and blurred.reason == "blurred"
        step = blurred.steps[-1]
        assert step["step"] == "blur" and step["score"] < step["threshold"] == 40.0


def test_blur_score_does_not_depend_on_resolution():
    rgb = skimage_data.astronaut()
    big = cv2.resize(rgb, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    a, b = query_blur_score(rgb), query_blur_score(big)
    assert abs(a - b) / a < 0.35, (a, b)


def test_calibration_separates_labelled_examples(tmp_path):
    (tmp_path / "sharp").mkdir()
    (tmp_path / "blurred").mkdir()
    for i, rgb in enumerate(_photos()):
        (tmp_path / "sharp" / f"{i}.jpg").write_bytes(_jpeg(rgb))
        for sigma in (2.5, 4.0):
            (tmp_path / "blurred" / f"{i}-{sigma}.jpg").write_bytes(_jpeg(cv2.GaussianBlur(rgb, (0, 0), sigma)))
    cal = calibrate_blur_from_files([tmp_path / "sharp"], [tmp_path / "blurred"])
    assert cal.n_sharp == 5 and cal.n_blurred == 10
    assert cal.balanced_accuracy == 1.0 and cal.sharp_kept == 1.0 and cal.blurred_rejected == 1.0
    assert cal.blurred_median < cal.threshold < cal.sharp_median


def test_calibration_oracle_and_errors():
    cal = calibrate_blur_threshold([100, 200, 300], [5, 10, 150])
    # brute force over every candidate gives the same best balanced accuracy
    best = max(((np.mean(np.array([100, 200, 300]) >= t) + np.mean(np.array([5, 10, 150]) < t)) / 2)
               for t in np.linspace(0, 400, 4001))
    assert cal.balanced_accuracy == pytest.approx(best, abs=1e-4)
    with pytest.raises(ValueError, match="blurred"):
        calibrate_blur_threshold([1.0], [])


# --- 4. low resolution -----------------------------------------------------------------------------------


def test_small_photo_is_upscaled_with_the_classical_upscaler(chelsea):
    small = cv2.resize(chelsea, (60, 40), interpolation=cv2.INTER_AREA)
    out = _cleaner(blur_threshold=0).clean(_jpeg(small))
    assert out.accepted
    step = out.steps[3]
    assert step["decision"] == "upscaled" and step["method"] == "classical"
    assert step["factor"] == pytest.approx(64 / 40) and out.image.shape == (64, 96, 3)


def test_photo_below_the_floor_is_rejected(chelsea):
    tiny = cv2.resize(chelsea, (15, 10), interpolation=cv2.INTER_AREA)
    out = _cleaner(blur_threshold=0).clean(_jpeg(tiny))
    assert out.reason == "too_small" and out.image is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_super_resolution_plugin_is_used_when_weights_exist(tmp_path, chelsea):
    torch = pytest.importorskip("torch")

    class Nearest2x(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")

    weights = tmp_path / "sr.pt"
    torch.jit.script(Nearest2x()).save(str(weights))
    from visprep.config import QueriesConfig
    from visprep.queries.clean import upscaler_from_config

    up = upscaler_from_config(QueriesConfig(sr_weights=str(weights), sr_scale=2))
    assert up.name == "torchscript"
    small = chelsea[:30, :40].copy()
    big = up.upscale(small, 80, 60)
    assert np.array_equal(big, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
    with pytest.raises(ValueError, match="sr_weights"):
        upscaler_from_config(QueriesConfig(upscaler="onnx"))


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, value: int | bytes | str) -> bytes:
    """One protobuf field: an int as a varint, bytes/str as length-delimited."""
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def _onnx_resize_model(scale: int, mode: str) -> bytes:
    """A real ONNX model (opset 13): y = Resize(x, scales=[1, 1, scale, scale], mode), x (1, 3, H, W) float32.

    Written field by field from onnx.proto (the `onnx` package is not installed here and torch.onnx.export
    needs it), so onnxruntime loads and runs it as it would any exported super-resolution network.
    """
    def value_info(name: str, dims: list[int | str]) -> bytes:
        shape = b"".join(_pb(1, _pb(1, d) if isinstance(d, int) else _pb(2, d)) for d in dims)
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, 1) + _pb(2, shape)))  # elem_type FLOAT = 1

    scales = np.array([1, 1, scale, scale], np.float32).tobytes()
    initializer = _pb(1, 4) + _pb(2, 1) + _pb(8, "scales") + _pb(9, scales)  # dims [4], FLOAT, raw_data
    node = (_pb(1, "x") + _pb(1, "") + _pb(1, "scales") + _pb(2, "y") + _pb(3, "sr") + _pb(4, "Resize")
            + _pb(5, _pb(1, "mode") + _pb(4, mode) + _pb(20, 3)))  # attribute type STRING = 3
    graph = (_pb(1, node) + _pb(2, "tiny-sr") + _pb(5, initializer) + _pb(11, value_info("x", [1, 3, "h", "w"]))
             + _pb(12, value_info("y", [1, 3, "h2", "w2"])))
    return _pb(1, 8) + _pb(2, "visprep-test") + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 13))


def test_onnx_super_resolution_plugin_loads_runs_and_sizes_a_real_model(tmp_path, chelsea):
    pytest.importorskip("onnxruntime")
    from visprep.config import QueriesConfig
    from visprep.queries.clean import upscaler_from_config

    nearest = tmp_path / "nearest2x.onnx"
    nearest.write_bytes(_onnx_resize_model(2, "nearest"))
    up = upscaler_from_config(QueriesConfig(sr_weights=str(nearest), sr_scale=2))  # auto: by the suffix
    assert up.name == "onnx" and up.describe()["scale"] == 2
    small = np.ascontiguousarray(chelsea[:30, :40])
    # 4x needs two passes of the 2x network; nearest 2x twice is pixel replication: an exact oracle.
    assert np.array_equal(up.upscale(small, 160, 120), np.repeat(np.repeat(small, 4, axis=0), 4, axis=1))
    # A non-power target: the network runs ceil(log2) times, then an area resize gives the exact size.
    odd = up.upscale(small, 100, 75)
    assert odd.shape == (75, 100, 3) and odd.dtype == np.uint8

    cubic = tmp_path / "cubic2x.onnx"
    cubic.write_bytes(_onnx_resize_model(2, "cubic"))
    up = upscaler_from_config(QueriesConfig(upscaler="onnx", sr_weights=str(cubic), sr_scale=2))
    big = up.upscale(small, 80, 60)
    # ONNX cubic (a = -0.75, half-pixel) is OpenCV's bicubic up to border handling and rounding.
    ref = cv2.resize(small, (80, 60), interpolation=cv2.INTER_CUBIC).astype(int)
    assert np.abs(big.astype(int)[2:-2, 2:-2] - ref[2:-2, 2:-2]).max() <= 2

    # Through the cleaner: a 40 px photo is enlarged by the ONNX network and recorded as such.
    cleaner = _cleaner(blur_threshold=0, upscaler=upscaler_from_config(
        QueriesConfig(sr_weights=str(nearest), sr_scale=2)))
    out = cleaner.clean(_jpeg(cv2.resize(chelsea, (60, 40), interpolation=cv2.INTER_AREA)))
    step = out.steps[3]
    assert out.accepted and step["decision"] == "upscaled" and step["method"] == "onnx"
    assert out.image.shape == (64, 96, 3)


# --- 5. NSFW ---------------------------------------------------------------------------------------------


def test_nsfw_rejection_is_recorded(chelsea):
    out = _cleaner(nsfw=_Always()).clean(_jpeg(chelsea))
    assert out.status == "rejected" and out.reason == "nsfw" and out.image is None
    assert out.steps[-1]["labels"] == ["FEMALE_BREAST_EXPOSED"]


def test_undecodable_bytes_are_rejected_not_raised():
    out = _cleaner().clean(b"\xff\xd8\xff\xe0 this is not a jpeg")
    assert out.status == "rejected" and out.reason.startswith("decode_")
    assert json.dumps(out.steps)
