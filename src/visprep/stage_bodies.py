"""The bodies the stage registry (`visprep.stages`) calls, each as `body(ws, progress, **options)`.

Each imports its stage module when called, so that naming a stage costs nothing; each passes what the pipeline
needs and nothing else (the CLI's options arrive as keyword arguments declared in the registry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visprep.config import VisprepConfig
    from visprep.workspace import Workspace

Bar = Callable[[int, int], None] | None


def catalog(ws: Workspace, progress: Bar, *, files: Sequence[str | Path] = (), allow_removals: bool = False) -> Any:
    """Ingest catalog files."""
    from visprep.catalog.stage import ingest_catalog

    return ingest_catalog(ws, files, progress=progress, allow_removals=allow_removals)


def not_composable(ws: Workspace, progress: Bar, **options: Any) -> Any:
    """Stages whose inputs are outside the workspace (files, a broker, a model to evaluate) run from their own
    command with those inputs; the runner never calls them."""
    raise TypeError("this stage reads inputs from outside the workspace: run its own command (`visprep --help`)")


def fetch(ws: Workspace, progress: Bar, *, limit: int | None = None) -> Any:
    """Fetch the images not yet in the store."""
    from visprep.fetch.stage import fetch_stage

    return fetch_stage(ws, progress=progress, limit=limit)


def inspect(ws: Workspace, progress: Bar) -> Any:
    """Inspect the stored images not yet inspected."""
    from visprep.images.stage import inspect_stage

    return inspect_stage(ws, progress=progress)


def embed(ws: Workspace, progress: Bar, *, model: str | None = None, import_path: Path | None = None,
          model_id: str | None = None) -> Any:
    """Embed the catalog images without a current vector (with `model`: that registered embedder); or, with
    `import_path` and `model_id`, import a trainer's vectors into the store `model_id`."""
    from visprep.embed.stage import embed_stage, import_embeddings

    if import_path is not None or model_id is not None:
        if import_path is None or not model_id:
            raise ValueError("--import PATH and --model-id ID go together")
        return import_embeddings(ws, import_path, model_id=model_id)
    if model is not None:
        ws.set_config(ws.config.model_copy(update={"embed": ws.config.embed.model_copy(update={"model": model})}))
    return embed_stage(ws, progress=progress)


def embed_views(ws: Workspace, progress: Bar) -> Any:
    """Embed the synthetic views without a current vector."""
    from visprep.embed.stage import embed_views_stage

    return embed_views_stage(ws, progress=progress)


def dedup(ws: Workspace, progress: Bar) -> Any:
    """Group near-duplicate products."""
    from visprep.dedup.stage import dedup_stage

    return dedup_stage(ws)


def dedup_reads(config: VisprepConfig) -> tuple[str, ...]:
    """The catalog vectors, when `dedup.rule` uses `embedding_similar`."""
    from visprep.rules import parse_rule

    return ("features",) if "embedding_similar" in parse_rule(config.dedup.rule).names else ()


def split(ws: Workspace, progress: Bar) -> Any:
    """Assign products to splits."""
    from visprep.split.stage import split_stage

    return split_stage(ws)


def synth(ws: Workspace, progress: Bar) -> Any:
    """Make the synthetic views not made yet."""
    from visprep.synthetic.stage import synth_stage

    return synth_stage(ws, progress=progress)


def quality(ws: Workspace, progress: Bar, *, embeddings: str | None = None) -> Any:
    """Check the labels; in a pipeline a catalog with too few products per label is reported, not fatal."""
    from visprep.quality.stage import pipeline_embeddings, quality_stage

    if embeddings is not None:
        return quality_stage(ws, embeddings=Path(embeddings))
    return quality_stage(ws, embeddings=pipeline_embeddings(ws), on_too_few_labels="skip")


def quality_reads(config: VisprepConfig) -> tuple[str, ...]:
    """The embeddings file of `quality.embeddings`, else the catalog vectors."""
    return ("quality_embeddings",) if config.quality.embeddings else ("features",)


def pairs(ws: Workspace, progress: Bar) -> Any:
    """Build the training pairs."""
    from visprep.pairs.stage import pairs_stage

    return pairs_stage(ws)


def mix(ws: Workspace, progress: Bar) -> Any:
    """Mix the user photos into user_pairs."""
    from visprep.quality.mix import mix_stage

    return mix_stage(ws)


def mix_applies(ws: Workspace) -> bool:
    """User photos exist only once the events and queries stages ran (neither is part of `visprep run`)."""
    return ws.has_table("interaction_pairs") and ws.has_table("queries")


def has_interactions(ws: Workspace) -> bool:
    """Whether the events stage has written interaction_pairs."""
    return ws.has_table("interaction_pairs")


def shift(ws: Workspace, progress: Bar) -> Any:
    """Measure the catalog vs user-photo shift."""
    from visprep.quality.shift import shift_stage

    return shift_stage(ws)


def mine(ws: Workspace, progress: Bar, *, model: str | None = None) -> Any:
    """Mine the configured negatives."""
    from visprep.mining.stage import mine_stage

    return mine_stage(ws, feature_model=model)


def mine_reads(config: VisprepConfig) -> tuple[str, ...]:
    """The vectors the ann miner reads: the embed model's (catalog, views, user photos), or the store `mining.model`
    names (e.g. a checkpoint's vectors imported with `visprep embed --import`)."""
    if "ann" not in config.mining.kinds:
        return ()
    if config.mining.model:
        return ("model_features",)
    return ("features", "view_features", "user_features")


def popularity(ws: Workspace, progress: Bar) -> Any:
    """Compute exposure and re-sampling weights."""
    from visprep.quality.popularity import popularity_stage

    return popularity_stage(ws)


def sample(ws: Workspace, progress: Bar) -> Any:
    """Plan the P x K batches."""
    from visprep.sampling.stage import sample_stage

    return sample_stage(ws)


def export(ws: Workspace, progress: Bar) -> Any:
    """Write the shards."""
    from visprep.export.stage import export_stage

    return export_stage(ws, progress=progress)
