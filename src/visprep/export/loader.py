"""Read shards written by `write_shards`: through the webdataset library, or with plain `tarfile` and torch.

Both readers yield the same dict per sample::

    {"key": str, "image": np.ndarray (H, W, 3) uint8 RGB, "jpg": bytes, "meta": dict, "positives": list[dict],
     "shard": str}   # "shard" is the shard file name, e.g. "train-000003.tar"

Images vary in size, so use `DataLoader(..., batch_size=None)` or a collate function of your own. Training
code applies `visprep.images.preprocess.normalize` afterwards.

Splitting: shards are dealt round-robin to (node rank, DataLoader worker) pairs, so with any number of workers
and nodes each sample is read by exactly one of them. Give a split at least `world_size * num_workers` shards
or some workers sit idle.

Mid-epoch resume (webdataset has none, #271/#177): record `(sample["shard"], sample["key"])` of every sample the
training loop has consumed and pass them back as `consumed={shard: keys}`. Shards whose every sample was
consumed are not opened again; consumed keys of the other shards are skipped. This is exact with shuffling and
with any number of workers, because it tracks what was consumed rather than a position.
"""

from __future__ import annotations

import json
import random
import tarfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from visprep.export.manifest import ShardManifest, read_manifest
from visprep.export.shards import MEMBER_SUFFIXES

Consumed = Mapping[str, Collection[str]]
"""Shard file name -> keys of that shard the training loop has already consumed."""


def decode_jpeg(data: bytes, *, key: str = "?") -> np.ndarray:
    """Decode JPEG bytes to an (H, W, 3) uint8 RGB array with simplejpeg (libjpeg-turbo).

    Raises:
        ImportError: If simplejpeg is not installed.
        ValueError: If the bytes do not decode; names the sample key.
    """
    try:
        import simplejpeg
    except ImportError as exc:  # pragma: no cover - simplejpeg is a core dependency
        raise ImportError("decoding shard images needs simplejpeg: pip install simplejpeg") from exc
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError as exc:
        raise ValueError(f"sample {key!r}: JPEG does not decode: {exc}") from exc


def webdataset_pipeline(
    out_dir: Path | str,
    *,
    shuffle: int = 0,
    seed: int = 0,
    consumed: Consumed | None = None,
) -> Any:
    """Return a `webdataset.DataPipeline` over the split in `out_dir`, yielding the sample dicts above.

    The pipeline splits shards by node (`webdataset.split_by_node`) and then by DataLoader worker
    (`webdataset.split_by_worker`).

    Args:
        out_dir: Directory with `manifest.json` and the shards.
        shuffle: Sample shuffle buffer size; 0 reads in write order. When > 0, each worker's shard order is also
            shuffled, deterministically from `seed` and the epoch.
        seed: Seed of both shuffles.
        consumed: Samples to skip when resuming mid-epoch; see the module docstring.

    Raises:
        ImportError: If webdataset is not installed.
        ValueError: If the manifest is incomplete or `shuffle` is negative.
    """
    try:
        import webdataset as wds
    except ImportError as exc:
        raise ImportError("webdataset_pipeline needs webdataset: pip install webdataset") from exc
    _check_shuffle(shuffle)
    manifest = _complete_manifest(out_dir)
    urls = [str(Path(out_dir) / name) for name in _pending_shards(manifest, consumed)]
    stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    if shuffle:
        stages.append(wds.detshuffle(bufsize=max(len(urls), 1), initial=max(len(urls), 1), seed=seed))
    stages.append(wds.tarfile_to_samples())
    if consumed:
        stages.append(wds.select(_NotConsumed(consumed)))
    if shuffle:
        stages.append(_BufferShuffle(shuffle, seed))
    stages.append(wds.map(_from_webdataset))
    return wds.DataPipeline(*stages)


def _from_webdataset(raw: dict) -> dict:
    key = raw["__key__"]
    missing = [s for s in MEMBER_SUFFIXES if s not in raw]
    if missing:
        raise ValueError(f"sample {key!r} in {raw.get('__url__')}: missing members {missing}")
    return _sample_dict(key, Path(raw["__url__"]).name, raw["jpg"], raw["json"], raw["positives.json"])


def _sample_dict(key: str, shard: str, jpg: bytes, meta: bytes, positives: bytes) -> dict:
    return {
        "key": key,
        "image": decode_jpeg(jpg, key=key),
        "jpg": jpg,
        "meta": json.loads(meta),
        "positives": json.loads(positives),
        "shard": shard,
    }


try:
    from torch.utils.data import IterableDataset as _IterableDataset
except ImportError:  # pragma: no cover - torch is an optional extra
    _IterableDataset = object  # type: ignore[assignment,misc]


