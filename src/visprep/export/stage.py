"""The export stage: preprocessed images with metadata and positives into WebDataset shards, per split.

A split's samples are its products' usable images (meta `source` catalog or synthetic), then the user photos the
user-photo mix paired with its products (`tables/user_pairs`, meta `source` "user"): each is a sample of its own,
labelled with the product it was matched to, whose positive is that product's catalog photo (kind user_photo), and
that catalog photo lists the user photo among its positives, as a same_product pair lists both ways.

A sample whose image cannot be exported (its bytes are missing from the store, it does not decode, or preprocessing
fails) is left out of the shards and quarantined (stage `export`, `record_id` and `value` the image id, reason
`missing_bytes`, `preprocess_failed` or the decoder's reason such as `truncated`); each export replaces the stage's
quarantine part, so a rerun lists the current failures once."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import pyarrow.compute as pc

from visprep.config import PreprocessConfig, VisprepConfig, section_params
from visprep.engines import Engine, get_engine, map_parts, workspace_location
from visprep.export.manifest import ShardManifest, ShardRecord
from visprep.export.shards import (
    PlannedShard,
    ShardSample,
    StagedSample,
    stage_samples,
    staging_dir,
    write_shards,
    write_staged_shard,
    write_staged_shards,
)
from visprep.images.decode import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError
from visprep.images.preprocess import PreprocessProfile, encode_jpeg, get_profile, preprocess_uint8
from visprep.images.sniff import extension_for
from visprep.images.stage import decode_workers
from visprep.quality.mix import KIND, export_user_pairs
from visprep.views.catalog import all_latest_urls, all_products
from visprep.views.images import usable_images
from visprep.workspace import QuarantineRecord, Workspace, image_file

_META = ("title", "category", "top_category", "brand", "color", "material", "size", "price", "seller")


def resolve_profile(cfg: PreprocessConfig) -> PreprocessProfile:
    """Return the configured preprocessing profile with its overrides applied."""
    profile = get_profile(cfg.profile)
    overrides = {k: v for k, v in (("size", cfg.size), ("mean", cfg.mean), ("std", cfg.std)) if v is not None}
    return replace(profile, **overrides) if overrides else profile


def sample_key(product_id: str, image_id: str) -> str:
    """A WebDataset key unique per (product, image): no dots or slashes whatever the SKU contains."""
    return f"{hashlib.sha1(product_id.encode()).hexdigest()[:16]}_{image_id[:24]}"


@dataclass(frozen=True)
class PreprocessFailure:
    """Why one image was not exported: a quarantine reason and the error that said so."""

    reason: str  # "missing_bytes", an `ImageDecodeError.reason`, or "preprocess_failed"
    detail: str


def preprocess_batch(items: Sequence[tuple[str, PreprocessProfile, int]], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> list[bytes | PreprocessFailure]:
    """Preprocess `(path, profile, quality)` items to JPEG bytes; a failure becomes a `PreprocessFailure`."""
    out: list[bytes | PreprocessFailure] = []
    for path, profile, quality in items:
        try:
            with open(image_file(path), "rb") as fh:
                data = fh.read()
        except OSError as exc:
            out.append(PreprocessFailure("missing_bytes", f"{path}: {type(exc).__name__}: {exc.strerror or exc}"))
            continue
        try:
            pixels = preprocess_uint8(data, profile, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
            out.append(encode_jpeg(pixels, quality=quality))
        except ImageDecodeError as exc:
            out.append(PreprocessFailure(exc.reason, f"{path}: {exc}"))
        except (OSError, ValueError) as exc:
            out.append(PreprocessFailure("preprocess_failed", f"{path}: {type(exc).__name__}: {exc}"))
    return out


EXPORT_BATCH = 64
"""Images per preprocessing task."""


def export_part(seq: int, batch: Sequence[tuple[str, str, dict, list[dict]]], *, root: str, split: str,
                profile: PreprocessProfile, quality: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                preprocess: Callable[..., list[bytes | PreprocessFailure]] = preprocess_batch) -> dict[str, list]:
    """Preprocess batch `seq` of split `split`'s `(path, key, meta, positives)` samples and stage their encoded
    bytes as segment `seq` in the workspace at `root` (`visprep.export.shards.stage_samples`), from whichever
    process or node runs it; return where each sample lies and the failures, never the JPEG bytes.

    Returns:
        {"staged": [StagedSample, ...] of the samples that preprocessed, "failures": [(position in the batch,
        reason, detail), ...] of the others}.
    """
    outs = preprocess([(path, profile, quality) for path, _, _, _ in batch], max_pixels=max_pixels,
                      max_decoded_bytes=max_decoded_bytes)
    samples, failures = [], []
    for i, ((_, key, meta, pos), out) in enumerate(zip(batch, outs, strict=True)):
        if isinstance(out, PreprocessFailure):
            failures.append((i, out.reason, out.detail))
        else:
            samples.append(ShardSample(key=key, jpg=out, meta=meta, positives=pos))
    return {"staged": stage_samples(samples, Workspace(root).shards_dir / split, seq), "failures": failures}


def write_shard_job(jobs: Sequence[tuple[PlannedShard, bool]], *, root: str, split: str) -> ShardRecord:
    """Write the one planned shard of `jobs` from its staged samples in the workspace at `root`; its record."""
    ((shard, compare_existing),) = jobs
    return write_staged_shard(Workspace(root).shards_dir / split, split, shard, compare_existing)


def _export_split_on_workers(ws: Workspace, engine: Engine, split: str, chosen: list[dict], paths: list[str],
                             described: Callable[[dict, str], tuple[str, dict, list[dict]]],
                             failed: Callable[[dict, str, str, str], None], cfg: VisprepConfig,
                             profile: PreprocessProfile, workers: int, progress: Callable[[int, int], None] | None,
                             total: int) -> ShardManifest:
    """Export one split with the preprocessing and the shard files written by the engine's workers: they stage
    each batch's samples, this process plans the shards from their sizes, then one task per shard writes it; only
    sizes, offsets and failures come back here. Same shards, manifest and index as `write_shards`."""
    out_dir = ws.shards_dir / split
    shutil.rmtree(staging_dir(out_dir), ignore_errors=True)  # a killed export's segments: restaged below
    items = [(path, *described(r, split)) for r, path in zip(chosen, paths, strict=True)]
    stage = partial(export_part, root=workspace_location(ws), split=split, profile=profile,
                    quality=cfg.preprocess.jpeg_quality, max_pixels=cfg.inspect.max_pixels,
                    max_decoded_bytes=cfg.inspect.max_decoded_bytes, preprocess=preprocess_batch)
    staged: list[StagedSample] = []
    done = 0
    for batch, summary in map_parts(engine, stage, items, batch_size=EXPORT_BATCH, workers=workers):
        for i, reason, detail in summary["failures"]:
            failed(chosen[done + i], split, reason, detail)
        staged.extend(summary["staged"])
        done += len(batch)
        if progress:
            progress(len(batch), total)

    def write(jobs: list[tuple[PlannedShard, bool]]) -> Iterator[ShardRecord]:
        for _, record in engine.map_batches(partial(write_shard_job, root=workspace_location(ws), split=split), jobs,
                                            batch_size=1, workers=workers):
            yield record

    return write_staged_shards(staged, out_dir, split=split, max_count=cfg.export.max_count,
                               max_bytes=cfg.export.max_bytes, write=write)


def shards_indexed(ws: Workspace) -> bool:
    """Whether every split folder under `shards/` holds a complete manifest with a sample index (shards written
    before the index existed are rewritten by the next run)."""
    from visprep.export.manifest import read_manifest

    if not ws.shards_dir.exists():
        return False
    try:
        manifests = [read_manifest(d) for d in ws.shards_dir.iterdir() if (d / "manifest.json").exists()]
    except (OSError, ValueError):
        return False
    return all(m.complete and m.sample_index and (ws.shards_dir / m.split / m.sample_index).exists()
               for m in manifests)


def export_stage(ws: Workspace, *, progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Write `shards/<split>/` with a manifest for every split; return per-split counts."""
    cfg = ws.config
    profile = resolve_profile(cfg.preprocess)
    imgs = usable_images(ws)
    products = {r["product_id"]: r for r in all_products(ws).to_pylist()}
    latest = all_latest_urls(ws)
    ok = latest.filter(pc.equal(latest.column("status"), "ok"))
    fmt = dict(zip(ok.column("image_id").to_pylist(), ok.column("format").to_pylist()))
    pairs = ws.read_table("pairs")
    sp = pairs.filter(pc.equal(pairs.column("kind"), "same_product")).to_pylist()
    # The title positive as the pairs stage kept and weighted it (pairs.title_*): none where it refused the title.
    title_pos = {r["anchor_product_id"]: {"text": r["positive_text"], "kind": "image_title", "weight": r["weight"]}
                 for r in pairs.filter(pc.equal(pairs.column("kind"), "image_title")).to_pylist()}
    # Keyed by (product, image): one photo listed by two products is two samples, each with its own product's pairs.
    positives: dict[tuple[str, str], list[dict]] = {}
    for r in sp:
        p = r["anchor_product_id"]
        positives.setdefault((p, r["anchor_id"]), []).append({"image_id": r["positive_id"], "kind": r["kind"],
                                                              "weight": r["weight"]})
        positives.setdefault((p, r["positive_id"]), []).append({"image_id": r["anchor_id"], "kind": r["kind"],
                                                                "weight": r["weight"]})
    rows = imgs.to_pylist()
    split_of = {r["product_id"]: r["split"] for r in rows}
    user_rows: dict[str, list[dict]] = {}
    catalog_keys = {(r["product_id"], r["image_id"]) for r in rows}
    for r in export_user_pairs(ws, split_of).to_pylist():
        if (r["anchor_product_id"], r["anchor_id"]) in catalog_keys:
            continue  # the "user photo" is one of the product's own images (a stale mix): it is already a sample
        positives.setdefault((r["anchor_product_id"], r["positive_id"]), []).append(
            {"image_id": r["anchor_id"], "kind": KIND, "weight": r["weight"]})
        user_rows.setdefault(r["split"], []).append({
            "product_id": r["anchor_product_id"], "image_id": r["anchor_id"], "split": r["split"], "source": "user",
            "position": None, "ext": "jpg",  # the queries stage stores the cleaned photos as JPEG
            "positives": [{"image_id": r["positive_id"], "kind": KIND, "weight": r["weight"]}]})
    n_user = sum(len(v) for v in user_rows.values())
    splits = cfg.export.splits or sorted({r["split"] for r in rows})
    summary: dict[str, dict] = {}
    with ws.run("export", section_params(cfg, "preprocess", "export")) as run:
        failures: list[QuarantineRecord] = []
        # The inspect limits (pixels, decoded bytes, memory budget) bound export's decodes too.
        plan = decode_workers(cfg.export.workers, cfg.inspect, setting="export.workers")
        run.metrics["workers"] = plan.to_dict()
        if plan.limited:
            run.notes.append(f"export.workers: {plan.note()}")
        preprocess = partial(preprocess_batch, max_pixels=cfg.inspect.max_pixels,
                             max_decoded_bytes=cfg.inspect.max_decoded_bytes)
        if progress:
            progress(0, len(rows) + n_user)
        engine = get_engine(cfg)
        run.metrics["engine"] = engine.name
        def described(r: dict, split: str) -> tuple[str, dict, list[dict]]:
            """A sample's key, metadata and positives (everything but its JPEG)."""
            p = products[r["product_id"]]
            meta = {"product_id": r["product_id"], "image_id": r["image_id"], "split": split, "source": r["source"],
                    "position": r["position"], "attributes": json.loads(p["attributes"] or "{}"),
                    **{k: p[k] for k in _META}}
            own = r["positives"] if r["source"] == "user" else positives.get((r["product_id"], r["image_id"]), [])
            pos = own + ([title_pos[r["product_id"]]] if r["product_id"] in title_pos else [])
            return sample_key(r["product_id"], r["image_id"]), meta, pos

        def failed(r: dict, split: str, reason: str, detail: str) -> None:
            failures.append(QuarantineRecord(
                reason=reason, record_id=r["image_id"], field="image_id", value=r["image_id"],
                detail=f"{r['source']} image of product {r['product_id']} (split {split}): {detail}"))

        for split in splits:
            chosen = [r for r in rows if r["split"] == split] + user_rows.get(split, [])
            paths = [ws.store.ref(r["image_id"], r.get("ext") or extension_for(fmt[r["image_id"]]))
                     for r in chosen]
            # The JPEGs stay on the workers, which stage them and write the shards, where the workers share the
            # workspace's folder. On object storage each node has a cache of its own: the segments one task stages
            # are not another's to read, so there the bytes come back and this process writes the shards.
            if engine.remote and ws.is_folder:
                manifest = _export_split_on_workers(ws, engine, split, chosen, paths, described, failed, cfg,
                                                    profile, plan.used, progress, len(rows) + n_user)
            else:
                def samples(chosen: list[dict] = chosen, split: str = split, paths: list[str] = paths
                            ) -> Iterator[ShardSample]:
                    items = [(path, profile, cfg.preprocess.jpeg_quality) for path in paths]
                    done = 0
                    for batch, outs in engine.map_batches(preprocess, items, batch_size=EXPORT_BATCH,
                                                          workers=plan.used):
                        for out in outs:
                            r = chosen[done]
                            done += 1
                            if isinstance(out, PreprocessFailure):
                                failed(r, split, out.reason, out.detail)
                                continue
                            key, meta, pos = described(r, split)
                            yield ShardSample(key=key, jpg=out, meta=meta, positives=pos)
                        if progress:
                            progress(len(batch), len(rows) + n_user)

                manifest = write_shards(samples(), ws.shards_dir / split, split=split,
                                        max_count=cfg.export.max_count, max_bytes=cfg.export.max_bytes)
            summary[split] = {"samples": manifest.total_samples, "shards": len(manifest.shards),
                              "bytes": manifest.total_bytes}
        # One part for the stage, replaced by every export: the quarantine lists the current failures once.
        quarantined = ws.quarantine(failures, stage="export", run_id=run.run_id, key="current")
        run.counts = {"images_in": len(rows), "user_photos_in": n_user, "failed": len(failures),
                      "quarantined": quarantined,
                      **{f"samples_{s}": v["samples"] for s, v in summary.items()},
                      **{f"shards_{s}": v["shards"] for s, v in summary.items()}}
        if failures:
            by_reason = Counter(f.reason for f in failures)
            run.metrics["failed_by_reason"] = dict(sorted(by_reason.items()))
            run.notes.append(f"{len(failures)} image(s) left out of the shards, quarantined (stage export): "
                             + ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items())))
    return summary
