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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import pyarrow.compute as pc

from visprep.config import PreprocessConfig, section_params
from visprep.engines import get_engine
from visprep.export.shards import ShardSample, write_shards
from visprep.images.decode import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError
from visprep.images.preprocess import PreprocessProfile, encode_jpeg, get_profile, preprocess_uint8
from visprep.images.sniff import extension_for
from visprep.images.stage import decode_workers
from visprep.quality.mix import KIND, export_user_pairs
from visprep.views.catalog import all_latest_urls, all_products
from visprep.views.images import usable_images
from visprep.workspace import QuarantineRecord, Workspace

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
            with open(path, "rb") as fh:
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
        for split in splits:
            chosen = [r for r in rows if r["split"] == split] + user_rows.get(split, [])

            def samples(chosen: list[dict] = chosen, split: str = split) -> Iterator[ShardSample]:
                items = [(str(ws.store.path(r["image_id"], r.get("ext") or extension_for(fmt[r["image_id"]]))),
                          profile, cfg.preprocess.jpeg_quality) for r in chosen]
                done = 0
                for batch, outs in engine.map_batches(preprocess, items, batch_size=64, workers=plan.used):
                    for out in outs:
                        r = chosen[done]
                        done += 1
                        if isinstance(out, PreprocessFailure):
                            failures.append(QuarantineRecord(
                                reason=out.reason, record_id=r["image_id"], field="image_id", value=r["image_id"],
                                detail=f"{r['source']} image of product {r['product_id']} (split {split}): "
                                       f"{out.detail}"))
                            continue
                        p = products[r["product_id"]]
                        meta = {"product_id": r["product_id"], "image_id": r["image_id"], "split": split,
                                "source": r["source"], "position": r["position"],
                                "attributes": json.loads(p["attributes"] or "{}"),
                                **{k: p[k] for k in _META}}
                        own = r["positives"] if r["source"] == "user" else \
                            positives.get((r["product_id"], r["image_id"]), [])
                        pos = own + ([title_pos[r["product_id"]]] if r["product_id"] in title_pos else [])
                        yield ShardSample(key=sample_key(r["product_id"], r["image_id"]), jpg=out, meta=meta,
                                          positives=pos)
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
