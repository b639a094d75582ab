"""The embed stages: embed every decoded image that has no current vector in the model's feature store; `embed`
the catalog's images (`images`), `embed_views` the synth stage's views (`synthetic_images`), into one store.

Incremental by construction: the store is keyed by (image id, content hash) under a folder per model id, so a
run embeds only new images (cold-start products get vectors at index time, no retraining), a new model id starts a
new store, and a run with nothing new loads no model and finishes in the time it takes to read two id columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from visprep.config import EmbedConfig, section_params
from visprep.embed.registry import (
    Embedder,
    Prepared,
    StagedEmbedder,
    accepts_option,
    get_embedder,
    model_id_of,
    registered_factory,
)
from visprep.embed.store import FeatureStore, parallel_part_name
from visprep.engines import get_engine, map_parts, spread, workspace_location
from visprep.engines.local import batched, prefetch
from visprep.engines.threads import apply_threads, plan_threads
from visprep.images.sniff import extension_for
from visprep.views.catalog import all_images
from visprep.views.features import features_root
from visprep.workspace import QuarantineRecord, Workspace, image_file


@dataclass
class EmbedResult:
    """Counts of one embed run."""

    model_id: str = ""
    images: int = 0
    embedded: int = 0
    skipped: int = 0  # already had a current vector
    failed: int = 0
    store_total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbedderSpec:
    """A registered embedder by name and keyword options: plain data a worker builds its embedder from."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


def embedder_spec(cfg: EmbedConfig, *, model_threads: int) -> EmbedderSpec:
    """The embedder the `[embed]` section names: its options, plus `threads` (`model_threads`) and `backend` where the
    embedder takes them and the options do not name them."""
    options = dict(cfg.options)
    if "threads" not in options and (cfg.threads or accepts_option(cfg.model, "threads")):
        options["threads"] = model_threads
    if "backend" not in options and accepts_option(cfg.model, "backend"):
        options["backend"] = cfg.backend
    return EmbedderSpec(cfg.model, options)


_BUILT: dict[str, tuple[Any, Embedder]] = {}
"""Embedders built from specs in this process, by spec: a worker loads one model and keeps it across batches."""


def embedder_for(spec: EmbedderSpec) -> Embedder:
    """The embedder of `spec`, built once per process; rebuilt when the name was registered anew since."""
    key = json.dumps([spec.name, dict(spec.options)], sort_keys=True, default=repr)
    factory = registered_factory(spec.name)
    hit = _BUILT.get(key)
    if hit is not None and hit[0] is factory:
        return hit[1]
    embedder = get_embedder(spec.name, **spec.options)
    _BUILT[key] = (factory, embedder)
    return embedder


@dataclass
class ReadBatch:
    """A batch read for the model by `read_embed_batch`: the ids whose bytes were read, the failures so far, and
    the prepared batch (a `StagedEmbedder`) or the bytes read."""

    ids: list[str]
    failures: list[dict]
    ready: Prepared | list[bytes]


def embed_batch(items: Sequence[tuple[str, str]], embedder_spec: EmbedderSpec | Embedder
                ) -> tuple[list[str], np.ndarray, list[dict]]:
    """Embed `(image_id, path)` items: (ids embedded, their unit vectors (M, dim) in that order, one failure row
    {image_id, reason, detail} per other item: "missing_bytes" (unreadable file) or "embed_decode"). Nothing is
    written; a bad item never raises.

    Args:
        items: the images, each with the path of its stored bytes.
        embedder_spec: the embedder to build (once per process, `embedder_for`), or one already built (in-process).
    """
    embedder = embedder_for(embedder_spec) if isinstance(embedder_spec, EmbedderSpec) else embedder_spec
    return finish_embed_batch(embedder, read_embed_batch(items, embedder))


def embed_part(seq: int, chunk: Sequence[tuple[str, str]], *, embedder_spec: EmbedderSpec, root: str, model_id: str,
               base: int, writer: str, batch_size: int, index_kind: str = "flat", hnsw_m: int = 32
               ) -> dict[str, object]:
    """Embed chunk `seq` of a run (in forward passes of `batch_size`) and append its vectors as one part of the
    feature store `model_id` of the workspace at `root`, named `parallel_part_name(base, seq)`; return
    only what the driver needs: counts, the dimension and the failure rows (no vectors).

    Run by one of several workers at once (a Ray actor holding the model): each writes its own part, and a chunk
    rerun after its worker died replaces the part its first attempt may have written.
    """
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    failures: list[dict] = []
    for batch in batched(chunk, batch_size):
        got, v, failed = embed_batch(batch, embedder_spec)
        ids.extend(got)
        vecs.append(v)
        failures.extend(failed)
    dim = int(vecs[0].shape[1]) if vecs and vecs[0].ndim == 2 else 0
    if ids:
        ws = Workspace(root)
        store = FeatureStore(features_root(ws), model_id, dim, index_kind=index_kind, hnsw_m=hnsw_m)
        store.append(ids, np.concatenate(vecs), update_index=False, writer=writer, part=parallel_part_name(base, seq))
        ws.publish(["features"])  # on object storage the part is this worker's to commit: the driver never sees it
    return {"embedded": len(ids), "dim": dim, "failures": failures}


