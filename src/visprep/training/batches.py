"""Training batches: the batch plan joined with what the other stages wrote, in the order a trainer consumes it.

One `TrainingSource` per split holds the plan (the `batch_plan` table's epochs, and any later epoch planned again
with the same planner and seed, identically), the mined negatives, the event-linked products, each sample's source
and the payload (decoded shard JPEGs read by offset, or feature-store vectors). `iter_batches` yields one dict per
P x K batch of an epoch::

    epoch, batch                      ints
    image_id, product_id, group_id    (N,) object, N = P * K, plan order (class-major)
    labels                            (N,) int64: the class index 0..P-1 within the batch (same product = same label)
    weight                            (N,) float32: the plan's popularity weight
    repeat                            (N,) bool: the slot repeats an item beyond the epoch's covering visit
    source                            (N,) object: catalog | synthetic | user
    images | features                 (N, H, W, 3) uint8, (N, 3, H, W) float32, or (N, D) float32
    negatives                         dict: image_id, product_id, kind (N, m) object; score (N, m) float32 (NaN
                                      when the miner has none); rank (N, m) int32; mask (N, m) bool; images | features
    event_positives                   dict (when asked for): product_id, image_id, kind (N, e) object; raw_weight,
                                      debiased_weight (N, e) float32; mask (N, e) bool; images | features

A negative is never of the anchor's product or product group, whatever the table says (it may be stale); a slot
with fewer candidates has `mask` False in its padding. Draws are seeded by (seed, epoch, batch), so a batch is the
same whichever worker or rank makes it, and resuming at batch b (`start_batch=b`) is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.images.preprocess import PreprocessProfile, normalize
from visprep.training.links import LinkTable, draw, event_links, negative_links, not_same_group
from visprep.views.items import MiningItems
from visprep.workspace import Workspace


class PixelPayload:
    """Decoded shard JPEGs of one split, read by offset through the sample index (`ShardIndex`)."""

    kind = "images"

    def __init__(self, split_dir: Path | str) -> None:
        from visprep.export.sample_index import ShardIndex

        self.index = ShardIndex(split_dir)

    def rows(self, product_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """(n,) payload rows of (product, image) samples; -1 where the shards have none."""
        return self.index.rows_of(product_ids.tolist(), image_ids.tolist())

    def load(self, rows: np.ndarray, allocate: Allocator | None = None,
             pool: DecodeThreads | None = None) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB of payload rows, decoded straight into one array from `allocate` (default
        `np.empty`): no per-image arrays to stack (shards of one split share the profile's size). With `pool`, its
        threads decode slices of the batch side by side (simplejpeg releases the GIL)."""
        import simplejpeg

        blobs = [self.index.read(int(r)) for r in rows]
        h, w, _, _ = simplejpeg.decode_jpeg_header(blobs[0])
        out = (allocate or _empty)((len(blobs), h, w, 3), np.uint8)

        def decode(span: range) -> None:
            for i in span:
                try:
                    simplejpeg.decode_jpeg(blobs[i], colorspace="RGB", buffer=out[i])
                except ValueError as exc:  # another size than the first image's (or bytes that do not decode)
                    image = simplejpeg.decode_jpeg(blobs[i], colorspace="RGB")
                    if image.shape != out.shape[1:]:
                        raise ValueError(f"sample {self.index.keys[int(rows[i])]!r} is {image.shape[1]}x"
                                         f"{image.shape[0]}, the batch's first is {w}x{h}: the split's shards mix "
                                         "preprocess sizes; rerun `visprep export --force`") from exc
                    out[i] = image

        if pool is None:
            decode(range(len(blobs)))
        else:
            pool.run_slices(decode, len(blobs))
        return out


