"""Training-time augmentation policies (spec "Data Augmentation"): named, configurable, seeded; no geometric
distortions. kornia runs them on batched tensors (CPU or GPU); torchvision v2 where installed."""

from visprep.augment.kornia_policy import KorniaPolicy
from visprep.augment.policy import (
    GEOMETRIC_NAMES,
    GEOMETRIC_TRANSFORMS,
    POLICIES,
    GeometricAugmentationError,
    PolicyParams,
    refuse_geometric,
    resolve_policy,
)
from visprep.augment.preview import preview_grid, write_preview_png
from visprep.augment.torchvision_policy import build_torchvision_pipeline

__all__ = [
    "GEOMETRIC_NAMES", "GEOMETRIC_TRANSFORMS", "POLICIES", "GeometricAugmentationError", "KorniaPolicy",
    "PolicyParams", "build_torchvision_pipeline", "preview_grid", "refuse_geometric", "resolve_policy",
    "write_preview_png",
]
