"""A policy as a kornia pipeline over batched tensors (CPU or GPU), seeded and reproducible."""

from __future__ import annotations

from typing import Any

from visprep.augment.policy import PolicyParams, refuse_geometric


def _kornia() -> Any:
    try:
        import kornia.augmentation as K
    except ImportError as exc:
        raise ImportError("augmentation policies need kornia (and torch): pip install kornia") from exc
    return K


class KorniaPolicy:
    """Applies a `PolicyParams` to (B, 3, H, W) float images in 0..1 with kornia; returns (B, 3, size, size).

    Call with ``seed=`` for a reproducible draw: the same seed, batch and parameters give the same output on
    the same device (the global torch RNG is forked, so the caller's RNG state is left untouched).
    """

    def __init__(self, params: PolicyParams) -> None:
        import torch

        K = _kornia()
        self.params = params
        p = params
        ops = [
            K.RandomResizedCrop((p.size, p.size), scale=p.crop_scale, ratio=p.crop_ratio, p=1.0),
            K.RandomHorizontalFlip(p=p.flip_p),
        ]
        if p.jitter_p > 0:
            ops.append(K.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue, p=p.jitter_p))
        if p.blur_p > 0:
            ops.append(K.RandomGaussianBlur((p.blur_kernel, p.blur_kernel), p.blur_sigma, p=p.blur_p))
        if p.grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=p.grayscale_p))
        if p.erasing_p > 0:
            ops.append(K.RandomErasing(scale=p.erasing_scale, p=p.erasing_p))
        self.pipeline = torch.nn.Sequential(*ops)
        refuse_geometric(self.pipeline)
        keys = ["input", "class"]
        self.cutmix = (K.RandomCutMixV2(p=p.cutmix_p, data_keys=keys, use_correct_lambda=True)
                       if p.cutmix_p > 0 else None)
        self.mixup = K.RandomMixUpV2(p=p.mixup_p, data_keys=keys) if p.mixup_p > 0 else None

    def __call__(self, batch: Any, *, seed: int | None = None) -> Any:
        """Augment a batch.

        Args:
            batch: (B, 3, H, W) float tensor in 0..1, or uint8 (converted).
            seed: draw reproducibly from this seed.
        """
        import torch

        batch = _as_float_batch(batch)
        if seed is None:
            return self.pipeline(batch)
        devices = [batch.device.index or 0] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.pipeline(batch)

    def mix(self, batch: Any, labels: Any, *, seed: int | None = None) -> tuple[Any, Any]:
        """Apply the opt-in CutMix / MixUp to an augmented batch.

        Returns:
            (images, [mixing labels of each mixer applied]): kornia's label tensors, e.g. MixUp's (B, 3) rows of
            (label, mixed-in label, lambda).

        Raises:
            ValueError: neither is enabled (``cutmix_p`` and ``mixup_p`` are 0).
        """
        import torch

        mixers = [m for m in (self.cutmix, self.mixup) if m is not None]
        if not mixers:
            raise ValueError("CutMix and MixUp are off in this policy (cutmix_p = mixup_p = 0); enable one to mix")
        devices = [batch.device.index or 0] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            out, mixed = batch, []
            for m in mixers:
                out, lab = m(out, labels)
                mixed.append(lab)
        return out, mixed


def _as_float_batch(batch: Any) -> Any:
    import torch

    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"augmentation needs a torch tensor (B, 3, H, W), got {type(batch).__name__}")
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"augmentation needs a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    if not batch.is_floating_point():
        raise ValueError(f"augmentation needs float images in 0..1 or uint8, got dtype {batch.dtype}")
    return batch
