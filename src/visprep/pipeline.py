"""Composition of the stages: run them in order, skipping a stage whose inputs and parameters did not change.

Two kinds of stage. *Incremental* stages (fetch, inspect, synth, embed, embed_views) are always called and do only the missing
work (URLs not fetched, images not inspected, views not made, images without a current vector). *Table* stages
(dedup, split, pairs, mix, shift, quality, mine, popularity, sample, export) rewrite whole tables and are skipped when
the fingerprints of the tables they read and their config sections equal those of their last good run; mix, shift and
popularity apply only once the events (and, for mix and shift, the queries) stage has written its tables, quality
once there are embeddings to check the labels with.

No stage reads what a later stage writes: synth reads the split (it skips eval products) and writes its own tables
(the split of a synthetic colour variant is its source's, read through `visprep.views.catalog`), and records the
facts of its views itself (no second inspect); embed_views embeds them. The passes repeat until one pass changes
nothing, so the second pass normally finds everything up to date.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visprep.config import section_params
from visprep.workspace import Workspace

ProgressFactory = Callable[[str], Callable[[int, int], None]]
Bar = Callable[[int, int], None] | None
# Run order within a pass: inspect and embed run before dedup (its signals); embed_views embeds synth's views.
ORDER = ("fetch", "inspect", "embed", "dedup", "split", "synth", "embed_views", "quality", "pairs",
         "mix", "shift", "mine", "popularity", "sample", "export")
# quality (label noise) writes only label_issues, which pairs and mix read to apply quality.policy: it runs before
# them, once the catalog images are embedded. mix (user-photo pairs) reads pairs and feeds export; shift embeds the
# user photos into the feature store, so it runs before mine (whose ann miner fingerprints that store) rather than
# making mine run twice.
MAX_PASSES = 3


@dataclass(frozen=True)
class _Stage:
    name: str
    run: Callable[[Workspace, Bar], Any]
    # A table stage is skipped when up to date; an incremental one is always called and does only missing work.
    table: bool = False
    # For an incremental stage: whether its result says it wrote something (then later stages may be stale).
    did_work: Callable[[Any], bool] = lambda result: True
    # Whether the stage has anything to work on in this workspace (e.g. popularity needs the events stage's tables).
    applies: Callable[[Workspace], bool] = lambda ws: True


def _stages() -> dict[str, _Stage]:
    # Imported here so that `import visprep.pipeline` stays cheap (torch, faiss, cv2 load only when a stage runs).
    from visprep.dedup.stage import dedup_stage
    from visprep.embed.stage import embed_stage, embed_views_stage
    from visprep.export.stage import export_stage
    from visprep.fetch.stage import fetch_stage
    from visprep.images.stage import inspect_stage
    from visprep.mining.stage import mine_stage
    from visprep.pairs.stage import pairs_stage
    from visprep.quality.mix import mix_stage
    from visprep.quality.popularity import popularity_stage
    from visprep.quality.shift import shift_applies, shift_stage
    from visprep.quality.stage import quality_applies, quality_stage
    from visprep.sampling.stage import sample_stage
    from visprep.split.stage import split_stage
    from visprep.synthetic.stage import synth_stage

    stages = [
        _Stage("fetch", lambda ws, bar: fetch_stage(ws, progress=bar), did_work=lambda r: r.attempted > 0),
        _Stage("inspect", lambda ws, bar: inspect_stage(ws, progress=bar),
               did_work=lambda r: r.inspected > 0 or r.backfilled > 0),
        _Stage("synth", lambda ws, bar: synth_stage(ws, progress=bar), did_work=lambda r: r.changed),
        _Stage("embed", lambda ws, bar: embed_stage(ws, progress=bar), did_work=lambda r: r.embedded > 0),
        _Stage("embed_views", lambda ws, bar: embed_views_stage(ws, progress=bar), did_work=lambda r: r.embedded > 0),
        _Stage("dedup", lambda ws, bar: dedup_stage(ws), table=True),
        _Stage("split", lambda ws, bar: split_stage(ws), table=True),
        _Stage("pairs", lambda ws, bar: pairs_stage(ws), table=True),
        _Stage("mine", lambda ws, bar: mine_stage(ws), table=True),
        _Stage("popularity", lambda ws, bar: popularity_stage(ws), table=True,
               applies=lambda ws: ws.has_table("interaction_pairs")),
        # User photos exist only once the events and queries stages ran (neither is part of `run`).
        _Stage("mix", lambda ws, bar: mix_stage(ws), table=True,
               applies=lambda ws: ws.has_table("interaction_pairs") and ws.has_table("queries")),
        _Stage("shift", lambda ws, bar: shift_stage(ws), table=True, applies=shift_applies),
        # Label noise needs embeddings (the embed model's store, or quality.embeddings); a catalog with too few
        # products per label is reported in the run record rather than stopping the whole run.
        _Stage("quality", lambda ws, bar: quality_stage(ws, embeddings=_quality_source(ws), on_too_few_labels="skip"),
               table=True, applies=quality_applies),
        _Stage("sample", lambda ws, bar: sample_stage(ws), table=True),
        _Stage("export", lambda ws, bar: export_stage(ws, progress=bar), table=True),
    ]
    return {s.name: s for s in stages}


def _features(ws: Workspace) -> str:
    from visprep.mining.stage import features_fingerprint

    return features_fingerprint(ws)


def _quality_source(ws: Workspace) -> Path | None:
    from visprep.quality.stage import pipeline_embeddings

    return pipeline_embeddings(ws)


def _quality_embeddings(ws: Workspace) -> str:
    from visprep.quality.stage import embeddings_fingerprint

    return embeddings_fingerprint(ws)


# Inputs a stage may record besides tables, and how to fingerprint them now.
_NON_TABLE_INPUTS: dict[str, Callable[[Workspace], Any]] = {"features": _features,
                                                             "quality_embeddings": _quality_embeddings}


def is_up_to_date(ws: Workspace, stage: str) -> bool:
    """Tell whether table stage `stage`'s last good run read exactly the current inputs with the current parameters.

    The stage's own run record is the single statement of what it read: every input it recorded must be a table
    with the same fingerprint now (a table a stage may read but that did not exist is recorded too, so its
    appearance counts as a change), and every config section it recorded must be unchanged. The split declares
    optional inputs that may appear later (groups, judgments), so its current inputs come from `split_inputs`.
    """
    from visprep.export.stage import shards_indexed
    from visprep.schema import TABLES
    from visprep.split.stage import split_inputs

    spec = _stages()[stage]
    if not spec.table:
        raise ValueError(f"stage {stage!r} is incremental (always run, does only missing work); it has no freshness")
    last = ws.last_run(stage)
    if last is None or (stage == "export" and not shards_indexed(ws)):
        return False
    recorded_inputs, recorded_params = last.get("inputs") or {}, last.get("params") or {}
    if stage == "split":
        current: dict[str, Any] = split_inputs(ws)
    elif all(name in TABLES or name in _NON_TABLE_INPUTS for name in recorded_inputs):
        current = {name: _NON_TABLE_INPUTS[name](ws) if name in _NON_TABLE_INPUTS else ws.table_fingerprint(name)
                   for name in recorded_inputs}
    else:
        return False  # an input we cannot fingerprint: rerun rather than guess
    sections = type(ws.config).model_fields
    if not recorded_params or not all(name in sections for name in recorded_params):
        return False
    return recorded_inputs == current and recorded_params == section_params(ws.config, *recorded_params)


def run_pipeline(ws: Workspace, catalog_files: Sequence[str | Path] = (), *, force: bool = False,
                 progress: ProgressFactory | None = None, allow_removals: bool = False) -> dict[str, Any]:
    """Run every configured stage in order, in passes until nothing changes; return each stage's last result.

    A stage that did not run reports "up to date"; `report["seconds"]` holds seconds per stage (all passes) and
    `report["passes"]` how many passes it took. `allow_removals` lets a catalog snapshot remove more than
    `catalog.max_removal_share` of a file's products (see `ingest_catalog`).
    """
    # One writer for the whole run, not per stage: another writer slipping in between two stages would leave this
    # run's later stages reading a mix of both.
    with ws.writer("run"):
        return _run_pipeline(ws, catalog_files, force=force, progress=progress, allow_removals=allow_removals)


def _run_pipeline(ws: Workspace, catalog_files: Sequence[str | Path], *, force: bool,
                  progress: ProgressFactory | None, allow_removals: bool) -> dict[str, Any]:
    from visprep.catalog.stage import ingest_catalog

    enabled = set(ws.config.pipeline.stages)
    if {"synth", "embed"} <= enabled:  # the views are embedded where both the views and embeddings are wanted
        enabled.add("embed_views")
    stages = _stages()
    specs = [stages[name] for name in ORDER if name in enabled]
    report: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def bar(name: str) -> Bar:
        return progress(name) if progress else None

    if catalog_files:
        t = time.perf_counter()
        report["catalog"] = ingest_catalog(ws, catalog_files, progress=bar("catalog"), allow_removals=allow_removals)
        timings["catalog"] = time.perf_counter() - t
    forced: set[str] = set()  # with force, each table stage reruns once, not at each of its places in ORDER
    passes = 0
    for passes in range(1, MAX_PASSES + 1):
        changed = False
        for spec in specs:
            if not spec.applies(ws):
                report.setdefault(spec.name, "nothing to do")
                continue
            if not spec.table:
                if passes > 1 and not changed:
                    continue  # nothing upstream moved in this pass: no missing work can have appeared
            elif force and spec.name not in forced:
                forced.add(spec.name)
            elif is_up_to_date(ws, spec.name):
                report.setdefault(spec.name, "up to date")
                continue
            t = time.perf_counter()
            result = spec.run(ws, bar(spec.name) if passes == 1 else None)
            timings[spec.name] = timings.get(spec.name, 0.0) + time.perf_counter() - t
            report[spec.name] = result
            changed = changed or spec.table or spec.did_work(result)
        if not changed:
            break
    report["passes"] = passes
    report["seconds"] = timings
    return report
