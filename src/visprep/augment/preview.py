"""A preview grid: one image under N draws of a policy, written as a PNG a person can look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from visprep.augment.kornia_policy import KorniaPolicy
from visprep.augment.policy import PolicyParams


def preview_grid(rgb: np.ndarray, params: PolicyParams, *, n: int = 16, seed: int = 0, cols: int | None = None,
                 gap: int = 4) -> np.ndarray:
    """Return a (rows*size + gaps, cols*size + gaps, 3) uint8 grid of `n` augmented draws of `rgb`.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        params: the policy.
        n: number of draws (1..256).
        seed: the draws are reproducible under this seed.
        cols: grid columns (default: about sqrt(n)).
        gap: white pixels between tiles.
    """
    import torch

    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"preview_grid needs (H, W, 3) uint8 RGB, got shape {getattr(rgb, 'shape', None)}")
    if not 1 <= n <= 256:
        raise ValueError(f"preview n must be in 1..256, got {n!r}")
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    batch = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    out = KorniaPolicy(params)(batch, seed=seed)
    tiles = (out.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    s = params.size
    grid = np.full((rows * s + (rows - 1) * gap, cols * s + (cols - 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (s + gap): r * (s + gap) + s, c * (s + gap): c * (s + gap) + s] = tile
    return grid


def write_preview_png(path: str | Path, grid: np.ndarray) -> Path:
    """Write `grid` as a PNG (atomically) and return the path."""
    import io

    from PIL import Image

    from visprep.workspace import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, "PNG")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