class ShardDataset(_IterableDataset):  # type: ignore[misc,valid-type]
    """A torch `IterableDataset` over the split in `out_dir`, reading tars with `tarfile` (no webdataset).

    Shards go round-robin to `rank * num_workers + worker` of `world_size * num_workers` readers; rank and
    world size come from `torch.distributed` when it is initialised, unless given explicitly.

    Args:
        out_dir: Directory with `manifest.json` and the shards.
        shuffle: Sample shuffle buffer size per worker; 0 reads in write order. When > 0 the shard order is
            also shuffled (the same permutation on every reader, before splitting).
        seed: Seed of both shuffles; combined with the epoch (`set_epoch`) and the reader id.
        consumed: Samples to skip when resuming mid-epoch; see the module docstring.
        rank: Node rank override.
        world_size: Number of nodes override.

    Raises:
        ImportError: If torch is not installed.
        ValueError: If the manifest is incomplete, `shuffle` is negative, or rank/world_size are inconsistent.
    """

    def __init__(
        self,
        out_dir: Path | str,
        *,
        shuffle: int = 0,
        seed: int = 0,
        consumed: Consumed | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if _IterableDataset is object:
            raise ImportError("ShardDataset needs torch: pip install 'visprep[torch]'")
        super().__init__()
        _check_shuffle(shuffle)
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:  # type: ignore[operator]
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        self.out_dir = Path(out_dir)
        self.manifest: ShardManifest = _complete_manifest(out_dir)
        self.shards = _pending_shards(self.manifest, consumed)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._skip = _ConsumedKeys(consumed) if consumed else None
        self._rank = rank
        self._world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that varies the shuffles; call before each epoch (before creating the iterator)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        reader, readers = reader_id(self._rank, self._world_size)
        shards = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(shards)
        samples = self._read(shards[reader::readers])
        if self.shuffle:
            samples = _buffer_shuffle(samples, self.shuffle, random.Random(f"{self.seed}/{self.epoch}/{reader}"))
        for shard, key, members in samples:
            yield _sample_dict(key, shard, members["jpg"], members["json"], members["positives.json"])

    def _read(self, names: list[str]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        for name in names:
            for key, members in iter_tar_samples(self.out_dir / name):
                if self._skip is None or not self._skip(name, key):
                    yield name, key, members


def reader_id(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(this reader, readers): reader = rank * num_workers + DataLoader worker, over world_size * num_workers.

    Rank and world size come from `torch.distributed` when it is initialised, unless given explicitly.
    """
    if rank is None:
        rank, world_size = 0, 1
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * num_workers + worker, world_size * num_workers  # type: ignore[operator]


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield `(key, {suffix: bytes})` per sample of one shard tar, in tar order, with `tarfile` only.

    Raises:
        ValueError: If a member name is not `<key>.<suffix>`, a key repeats non-contiguously, or a sample lacks
            one of `MEMBER_SUFFIXES`.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            member_key, dot, suffix = info.name.partition(".")
            if not dot or "/" in info.name:
                raise ValueError(f"{path}: unexpected member {info.name!r}")
            if member_key != key:
                if key is not None:
                    yield key, _complete(path, key, members)
                if member_key in seen:
                    raise ValueError(f"{path}: key {member_key!r} appears twice")
                seen.add(member_key)
                key, members = member_key, {}
            fh = tar.extractfile(info)
            assert fh is not None
            members[suffix] = fh.read()
        if key is not None:
            yield key, _complete(path, key, members)


def _complete(path: Path, key: str, members: dict[str, bytes]) -> dict[str, bytes]:
    missing = [s for s in MEMBER_SUFFIXES if s not in members]
    if missing:
        raise ValueError(f"{path}: sample {key!r} is missing members {missing}")
    return members


class _BufferShuffle:
    """Webdataset pipeline stage: buffer shuffle seeded from (seed, epoch, node rank, worker id) at run time."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize = bufsize
        self.seed = seed
        self.epoch = -1

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        import webdataset as wds

        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")
        return _buffer_shuffle(src, self.bufsize, rng)


def _buffer_shuffle(src: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Yield items of `src` in random order using a buffer of `bufsize` items."""
    buf: list[Any] = []
    for item in src:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(bufsize)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def _check_shuffle(shuffle: int) -> None:
    if isinstance(shuffle, bool) or not isinstance(shuffle, int) or shuffle < 0:
        raise ValueError(f"shuffle must be a non-negative int buffer size, got {shuffle!r}")


def _complete_manifest(out_dir: Path | str) -> ShardManifest:
    manifest = read_manifest(out_dir)
    if not manifest.complete:
        raise ValueError(
            f"{Path(out_dir) / 'manifest.json'} is incomplete: its writer was interrupted; rerun write_shards"
        )
    return manifest


def _pending_shards(manifest: ShardManifest, consumed: Consumed | None) -> list[str]:
    """Shard names still to read: all, minus those whose every sample was consumed."""
    names = []
    for record in manifest.shards:
        done = consumed.get(record.name, ()) if consumed else ()
        if len(set(done)) < record.count:
            names.append(record.name)
    return names


class _ConsumedKeys:
    """Picklable predicate (shard name, key) -> already consumed; DataLoader workers may be spawned."""

    def __init__(self, consumed: Consumed) -> None:
        self.done = {shard: frozenset(keys) for shard, keys in consumed.items()}

    def __call__(self, shard: str, key: str) -> bool:
        keys = self.done.get(shard)
        return keys is not None and key in keys


class _NotConsumed(_ConsumedKeys):
    """`webdataset.select` predicate over raw webdataset samples: keep those not yet consumed."""

    def __call__(self, raw: dict) -> bool:  # type: ignore[override]
        return not super().__call__(Path(raw["__url__"]).name, raw["__key__"])

