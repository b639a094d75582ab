"""Fingerprints of the resources stages read and write besides tables (named in `visprep.stages.RESOURCES`).

A fingerprint is cheap (file names, sizes, mtimes: no content is read) and changes whenever what a reader would
read changes. The feature store has one fingerprint per writer, so that the synth views' vectors (embed_views) or
the user photos' (shift) do not make a reader of the catalog's vectors stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from visprep.views.features import embed_model_id

if TYPE_CHECKING:
    from visprep.workspace import Workspace


def _writer_parts(ws: Workspace, model_id: str | None, writer: str) -> str | None:
    from visprep.embed.store import writer_fingerprint

    if model_id is None:
        return None
    return writer_fingerprint(ws, model_id, writer)


def catalog_features(ws: Workspace) -> str | None:
    """The `[embed]` model's vectors of catalog images (written by the embed stage)."""
    return _writer_parts(ws, embed_model_id(ws), "embed")


def view_features(ws: Workspace) -> str | None:
    """The `[embed]` model's vectors of synthetic views (written by the embed_views stage)."""
    return _writer_parts(ws, embed_model_id(ws), "embed_views")


def user_features(ws: Workspace) -> str | None:
    """The `[embed]` model's vectors of user photos (written by the shift stage)."""
    return _writer_parts(ws, embed_model_id(ws), "shift")


def mining_model_features(ws: Workspace) -> str | None:
    """The whole store of `mining.model` (e.g. vectors imported with `visprep embed --import`)."""
    from visprep.mining.stage import features_fingerprint

    return features_fingerprint(ws, ws.config.mining.model)


def quality_embeddings(ws: Workspace) -> str | None:
    """The file or folder `quality.embeddings` names."""
    from visprep.quality.stage import source_fingerprint

    path = ws.config.quality.embeddings
    return source_fingerprint(Path(path)) if path else None


def shards(ws: Workspace) -> str | None:
    """The export's manifests and sample indexes; None while any split's shards are incomplete or unindexed (shards
    written before the index existed are rewritten by the next run)."""
    from visprep.export.stage import shards_indexed

    if not shards_indexed(ws):
        return None
    files = sorted(p for d in ws.shards_dir.iterdir() if d.is_dir() for p in d.iterdir() if p.is_file())
    from visprep.workspace import files_fingerprint

    return files_fingerprint(files, relative_to=ws.shards_dir)