def read_embed_batch(items: Sequence[tuple[str, str]], embedder: Embedder) -> ReadBatch:
    """First half of `embed_batch`: read each item's bytes and, for a `StagedEmbedder`, decode them for the model
    (the embed stage runs it in a read-ahead thread, so decoding overlaps the model on the previous batch)."""
    data, ids, failures = [], [], []
    for image_id, path in items:
        try:
            data.append(image_file(path).read_bytes())
            ids.append(image_id)
        except (OSError, ValueError) as exc:
            failures.append({"image_id": image_id, "reason": "missing_bytes",
                             "detail": f"{type(exc).__name__}: {exc}"})
    return ReadBatch(ids, failures, embedder.prepare(data) if isinstance(embedder, StagedEmbedder) else data)


def finish_embed_batch(embedder: Embedder, read: ReadBatch) -> tuple[list[str], np.ndarray, list[dict]]:
    """Second half of `embed_batch`: run the model on a `read_embed_batch` result."""
    if isinstance(read.ready, Prepared):
        vecs, good, errors = embedder.forward(read.ready), read.ready.ok, read.ready.errors
    else:
        vecs, good, errors = embedder.embed_partial(read.ready)
    failures = list(read.failures)
    for err in errors:
        i = int(err.split(":", 1)[0])
        failures.append({"image_id": read.ids[i], "reason": "embed_decode", "detail": err.split(":", 1)[1].strip()})
    return [i for i, g in zip(read.ids, good.tolist()) if g], vecs, failures


def embed_stage(ws: Workspace, *, embedder: Embedder | None = None,
                progress: Callable[[int, int], None] | None = None) -> EmbedResult:
    """Embed the decoded catalog images (`images`) without a current vector; append them to the store and its index.

    Args:
        ws: the workspace (reads `images`; writes `features/<model_id>/` parts tagged "embed", quarantine, a run
            record).
        embedder: use this one instead of building `ws.config.embed.model` (tests, notebooks).
        progress: called with (images advanced, total to embed).
    """
    return _embed_table(ws, "embed", "images", embedder=embedder, progress=progress)


def embed_views_stage(ws: Workspace, *, embedder: Embedder | None = None,
                      progress: Callable[[int, int], None] | None = None) -> EmbedResult:
    """Embed the synth stage's views (`synthetic_images`) without a current vector into the same feature store as
    `embed_stage`, in parts tagged "embed_views" (so a reader of the catalog's vectors is not made stale by them).

    Args: as `embed_stage`.
    """
    return _embed_table(ws, "embed_views", "synthetic_images", embedder=embedder, progress=progress)


