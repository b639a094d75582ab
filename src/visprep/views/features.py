"""Where the feature store lives: the one definition of the `features/` folder and of a model's store folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visprep.workspace import Workspace

FEATURES_DIR = "features"


def features_root(ws: Workspace | Path) -> Path:
    """The `features/` folder of a workspace (or of the workspace folder `ws`)."""
    return (ws if isinstance(ws, Path) else ws.root) / FEATURES_DIR


def store_dir_name(model_id: str) -> str:
    """The folder name of `model_id`'s store (path separators replaced)."""
    return model_id.replace("/", "_").replace("\\", "_")


def embed_model_id(ws: Workspace) -> str | None:
    """The model id of the `[embed]` model (its store's name), or None when its embedder cannot tell it here (not
    installed or not registered: nothing of it can have been written)."""
    from visprep.embed.registry import model_id_of

    cfg = ws.config.embed
    try:
        return model_id_of(cfg.model, **cfg.options)
    except (ImportError, ValueError, OSError):
        return None


def store_dir(ws: Workspace | Path, model_id: str) -> Path:
    """`model_id`'s feature store folder: `features/<model id, separators replaced>/`."""
    return features_root(ws) / store_dir_name(model_id)


def store_fingerprint(path: Path) -> str:
    """A cheap fingerprint of a feature store folder: its part files' names, sizes and modification times
    (a store only ever gains or replaces whole parts, so any change of its vectors changes this)."""
    from visprep.workspace import files_fingerprint

    parts = path / "parts"
    return files_fingerprint(sorted(parts.glob("part-*.parquet")) if parts.exists() else [])
