"""The same policy as a torchvision v2 pipeline, for training loops built on torchvision (optional)."""

from __future__ import annotations

from typing import Any

from visprep.augment.policy import PolicyParams, refuse_geometric


def build_torchvision_pipeline(params: PolicyParams) -> Any:
    """A ``torchvision.transforms.v2.Compose`` equivalent to `KorniaPolicy(params)` (per image, not batched).

    CutMix / MixUp are batch-level in torchvision too (``v2.CutMix``/``v2.MixUp`` in the collate step) and are
    not included here.

    Raises:
        ImportError: torchvision is not installed (the message says what to install).
    """
    try:
        from torchvision.transforms import v2
    except ImportError as exc:
        raise ImportError("the torchvision pipeline needs torchvision (matching your torch): pip install "
                          "torchvision; the kornia pipeline (visprep.augment.KorniaPolicy) needs only torch") from exc
    p = params
    ops: list[Any] = [
        v2.RandomResizedCrop((p.size, p.size), scale=p.crop_scale, ratio=p.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(p=p.flip_p),
    ]
    if p.jitter_p > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)], p=p.jitter_p))
    if p.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(p.blur_kernel, sigma=p.blur_sigma)], p=p.blur_p))
    if p.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(p=p.grayscale_p))
    if p.erasing_p > 0:
        ops.append(v2.RandomErasing(p=p.erasing_p, scale=p.erasing_scale))
    pipeline = v2.Compose(ops)
    refuse_geometric(pipeline)
    return pipeline