def _embed_table(ws: Workspace, stage: str, table: str, *, embedder: Embedder | None,
                 progress: Callable[[int, int], None] | None) -> EmbedResult:
    """Embed the decoded images of `table` without a current vector, as run `stage` (the parts' writer tag)."""
    cfg = ws.config.embed
    res = EmbedResult()
    plan = plan_threads(model_threads=cfg.threads)
    spec = embedder_spec(cfg, model_threads=plan.model)
    res.model_id = embedder.model_id if embedder is not None else model_id_of(spec.name, **spec.options)
    params = {**section_params(ws.config, "embed"), "model_id": res.model_id}
    with ws.run(stage, params) as run:
        images = ws.read_table(table, ["image_id", "status", "format"])
        ok = images.filter(pc.equal(images["status"], "ok"))
        ids = ok.column("image_id").to_pylist()
        fmts = ok.column("format").to_pylist()
        res.images = len(ids)
        root = features_root(ws)
        store = _open_store(root, res.model_id, embedder, cfg)
        current = store.current(ids) if store is not None else np.zeros(len(ids), bool)
        todo = [(i, f) for i, f, c in zip(ids, fmts, current.tolist()) if not c]
        res.skipped = len(ids) - len(todo)
        failures: list[QuarantineRecord] = []
        engine = get_engine(ws.config)
        # An embedder handed in (tests, notebooks) is a live object: it runs here, whatever the engine.
        on_ray = engine.name != "local" and embedder is None
        run.metrics["engine"] = engine.name if on_ray else "local"
        if todo:
            items = [(i, ws.store.ref(i, extension_for(f))) for i, f in todo]
            if on_ray:
                # One model per actor, each actor one CPU: the model runs single-threaded there. Each actor call
                # embeds one checkpoint's worth of images and appends them as its own store part: the vectors
                # never travel back to this process.
                actor_spec = embedder_spec(cfg, model_threads=1)
                run.metrics["threads"] = {"model": 1, "per": "Ray actor"}
                run.metrics["backend"] = actor_spec.options.get("backend")
                write = partial(embed_part, embedder_spec=actor_spec, root=workspace_location(ws), model_id=res.model_id,
                                base=store.part_count() if store is not None else 0, writer=stage,
                                batch_size=cfg.batch_size, index_kind=cfg.index, hnsw_m=cfg.hnsw_m)
                # A part per checkpoint_every images, fewer where that would leave actors idle; whole forward
                # passes, so each pass sees the images the local engine's would.
                chunk_size = spread(len(items), cfg.checkpoint_every, engine.slots(0), multiple_of=cfg.batch_size)
                for chunk, summary in map_parts(engine, write, items, batch_size=chunk_size, stateful=True):
                    failures.extend(_failure_records(summary["failures"]))
                    res.embedded += summary["embedded"]
                    if progress:
                        progress(len(chunk), len(todo))
                if res.embedded:  # the workers wrote the parts: open the store they made, to index it here
                    ws.pull(["features"])  # on object storage they committed them there, from caches of their own
                    store = FeatureStore.open_existing(root, res.model_id)
            else:
                apply_threads(plan)
                if embedder is None:
                    embedder = get_embedder(spec.name, **spec.options)
                run.metrics["threads"] = plan.as_dict()
                run.metrics["backend"] = getattr(embedder, "backend", None)
                if store is None:
                    store = FeatureStore(root, embedder.model_id, embedder.dim, index_kind=cfg.index,
                                         hnsw_m=cfg.hnsw_m)
                done_ids: list[str] = []
                done_vecs: list[np.ndarray] = []
                for batch, (batch_ids, vecs, failed) in _local_results(embedder, items, cfg.batch_size):
                    failures.extend(_failure_records(failed))
                    done_ids.extend(batch_ids)
                    done_vecs.append(vecs)
                    if progress:
                        progress(len(batch), len(todo))
                    if len(done_ids) >= cfg.checkpoint_every:
                        res.embedded += _checkpoint(ws, store, done_ids, done_vecs, stage)
                res.embedded += _checkpoint(ws, store, done_ids, done_vecs, stage)
            if store is not None:
                store.index()  # one index update per run
        res.failed = len(failures)
        for f in failures:
            res.by_reason[f.reason] = res.by_reason.get(f.reason, 0) + 1
        ws.quarantine(failures, stage=stage, run_id=run.run_id, key=res.model_id)
        res.store_total = len(store) if store is not None else 0
        run.counts = {"images_in": res.images, "embedded": res.embedded, "skipped": res.skipped,
                      "failed": res.failed, "store_total": res.store_total}
    return res


def _failure_records(failed: list[dict]) -> list[QuarantineRecord]:
    """Quarantine records of `embed_batch`'s failure rows."""
    return [QuarantineRecord(reason=f["reason"], detail=f["detail"], record_id=f["image_id"], field="image_id",
                             value=f["image_id"]) for f in failed]


def _local_results(embedder: Embedder, items: list[tuple[str, str]], batch_size: int
                   ) -> Iterator[tuple[list[tuple[str, str]], tuple[list[str], np.ndarray, list[dict]]]]:
    """Yield `(batch, embed_batch of it)` in this process, each batch read ahead while the model runs (`_batches`)."""
    for batch, read in _batches(embedder, items, batch_size):
        yield batch, finish_embed_batch(embedder, read)


def _batches(embedder: Embedder, items: list[tuple[str, str]], batch_size: int
             ) -> Iterator[tuple[list[tuple[str, str]], ReadBatch]]:
    """Yield `(batch, read_embed_batch of it)`. A `StagedEmbedder`'s batches are read and decoded by a read-ahead
    thread while the model runs on the previous one, so the stage runs at the model's rate rather than at decode +
    model (OpenCV, simplejpeg and ONNX Runtime release the GIL)."""
    reads = ((batch, read_embed_batch(batch, embedder)) for batch in batched(items, batch_size))
    return prefetch(reads, depth=2) if isinstance(embedder, StagedEmbedder) else reads


