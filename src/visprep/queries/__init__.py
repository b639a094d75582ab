"""Cleaning user-uploaded query photos (spec "Handling Real-World Query Images").

`QueryCleaner` is the serving-time entry point (build once, `clean(bytes)` per photo); `queries_stage` runs it
over files, URLs and listings into a workspace. Detectors, NSFW classifiers and upscalers are named registries.
"""

from visprep.queries.boxes import Detection, crop_box, iou_matrix, nms
from visprep.queries.clean import REJECT_REASONS, CleanedQuery, QueryCleaner, clean_query_image
from visprep.queries.detect import DETECTORS, ObjectDetector, SaliencyDetector, YoloDetector, make_detector
from visprep.queries.nsfw import (
    NSFW_CLASSIFIERS,
    NsfwClassifier,
    NsfwVerdict,
    NudeNetClassifier,
    make_nsfw_classifier,
)
from visprep.queries.sharpness import BlurCalibration, calibrate_blur_threshold, query_blur_score
from visprep.queries.superres import UPSCALERS, ClassicalUpscaler, Upscaler, make_upscaler

__all__ = [
    "DETECTORS", "NSFW_CLASSIFIERS", "REJECT_REASONS", "UPSCALERS", "BlurCalibration", "ClassicalUpscaler",
    "CleanedQuery", "Detection", "NsfwClassifier", "NsfwVerdict", "NudeNetClassifier", "ObjectDetector",
    "QueryCleaner", "SaliencyDetector", "Upscaler", "YoloDetector", "calibrate_blur_threshold", "clean_query_image",
    "crop_box", "iou_matrix", "make_detector", "make_nsfw_classifier", "make_upscaler", "nms", "query_blur_score",
]
