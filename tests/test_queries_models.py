"""YOLO decoding and NMS (checked against NudeNet's own decoder and a brute-force oracle), the YOLO detector
plug-in and the NudeNet NSFW default, on the ONNX model the nudenet package ships (offline)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("onnxruntime")
nudenet = pytest.importorskip("nudenet")

from visprep.queries import QueryCleaner, iou_matrix, make_detector, nms
from visprep.queries.nsfw import NUDENET_LABELS, NudeNetClassifier, nudenet_model_path
from visprep.queries.superres import ClassicalUpscaler
from visprep.queries.yolo import decode_yolo


@pytest.fixture(scope="module")
def nsfw() -> NudeNetClassifier:
    return NudeNetClassifier()


def _brute_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(iou_matrix(boxes[i], boxes[k])[0, 0] <= thr for k in keep):
            keep.append(i)
    return keep


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 40), st.integers(1, 40),
                          st.floats(0.01, 1.0)), min_size=0, max_size=25, unique_by=lambda t: t[4]),
       st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_nms_matches_brute_force(rows, thr):
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows], dtype=float).reshape(-1, 4)
    scores = np.array([r[4] for r in rows])
    assert nms(boxes, scores, iou_threshold=thr).tolist() == _brute_nms(boxes, scores, thr)


def test_nms_keeps_overlapping_boxes_of_different_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10]], float)
    assert nms(boxes, [0.9, 0.8], iou_threshold=0.5).tolist() == [0]
    assert nms(boxes, [0.9, 0.8], iou_threshold=0.5, classes=np.array([0, 1])).tolist() == [0, 1]


def test_decode_yolo_v5_layout_applies_objectness():
    # two anchors, 2 classes: (cx, cy, w, h, obj, c0, c1)
    out = np.array([[[50, 50, 20, 20, 0.9, 0.1, 0.8], [52, 50, 20, 20, 0.2, 0.9, 0.1]]], np.float32)
    dets = decode_yolo(out, scale=2.0, width=300, height=300, labels=["a", "b"], score_threshold=0.1,
                       iou_threshold=0.5)
    assert [(d.label, round(d.score, 2)) for d in dets] == [("b", 0.72), ("a", 0.18)]
    assert dets[0].as_list() == [80.0, 80.0, 120.0, 120.0]


def test_our_decoding_of_the_nudenet_onnx_matches_nudenet(nsfw):
    astronaut = skimage_data.astronaut()
    ours = nsfw.model.detect(astronaut)
    theirs = nudenet.NudeDetector().detect(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    assert [d.label for d in ours] == [t["class"] for t in theirs] == ["FACE_FEMALE"]
    x, y, w, h = theirs[0]["box"]
    assert iou_matrix(np.array(ours[0].as_list()), np.array([x, y, x + w, y + h]))[0, 0] > 0.95
    assert ours[0].score == pytest.approx(theirs[0]["score"], abs=1e-4)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_real_everyday_photos_are_not_nsfw(nsfw, name):
    verdict = nsfw.classify(getattr(skimage_data, name)())
    assert not verdict.unsafe and verdict.labels == []


def test_nsfw_threshold_and_classes_are_applied():
    # coffee scores 0.21 on BUTTOCKS_EXPOSED (a false positive of the model): a low threshold rejects it
    strict = NudeNetClassifier(threshold=0.2)
    assert strict.classify(skimage_data.coffee()).unsafe
    lax = NudeNetClassifier(threshold=0.2, unsafe_classes=["ANUS_EXPOSED"])
    assert not lax.classify(skimage_data.coffee()).unsafe
    with pytest.raises(ValueError, match="unknown NudeNet classes"):
        NudeNetClassifier(unsafe_classes=["NAKED"])


def test_yolo_detector_plugin_crops_to_the_largest_detection():
    detector = make_detector("yolo", weights=str(nudenet_model_path()), labels=NUDENET_LABELS, size=320,
                             classes=["FACE_FEMALE"], channel_order="bgr")
    cleaner = QueryCleaner(detector=detector, nsfw=None, upscaler=ClassicalUpscaler(), crop_margin=0.0,
                           blur_threshold=0)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, "PNG")
    out = cleaner.clean(buffer.getvalue())
    crop = out.steps[1]
    assert crop["decision"] == "cropped" and crop["label"] == "FACE_FEMALE" and crop["detector"] == "yolo"
    x0, y0, x1, y1 = crop["box"]
    assert 150 < x0 < 200 and 60 < y0 < 110 and 250 < x1 < 300 and 160 < y1 < 210  # the face
    with pytest.raises(ValueError, match="not among the model's labels"):
        make_detector("yolo", weights=str(nudenet_model_path()), labels=NUDENET_LABELS, classes=["shoe"])
    with pytest.raises(FileNotFoundError):
        make_detector("yolo", weights="/nonexistent.onnx", labels=["shoe"])