def _checkpoint(ws: Workspace, store: FeatureStore, ids: list[str], vecs: list[np.ndarray], writer: str) -> int:
    """Append what is embedded so far as one store part of `writer` (what a kill can lose) and publish it (a
    workspace on object storage); return how many."""
    n = len(ids)
    if n:
        store.append(list(ids), np.concatenate(vecs), update_index=False, writer=writer)
        ws.publish(["features"])
    ids.clear()
    vecs.clear()
    return n


def _open_store(root: Path, model_id: str, embedder: Embedder | None, cfg) -> FeatureStore | None:
    try:
        return FeatureStore.open_existing(root, model_id)
    except FileNotFoundError:
        if embedder is not None:
            return FeatureStore(root, model_id, embedder.dim, index_kind=cfg.index, hnsw_m=cfg.hnsw_m)
        return None


@dataclass
class ImportResult:
    """Counts of one import of a trainer's embeddings into a feature store."""

    model_id: str = ""
    read: int = 0
    changed: int = 0  # new ids, or vectors that moved: what the incremental ann miner re-mines around
    unchanged: int = 0
    unknown: int = 0  # ids that are not decoded images of this workspace (quarantined)
    store_total: int = 0


def import_embeddings(ws: Workspace, path: str | Path, *, model_id: str, atol: float = 1e-6) -> ImportResult:
    """Import a trainer's (id, vector) Parquet (a checkpoint's image embeddings) into `features/<model_id>/`.

    Mining "with the model being trained" (the spec mines hard negatives after each epoch with the current model):
    export the checkpoint's vectors, import them under one model id, and `visprep mine --model <model_id>` mines
    from them. Only vectors that are new or moved by more than `atol` are appended (the store keeps the newest
    vector of an id), so the incremental ann miner re-mines only the anchors whose neighbourhood changed. Ids that
    are not decoded images of this workspace are quarantined (stage `embed-import`, reason `unknown_image`).

    Raises:
        FileNotFoundError / ValueError: as `visprep.evaluate.embeddings.read_embeddings` (no file, bad columns,
            non-finite values, duplicate ids); a store of `model_id` with another dimension.
    """
    from visprep.embed.registry import l2_normalize
    from visprep.evaluate.embeddings import read_embeddings

    res = ImportResult(model_id=model_id)
    if not model_id or not isinstance(model_id, str):
        raise ValueError(f"import_embeddings needs a model id, got {model_id!r}")
    with ws.run("embed-import", {"model_id": model_id, "path": str(path), "atol": atol}) as run:
        ids, vecs = read_embeddings(path)
        res.read = len(ids)
        images = all_images(ws, ["image_id", "status"])  # a trainer embeds synth's views too
        known = set(images.filter(pc.equal(images["status"], "ok")).column("image_id").to_pylist())
        keep = np.array([i in known for i in ids], bool)
        unknown = [QuarantineRecord(reason="unknown_image", detail=f"{path}: id {i!r} is not a decoded image of "
                                    "this workspace", record_id=i, field="image_id", value=i)
                   for i, k in zip(ids, keep.tolist()) if not k]
        res.unknown = len(unknown)
        ids = [i for i, k in zip(ids, keep.tolist()) if k]
        vecs = l2_normalize(vecs[keep])
        root = features_root(ws)
        try:
            store = FeatureStore.open_existing(root, model_id)
        except FileNotFoundError:
            store = FeatureStore(root, model_id, vecs.shape[1] if vecs.ndim == 2 and len(vecs) else 0)
        if vecs.ndim == 2 and len(vecs) and vecs.shape[1] != store.dim:
            raise ValueError(f"{path}: vectors have {vecs.shape[1]} dimensions; the feature store of {model_id!r} "
                             f"holds {store.dim}")
        if ids:
            old, found = store.get(ids)
            moved = ~found | (np.abs(old - vecs).max(axis=1) > atol)
            res.changed, res.unchanged = int(moved.sum()), int((~moved).sum())
            if moved.any():
                store.append([i for i, m in zip(ids, moved.tolist()) if m], vecs[moved], update_index=False,
                             writer="embed-import")
                store.index()
        ws.quarantine(unknown, stage="embed-import", run_id=run.run_id, key=model_id)
        res.store_total = len(store)
        run.inputs = {"file": str(path)}
        run.counts = {"read": res.read, "changed": res.changed, "unchanged": res.unchanged, "unknown": res.unknown,
                      "store_total": res.store_total}
    return res