@dataclass(frozen=True)
class DecodeThreads:
    """A thread pool and its size: a batch is cut into `size` slices decoded side by side."""

    executor: ThreadPoolExecutor
    size: int

    def run_slices(self, fn: Callable[[range], None], n: int) -> None:
        """Call `fn` on `size` consecutive slices of range(n) in the pool; re-raise the first error."""
        step = -(-n // self.size)
        list(self.executor.map(fn, [range(s, min(s + step, n)) for s in range(0, n, step)]))


Allocator = Callable[[tuple[int, ...], Any], np.ndarray]
"""(shape, dtype) -> a new writable array: where batch arrays are made (shared memory in DataLoader workers)."""


def _empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.empty(shape, dtype)


class SharedAllocator:
    """Makes batch arrays inside torch shared-memory tensors, so a DataLoader worker hands them to the trainer
    without the copy into shared memory it would otherwise make; `as_tensors` finds the tensor of each array."""

    def __init__(self) -> None:
        self._tensors: dict[int, Any] = {}

    def __call__(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.empty(0, dtype)).new_empty(shape).share_memory_()
        arr = t.numpy()
        self._tensors[arr.__array_interface__["data"][0]] = t
        return arr

    def take(self, arr: np.ndarray) -> Any:
        """The shared tensor `arr` was made in (and forget it), or None."""
        t = self._tensors.pop(arr.__array_interface__["data"][0], None)
        return t if t is not None and tuple(t.shape) == arr.shape else None


class FeaturePayload:
    """Feature-store vectors of one model, held as one dense matrix (what a head on frozen features trains on)."""

    kind = "features"

    def __init__(self, ids: list[str], vectors: np.ndarray, model_id: str) -> None:
        self.model_id = model_id
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self._row = {i: r for r, i in enumerate(ids)}

    @classmethod
    def from_store(cls, ws: Workspace, model_id: str, image_ids: list[str]) -> FeaturePayload:
        """The vectors of `image_ids` (those the store has) from `features/<model_id>/`."""
        from visprep.embed.store import FeatureStore
        from visprep.views.features import features_root

        store = FeatureStore.open_existing(features_root(ws), model_id)
        uniq = sorted(set(image_ids))
        vecs, found = store.get(uniq)
        return cls([i for i, f in zip(uniq, found.tolist()) if f], vecs[found], model_id)

    def rows(self, product_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """(n,) payload rows of images; -1 where the store has no vector."""
        get = self._row.get
        return np.fromiter((get(i, -1) for i in image_ids.tolist()), np.int64, len(image_ids))

    def load(self, rows: np.ndarray) -> np.ndarray:
        """(n, D) float32 vectors of payload rows."""
        return self.vectors[rows]


Payload = PixelPayload | FeaturePayload


@dataclass
class TrainingSource:
    """Everything one split's batches are made of; see the module docstring. Build with `from_workspace`.

    Attributes:
        split: the split.
        items: the planner's items (all splits; `planned` selects this split's rows).
        planned: (rows, weight, category codes) of this split, as the sample stage plans them.
        sampling: the sampling config (P, K, temperature, seed).
        stored: epoch -> its `batch_plan` rows, for the epochs the sample stage wrote.
        group_of: product -> group (the negative rule's groups).
        source_of: (product, image) -> catalog | synthetic | user.
        negatives: mined negatives by (anchor product, anchor image); None: no negatives returned.
        events: event-linked products by product; None: no event positives returned.
        payload: the images or vectors.
        images_of: product -> its images in the split (an event positive shows one of them, drawn).
        negatives_per_anchor, event_positives_per_anchor: m and e.
        seed: seed of the draws and of augmentation.
        augment: a `KorniaPolicy`, or None.
        profile: the preprocess profile (float layout).
        layout: "uint8" or "float" (pixels only).
        allocate: where the anchors' image array is made (`SharedAllocator` in DataLoader workers).
        pool: decoding threads (`iter_batches(threads=...)`).
    """

    split: str
    items: MiningItems
    planned: tuple[np.ndarray, np.ndarray, np.ndarray]
    sampling: Any
    stored: dict[int, pa.Table]
    group_of: Mapping[str, str]
    source_of: Mapping[tuple[str, str], str]
    negatives: LinkTable | None
    events: LinkTable | None
    payload: Payload
    images_of: Mapping[str, list[str]]
    negatives_per_anchor: int = 2
    event_positives_per_anchor: int = 0
    seed: int = 0
    augment: Any = None
    profile: PreprocessProfile | None = None
    layout: str = "uint8"
    allocate: Allocator | None = None
    pool: DecodeThreads | None = None

    @classmethod
    def from_workspace(cls, ws: Workspace, *, split: str | None = None, payload: str | Payload | None = None,
                       features_model: str | None = None, negatives: pa.Table | None = None,
                       negatives_per_anchor: int | None = None, negative_kinds: list[str] | None = None,
                       event_positives_per_anchor: int | None = None, interactions: pa.Table | None = None,
                       items: MiningItems | None = None, augment: bool | None = None, layout: str | None = None,
                       seed: int | None = None, use_stored_plan: bool = True) -> TrainingSource:
        """Join the workspace's tables for one split; keyword arguments override the `[training]` config.

        Args:
            negatives: a `negatives`-schema table to draw from instead of the workspace's (experiments).
            interactions: an `interaction_pairs`-schema table instead of the workspace's.
            payload: "pixels", "features", or a ready `PixelPayload` / `FeaturePayload` (shared by several sources).
            items: planner items instead of `sampling_items(ws)` (experiments: groups ignored, no user photos).
            use_stored_plan: take the stored epochs from `batch_plan` (False: plan every epoch here; with `items`
                given the stored plan does not apply and is never used).

        Raises:
            ValueError: the split is the evaluation split, has no items, the stored plan is stale, or the plan's
                images are missing from the payload (names the first one and the fix).
        """
        from visprep.export.stage import resolve_profile
        from visprep.mining.stage import ann_model_id
        from visprep.sampling.stage import sampling_items, split_rows
        from visprep.views.images import usable_images
        from visprep.views.items import product_group_map

        cfg = ws.config.training
        split = split or cfg.split
        if split == ws.config.labels.eval_split:
            raise ValueError(f"split {split!r} is the evaluation split (labels.eval_split): it never feeds training")
        own_items = items is None
        if items is None:
            items, _ = sampling_items(ws)
        planned = split_rows(ws, items, split)
        if len(planned[0]) == 0:
            raise ValueError(f"split {split!r} has no usable images; run `visprep run` first")
        stored: dict[int, pa.Table] = {}
        if use_stored_plan and own_items and ws.has_table("batch_plan"):
            from visprep.pipeline import is_up_to_date

            if not is_up_to_date(ws, "sample"):
                raise ValueError(f"{ws.table_path('batch_plan')} is stale: the sampling config or a table it was "
                                 "planned from changed since; run `visprep run` (or `visprep sample`) first")
            plan = ws.read_table("batch_plan")
            plan = plan.filter(pc.equal(plan.column("split"), split))
            for e in pc.unique(plan.column("epoch")).to_pylist():
                stored[int(e)] = plan.filter(pc.equal(plan.column("epoch"), e))
        rows = planned[0]
        split_products = set(items.product_id[rows].tolist())
        group_of = {p: g for p, g in zip(items.product_id.tolist(), items.group_id.tolist())}
        ui = usable_images(ws)
        source_of = {(p, i): s for p, i, s in zip(*(ui.column(c).to_pylist()
                                                     for c in ("product_id", "image_id", "source")))}
        images_of: dict[str, list[str]] = {}
        for p, i in zip(items.product_id[rows].tolist(), items.image_id[rows].tolist()):
            images_of.setdefault(p, []).append(i)
        m = cfg.negatives_per_anchor if negatives_per_anchor is None else negatives_per_anchor
        e = cfg.event_positives_per_anchor if event_positives_per_anchor is None else event_positives_per_anchor
        neg = None
        if m > 0:
            table = negatives if negatives is not None else ws.read_table("negatives")
            neg = negative_links(table, split=split, kinds=negative_kinds or cfg.negative_kinds)
        events = None
        if e > 0:
            table = interactions if interactions is not None else ws.read_table("interaction_pairs")
            events = event_links(table, allowed_products=split_products)
        kind = payload if isinstance(payload, str) else (payload.kind if payload is not None else cfg.payload)
        kind = {"images": "pixels"}.get(kind, kind)
        if payload is not None and not isinstance(payload, str):
            pay = payload
        elif kind == "pixels":
            pay: Payload = PixelPayload(ws.shards_dir / split)
        elif kind == "features":
            model = features_model or cfg.features_model or ann_model_id(ws)
            wanted = items.image_id[rows].tolist()
            if neg is not None:
                wanted += neg.columns["image_id"].tolist()
            pay = FeaturePayload.from_store(ws, model, wanted)
        else:
            raise ValueError(f"unknown payload {kind!r}; valid: pixels, features")
        policy = None
        if (cfg.augment == "policy") if augment is None else augment:
            if kind != "pixels":
                raise ValueError("augmentation applies to pixels, not to feature vectors")
            from visprep.augment.kornia_policy import KorniaPolicy
            from visprep.augment.policy import resolve_policy

            acfg = ws.config.augment
            policy = KorniaPolicy(resolve_policy(acfg.policy, acfg.params, size=acfg.image_size))
        src = cls(split=split, items=items, planned=planned, sampling=ws.config.sampling, stored=stored,
                  group_of={**product_group_map(ws), **group_of}, source_of=source_of, negatives=neg,
                  events=events, payload=pay, images_of=images_of, negatives_per_anchor=m,
                  event_positives_per_anchor=e, seed=cfg.seed if seed is None else seed, augment=policy,
                  profile=resolve_profile(ws.config.preprocess), layout=layout or cfg.layout)
        src.check_payload()
        return src

    def with_options(self, **changes: Any) -> TrainingSource:
        """A copy with some attributes replaced (e.g. `negatives_per_anchor=0`)."""
        return replace(self, **changes)

    def check_payload(self) -> None:
        """Raise ValueError naming the first planned image the payload lacks (export or embed is behind)."""
        rows = self.planned[0]
        got = self.payload.rows(self.items.product_id[rows], self.items.image_id[rows])
        missing = np.flatnonzero(got < 0)
        if len(missing):
            r = rows[missing[0]]
            fix = "run `visprep export`" if self.payload.kind == "images" else "run `visprep embed`"
            raise ValueError(f"{len(missing)} of {len(rows)} planned images of split {self.split!r} are not in the "
                             f"{self.payload.kind} payload, e.g. product {self.items.product_id[r]!r} image "
                             f"{self.items.image_id[r]!r}: {fix}")

    def epoch_plan(self, epoch: int) -> pa.Table:
        """The `batch_plan` rows of `epoch`: stored, else planned with the sample stage's planner and seed."""
        from visprep.sampling.stage import plan_table

        if epoch in self.stored:
            return self.stored[epoch]
        return plan_table(self.items, self.split, epoch, self.planned, self.sampling)

    def batch_size(self) -> int:
        """Slots per batch, P x K, with the planner's own P (fewer than `sampling.p` on a split with fewer product
        groups); a stored plan has it too, since a plan planned under other settings is refused as stale."""
        from visprep.sampling.stage import classes_per_batch

        return classes_per_batch(self.items, self.planned[0], self.sampling) * self.sampling.k

    def num_batches(self, epoch: int) -> int:
        """Batches in `epoch`."""
        return self.epoch_plan(epoch).num_rows // self.batch_size()

    def iter_batches(self, epoch: int, *, start_batch: int = 0, reader: int = 0, readers: int = 1,
                     threads: int = 0, prefetch: int = 2) -> Iterator[dict[str, Any]]:
        """Yield the batches `start_batch`, ... of `epoch` that fall to `reader` of `readers` (batch b goes to
        reader b mod readers), as numpy dicts (module docstring).

        Args:
            threads: > 0: decode with that many threads in this process, `prefetch` batches ahead of the consumer
                (no worker processes, so no hand-off of the pixels through shared memory: docs/training.md).
        """
        if not 0 <= reader < readers:
            raise ValueError(f"reader {reader} outside [0, {readers})")
        if threads > 0:
            from visprep.engines.local import prefetch as read_ahead

            with ThreadPoolExecutor(threads, thread_name_prefix="visprep-decode") as executor:
                yield from read_ahead(self.with_options(pool=DecodeThreads(executor, threads)).iter_batches(
                    epoch, start_batch=start_batch, reader=reader, readers=readers), depth=max(1, prefetch))
            return
        plan = self.epoch_plan(epoch)
        n = self.batch_size()
        cols = {c: plan.column(c).to_numpy(zero_copy_only=False) for c in
                ("batch", "class_index", "image_id", "product_id", "group_id", "weight", "repeat")}
        if plan.num_rows % n or (plan.num_rows and cols["batch"][-1] != plan.num_rows // n - 1):
            raise ValueError(f"batch_plan epoch {epoch} of {self.split!r} is not whole P x K batches; rerun "
                             "`visprep sample`")
        for b in range(start_batch, plan.num_rows // n):
            if b % readers == reader:
                yield self.batch(epoch, b, {c: v[b * n : (b + 1) * n] for c, v in cols.items()})

    def batch(self, epoch: int, b: int, slots: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Assemble batch `b` of `epoch` from its plan rows `slots`."""
        rng = np.random.default_rng([self.seed, epoch, b])
        pid = slots["product_id"].astype(object)
        iid = slots["image_id"].astype(object)
        gid = np.array([g if g is not None else p for g, p in zip(slots["group_id"], pid)], dtype=object)
        out: dict[str, Any] = {
            "epoch": epoch, "batch": b, "image_id": iid, "product_id": pid, "group_id": gid,
            "labels": slots["class_index"].astype(np.int64), "weight": slots["weight"].astype(np.float32),
            "repeat": slots["repeat"].astype(bool),
            "source": np.array([self.source_of.get((p, i), "user") for p, i in zip(pid, iid)], dtype=object),
        }
        out[self.payload.kind] = self._load(self.payload.rows(pid, iid), epoch, b, 0)
        if self.negatives is not None:
            out["negatives"] = self._negatives(pid, iid, gid, rng, epoch, b)
        if self.events is not None:
            out["event_positives"] = self._event_positives(pid, rng, epoch, b)
        return out

    def _negatives(self, pid: np.ndarray, iid: np.ndarray, gid: np.ndarray, rng: np.random.Generator,
                   epoch: int, b: int) -> dict[str, np.ndarray]:
        assert self.negatives is not None
        n, m = len(pid), self.negatives_per_anchor
        cols = self.negatives.columns
        pick = np.full((n, m), -1, np.int64)
        for j in range(n):
            cand = self.negatives.candidates((pid[j], iid[j]))
            allowed = not_same_group(pid[j], gid[j], cols["product_id"][cand], self.group_of)
            chosen = draw(cand, allowed, m, rng)
            pick[j, : len(chosen)] = chosen
        mask = pick >= 0
        safe = np.where(mask, pick, 0)
        out = {"mask": mask}
        for name, fill in (("image_id", None), ("product_id", None), ("kind", None)):
            out[name] = np.where(mask, cols[name][safe] if len(cols[name]) else fill, fill).astype(object)
        out["score"] = np.where(mask, cols["score"][safe] if len(cols["score"]) else np.nan, np.nan).astype(
            np.float32)
        out["rank"] = np.where(mask, cols["rank"][safe] if len(cols["rank"]) else -1, -1).astype(np.int32)
        out[self.payload.kind] = self._load_grid(out, epoch, b, 1)
        return out

    def _event_positives(self, pid: np.ndarray, rng: np.random.Generator, epoch: int,
                         b: int) -> dict[str, np.ndarray]:
        assert self.events is not None
        n, e = len(pid), self.event_positives_per_anchor
        cols = self.events.columns
        pick = np.full((n, e), -1, np.int64)
        for j in range(n):
            cand = self.events.candidates(pid[j])
            allowed = np.fromiter((p in self.images_of for p in cols["product_id"][cand]), bool, len(cand))
            chosen = draw(cand, allowed, e, rng)
            pick[j, : len(chosen)] = chosen
        mask = pick >= 0
        safe = np.where(mask, pick, 0)
        out: dict[str, np.ndarray] = {"mask": mask}
        for name in ("product_id", "kind"):
            out[name] = np.where(mask, cols[name][safe] if len(cols[name]) else None, None).astype(object)
        for name in ("raw_weight", "debiased_weight"):
            out[name] = np.where(mask, cols[name][safe] if len(cols[name]) else 0.0, 0.0).astype(np.float32)
        images = np.full((n, e), None, dtype=object)
        for j, k in zip(*np.nonzero(mask)):
            imgs = self.images_of[out["product_id"][j, k]]
            images[j, k] = imgs[int(rng.integers(len(imgs)))]
        out["image_id"] = images
        out[self.payload.kind] = self._load_grid(out, epoch, b, 2)
        return out

    def _load_grid(self, part: dict[str, np.ndarray], epoch: int, b: int, stream: int) -> np.ndarray:
        """Payload of an (N, m) grid of ids; masked or missing cells are zeros and drop out of the mask."""
        mask = part["mask"]
        rows = np.full(mask.shape, -1, np.int64)
        if mask.any():
            rows[mask] = self.payload.rows(part["product_id"][mask], part["image_id"][mask])
        mask &= rows >= 0
        flat = self._load(rows[mask], epoch, b, stream)
        grid = np.zeros((*mask.shape, *flat.shape[1:]) if len(flat) else (*mask.shape, *self._empty_shape()),
                        flat.dtype if len(flat) else self._dtype())
        grid[mask] = flat
        return grid

    def _empty_shape(self) -> tuple[int, ...]:
        if isinstance(self.payload, FeaturePayload):
            return (self.payload.vectors.shape[1],)
        size = self.augment.params.size if self.augment is not None else self.profile.size
        return (3, size, size) if self.layout == "float" else (size, size, 3)

    def _dtype(self) -> Any:
        return np.float32 if isinstance(self.payload, FeaturePayload) or self.layout == "float" else np.uint8

    def _load(self, rows: np.ndarray, epoch: int, b: int, stream: int) -> np.ndarray:
        if isinstance(self.payload, FeaturePayload):
            return self.payload.load(rows) if len(rows) else np.zeros((0, *self._empty_shape()), np.float32)
        if len(rows) == 0:
            return np.zeros((0, *self._empty_shape()), self._dtype())
        if len(np.flatnonzero(rows < 0)):
            raise ValueError(f"batch {b}: {int((rows < 0).sum())} images are not in the shards; rerun export")
        # Only the anchors' array is handed over as is; negatives are copied into their (N, m) grid.
        direct = stream == 0 and self.augment is None and self.layout == "uint8"
        images = self.payload.load(rows, self.allocate if direct else None, self.pool)
        if self.augment is not None:
            return self._augmented(images, epoch, b, stream)
        return normalize(images, self.profile) if self.layout == "float" else images

    def _augmented(self, images: np.ndarray, epoch: int, b: int, stream: int) -> np.ndarray:
        import torch

        seed = int(np.random.SeedSequence([self.seed, epoch, b, stream]).generate_state(1)[0])
        x = self.augment(torch.from_numpy(images).permute(0, 3, 1, 2), seed=seed)  # float 0..1, (N, 3, S, S)
        if self.layout == "uint8":
            return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert self.profile is not None
        mean = torch.tensor(self.profile.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.profile.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).numpy()


try:
    from torch.utils.data import IterableDataset as _IterableDataset
except ImportError:  # pragma: no cover - torch is an optional extra
    _IterableDataset = object  # type: ignore[assignment,misc]


class TrainingBatches(_IterableDataset):  # type: ignore[misc,valid-type]
    """A torch `IterableDataset` of one epoch's P x K batches (use `DataLoader(ds, batch_size=None)`).

    Batch b goes to reader b mod (world_size * num_workers), reader = rank * num_workers + worker; the DataLoader
    collects its workers round-robin, so each rank sees its batches in plan order. Numeric arrays become tensors.

    Args:
        source: the `TrainingSource`.
        epoch: the epoch (`set_epoch` changes it).
        start_batch: resume: the first batch not yet consumed (exact: batches are pure functions of their index).
        rank, world_size: override `torch.distributed`'s.
        threads: decode with this many threads inside each reader (use with `num_workers=0` to keep the pixels
            in the training process: docs/training.md, "Speed").
    """

    def __init__(self, source: TrainingSource, *, epoch: int = 0, start_batch: int = 0, rank: int | None = None,
                 world_size: int | None = None, threads: int = 0) -> None:
        if _IterableDataset is object:
            raise ImportError("TrainingBatches needs torch: pip install 'visprep[torch]'")
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:  # type: ignore[operator]
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        self.source = source
        self.epoch = epoch
        self.start_batch = start_batch
        self._rank, self._world_size = rank, world_size
        self.threads = threads

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Read `epoch` next (from `start_batch`)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.source.num_batches(self.epoch)

    def _reader(self) -> tuple[int, int]:
        from visprep.export.loader import reader_id

        return reader_id(self._rank, self._world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        reader, readers = self._reader()
        source, shared = self.source, None
        if get_worker_info() is not None:  # a worker: images go straight into shared memory
            shared = SharedAllocator()
            source = source.with_options(allocate=shared)
        for batch in source.iter_batches(self.epoch, start_batch=self.start_batch, reader=reader,
                                         readers=readers, threads=self.threads):
            yield as_tensors(batch, shared)


def as_tensors(batch: dict[str, Any], shared: SharedAllocator | None = None) -> dict[str, Any]:
    """The batch with its numeric numpy arrays as torch tensors (object arrays of ids stay numpy); arrays made by
    `shared` become their shared-memory tensors."""
    import torch

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = as_tensors(v, shared)
        elif isinstance(v, np.ndarray) and v.dtype != object:
            t = shared.take(v) if shared is not None else None
            out[k] = t if t is not None else torch.from_numpy(np.ascontiguousarray(v))
        else:
            out[k] = v
    return out

