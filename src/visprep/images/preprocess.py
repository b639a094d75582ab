"""Training/eval preprocessing: decode at reduced DCT scale, resize the shorter side, center crop, normalize.

Geometry follows torchvision's `Resize(int)` + `CenterCrop` (longer side truncated, crop offsets rounded), so
tensors match what a torchvision eval transform would give, up to the resampling filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from visprep.images.decode import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PIXELS,
    decode_image,
    exif_oriented_view,
)
from visprep.images.resize import interpolation_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessProfile:
    """How to turn an image into a model input.

    Attributes:
        size: side of the square center crop, in pixels.
        resize_shorter: the shorter side is resized to this before cropping; None means `size` (no margin).
        mean: per-channel RGB mean on the 0..1 scale, subtracted by `normalize`.
        std: per-channel RGB standard deviation on the 0..1 scale, divided by in `normalize`.
    """

    size: int = 224
    resize_shorter: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"PreprocessProfile.size must be a positive int, got {self.size!r}")
        if self.resize_shorter is not None and (
            not isinstance(self.resize_shorter, int) or self.resize_shorter < self.size
        ):
            raise ValueError(
                f"PreprocessProfile.resize_shorter must be None or an int >= size={self.size}, "
                f"got {self.resize_shorter!r}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"PreprocessProfile.{name} needs 3 values (R, G, B), got {value!r}")
        if min(self.std) <= 0:
            raise ValueError(f"PreprocessProfile.std must be > 0, got {self.std!r}")

    @property
    def shorter_side(self) -> int:
        """The shorter side after resizing, before the crop."""
        return self.resize_shorter if self.resize_shorter is not None else self.size


PROFILES: dict[str, PreprocessProfile] = {
    # torchvision/timm ImageNet eval transform: resize to 256, crop 224.
    "imagenet-224": PreprocessProfile(size=224, resize_shorter=256),
    # OpenAI CLIP / open_clip eval transform: resize the shorter side to the crop size, crop.
    "clip-224": PreprocessProfile(size=224, mean=CLIP_MEAN, std=CLIP_STD),
    "clip-336": PreprocessProfile(size=336, mean=CLIP_MEAN, std=CLIP_STD),
    # The ImageNet transform scaled to a 128 crop (same 0.875 crop ratio): ~3x fewer FLOPs for CNN embedders, for
    # low-resolution catalogs (the demo's 28-px Fashion-MNIST garments) and CPU-only runs.
    "imagenet-128": PreprocessProfile(size=128, resize_shorter=146),
    # The same at 64 px (~3x faster again on CPU): still more than twice the demo garments' 28 px.
    "imagenet-64": PreprocessProfile(size=64, resize_shorter=73),
}


def get_profile(name: str) -> PreprocessProfile:
    """Return the registered profile `name`; unknown names raise ValueError listing the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown preprocess profile {name!r}; valid: {', '.join(sorted(PROFILES))}") from None


def preprocess_uint8(data: bytes, profile: PreprocessProfile, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Decode, resize the shorter side to `profile.shorter_side`, and center crop to `profile.size`.

    JPEGs are decoded at the smallest DCT scale whose shorter side is still >= the resize target, so the
    remaining resize is at most a 2x reduction (bilinear); EXIF orientation is applied.

    Args:
        data: the encoded image file.
        profile: see `PreprocessProfile`.
        max_pixels: largest width*height accepted, checked from the header before decoding.
        max_decoded_bytes: largest memory the decode may take (`decode.DecodeSize`), checked from the header before
            decoding.

    Returns:
        (size, size, 3) uint8 RGB, C-contiguous.

    Raises:
        ImageDecodeError: the image cannot be decoded (see `decode_rgb`).
    """
    return np.ascontiguousarray(_center_crop_view(data, profile, max_pixels, max_decoded_bytes))


def _center_crop_view(data: bytes, profile: PreprocessProfile, max_pixels: int = DEFAULT_MAX_PIXELS,
                      max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """`preprocess_uint8` without the final copy: a (size, size, 3) view into the resized image."""
    target = profile.shorter_side
    decoded = decode_image(data, min_side=target, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes,
                           gray=False)
    pixels = decoded.pixels
    height, width = pixels.shape[:2]
    short, long = (height, width) if height <= width else (width, height)
    new_long = max(target, int(target * long / short))  # torchvision truncates the longer side
    new_h, new_w = (target, new_long) if height <= width else (new_long, target)
    if (new_h, new_w) != (height, width):
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation_for(short, target))
    # Orient the small resized image, not the decoded one: same result, fewer pixels to move.
    upright = exif_oriented_view(pixels, decoded.orientation)
    up_h, up_w = upright.shape[:2]
    size = profile.size
    top = int(round((up_h - size) / 2.0))
    left = int(round((up_w - size) / 2.0))
    return upright[top : top + size, left : left + size]


def normalize(images: np.ndarray, profile: PreprocessProfile) -> np.ndarray:
    """Scale to 0..1, subtract the mean, divide by the std, channels first.

    Computes `x * (1 / (255 * std)) + (-mean / std)` per channel in float32, one fused pass per plane.

    Args:
        images: (H, W, 3) or (N, H, W, 3) uint8 RGB.
        profile: gives `mean` and `std`.

    Returns:
        (3, H, W) or (N, 3, H, W) float32, C-contiguous.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4) \
            or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"normalize needs (H, W, 3) or (N, H, W, 3) uint8 RGB, got shape {shape} dtype {dtype}")
    std = np.asarray(profile.std, np.float64)
    scale = 1.0 / (255.0 * std)
    bias = -np.asarray(profile.mean, np.float64) / std
    if images.ndim == 3:
        out = np.empty((3, *images.shape[:2]), np.float32)
        _normalize_into(images, scale, bias, out)
        return out
    out = np.empty((images.shape[0], 3, *images.shape[1:3]), np.float32)
    for index, image in enumerate(images):
        _normalize_into(image, scale, bias, out[index])
    return out


def preprocess_float(data: bytes, profile: PreprocessProfile, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """`normalize(preprocess_uint8(data, profile), profile)`: (3, size, size) float32."""
    # Normalizing the crop view directly saves the uint8 crop copy.
    return normalize(_center_crop_view(data, profile, max_pixels, max_decoded_bytes), profile)


def encode_jpeg(rgb: np.ndarray, *, quality: int = 90) -> bytes:
    """Encode (H, W, 3) RGB or (H, W) gray uint8 pixels as a baseline JPEG (4:2:0 chroma for RGB).

    Args:
        rgb: the pixels; need not be contiguous.
        quality: libjpeg quality 1..100.
    """
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or not (
        rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] in (1, 3))
    ) or rgb.size == 0:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"encode_jpeg needs (H, W, 3) or (H, W) uint8 pixels, got shape {shape}")
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    pixels = np.ascontiguousarray(rgb)
    if pixels.shape[2] == 1:
        return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="GRAY", colorsubsampling="Gray")
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")


def _normalize_into(image: np.ndarray, scale: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    # cv2.split gives contiguous planes; addWeighted(p, a, p, 0, b) is a fused uint8->float32 multiply-add
    # (about 10x faster than the numpy astype/multiply/add/transpose chain at 224 px).
    if not (image.strides[2] == 1 and image.strides[1] == 3 and image.strides[0] > 0):
        image = np.ascontiguousarray(image)  # OpenCV takes row-strided views, not flipped or transposed ones
    for channel, plane in enumerate(cv2.split(image)):
        cv2.addWeighted(plane, float(scale[channel]), plane, 0.0, float(bias[channel]),
                        dst=out[channel], dtype=cv2.CV_32F)

