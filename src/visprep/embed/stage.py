"""The embed stage: embed every decoded image that has no current vector in the model's feature store.

Incremental by construction: the store is keyed by (image id, content hash) under a folder per model id, so a
run embeds only new images (cold-start products get vectors at index time, no retraining), a new model id starts a
new store, and a run with nothing new loads no model and finishes in the time it takes to read two id columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.embed.registry import Embedder, get_embedder, model_id_of
from visprep.embed.store import FeatureStore
from visprep.engines.local import batched
from visprep.images.sniff import extension_for
from visprep.workspace import QuarantineRecord, Workspace


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


def features_root(ws: Workspace) -> Path:
    """The workspace's `features/` folder."""
    return ws.root / "features"


def embed_stage(ws: Workspace, *, embedder: Embedder | None = None,
                progress: Callable[[int, int], None] | None = None) -> EmbedResult:
    """Embed the decoded images without a current vector; append them to the store and its index.

    Args:
        ws: the workspace (reads `images`; writes `features/<model_id>/`, quarantine, a run record).
        embedder: use this one instead of building `ws.config.embed.model` (tests, notebooks).
        progress: called with (images advanced, total to embed).
    """
    cfg = ws.config.embed
    res = EmbedResult()
    options = dict(cfg.options)
    if cfg.threads:
        options.setdefault("threads", cfg.threads)
    res.model_id = embedder.model_id if embedder is not None else model_id_of(cfg.model, **options)
    params = {**section_params(ws.config, "embed"), "model_id": res.model_id}
    with ws.run("embed", params) as run:
        run.inputs = {"images": ws.table_fingerprint("images")}
        images = ws.read_table("images", ["image_id", "status", "format"])
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
        if todo:
            if embedder is None:
                embedder = get_embedder(cfg.model, **options)
            if store is None:
                store = FeatureStore(root, embedder.model_id, embedder.dim, index_kind=cfg.index, hnsw_m=cfg.hnsw_m)
            for chunk in batched(todo, cfg.checkpoint_every):
                done_ids: list[str] = []
                done_vecs: list[np.ndarray] = []
                for batch in batched(chunk, cfg.batch_size):
                    data, batch_ids = [], []
                    for image_id, fmt in batch:
                        try:
                            data.append(ws.store.get(image_id, extension_for(fmt)))
                            batch_ids.append(image_id)
                        except (OSError, ValueError) as exc:
                            failures.append(_failure(image_id, "missing_bytes", exc))
                    vecs, good, errors = embedder.embed_partial(data)
                    for err in errors:
                        i = int(err.split(":", 1)[0])
                        failures.append(QuarantineRecord(reason="embed_decode", detail=err.split(":", 1)[1].strip(),
                                                         record_id=batch_ids[i], field="image_id",
                                                         value=batch_ids[i]))
                    done_ids.extend(i for i, g in zip(batch_ids, good.tolist()) if g)
                    done_vecs.append(vecs)
                    if progress:
                        progress(len(batch), len(todo))
                if done_ids:
                    store.append(done_ids, np.concatenate(done_vecs), update_index=False)
                    res.embedded += len(done_ids)
            store.index()  # one index update per run
        res.failed = len(failures)
        for f in failures:
            res.by_reason[f.reason] = res.by_reason.get(f.reason, 0) + 1
        ws.quarantine(failures, stage="embed", run_id=run.run_id, key=res.model_id)
        res.store_total = len(store) if store is not None else 0
        run.counts = {"images_in": res.images, "embedded": res.embedded, "skipped": res.skipped,
                      "failed": res.failed, "store_total": res.store_total}
    return res


def _open_store(root: Path, model_id: str, embedder: Embedder | None, cfg) -> FeatureStore | None:
    try:
        return FeatureStore.open_existing(root, model_id)
    except FileNotFoundError:
        if embedder is not None:
            return FeatureStore(root, model_id, embedder.dim, index_kind=cfg.index, hnsw_m=cfg.hnsw_m)
        return None


def _failure(image_id: str, reason: str, exc: Exception) -> QuarantineRecord:
    return QuarantineRecord(reason=reason, detail=f"{type(exc).__name__}: {exc}", record_id=image_id,
                            field="image_id", value=image_id)
