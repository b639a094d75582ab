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

Hostile input: both readers check every shard before yielding anything of it: its name must be a plain file inside
`out_dir`, its size and sha256 must match the manifest record (skipped for a file this process already verified
unchanged; `verify=False` skips the hash), every member must be a regular file named `<key>.<suffix>` with a valid
sample key (no `/`, no `..`) and a suffix of `MEMBER_SUFFIXES`, no member may declare more than `max_member_bytes`
(checked from its header, before it is read), and the shard must hold exactly the recorded samples (count, first
and last key). A violation raises ValueError naming the shard (and the manifest where a record is involved).
"""

from __future__ import annotations

import json
import random
import tarfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from visprep.export.manifest import (
    MANIFEST_NAME,
    MAX_MEMBER_BYTES,
    ShardManifest,
    ShardRecord,
    read_manifest,
    verify_shard,
)
from visprep.export.shards import MEMBER_SUFFIXES, validate_key

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
    verify: bool = True,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Any:
    """Return a `webdataset.DataPipeline` over the split in `out_dir`, yielding the sample dicts above.

    The pipeline splits shards by node (`webdataset.split_by_node`) and then by DataLoader worker
    (`webdataset.split_by_worker`). Tars are expanded by visprep's own checked reader (`iter_shard`), not by
    `webdataset.tarfile_to_samples`, which passes member names such as `../../evil.jpg` through as keys.

    Args:
        out_dir: Directory with `manifest.json` and the shards.
        shuffle: Sample shuffle buffer size; 0 reads in write order. When > 0, each worker's shard order is also
            shuffled, deterministically from `seed` and the epoch.
        seed: Seed of both shuffles.
        consumed: Samples to skip when resuming mid-epoch; see the module docstring.
        verify: Hash each shard against its manifest record before reading it (once per process per unchanged
            file). False skips the hash only; every other check stays.
        max_member_bytes: Largest tar member accepted, bytes (checked from the header before reading).

    Raises:
        ImportError: If webdataset is not installed.
        ValueError: If the manifest is incomplete or names a shard outside `out_dir`, `shuffle` is negative or
            `max_member_bytes` is not a positive int; while iterating, if a shard fails a check (module docstring).
    """
    try:
        import webdataset as wds
    except ImportError as exc:
        raise ImportError("webdataset_pipeline needs webdataset: pip install webdataset") from exc
    _check_shuffle(shuffle)
    _check_max_member_bytes(max_member_bytes)
    manifest = _complete_manifest(out_dir)
    urls = [str(Path(out_dir) / name) for name in _pending_shards(manifest, consumed)]
    stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    if shuffle:
        stages.append(wds.detshuffle(bufsize=max(len(urls), 1), initial=max(len(urls), 1), seed=seed))
    stages.append(_ShardSamples(out_dir, manifest, verify=verify, max_member_bytes=max_member_bytes))
    if consumed:
        stages.append(wds.select(_NotConsumed(consumed)))
    if shuffle:
        stages.append(_BufferShuffle(shuffle, seed))
    stages.append(wds.map(_from_webdataset))
    return wds.DataPipeline(*stages)


class _ShardSamples:
    """Webdataset pipeline stage: shard urls -> raw samples (`__key__`, `__url__`, one entry per member suffix),
    read by `iter_shard`. A class, so DataLoader workers can be spawned (pickled)."""

    def __init__(self, out_dir: Path | str, manifest: ShardManifest, *, verify: bool,
                 max_member_bytes: int) -> None:
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.records = {record.name: record for record in manifest.shards}
        self.verify = verify
        self.max_member_bytes = max_member_bytes

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for shard in src:
            url = shard["url"]
            record = self.records[Path(url).name]
            for key, members in iter_shard(self.out_dir, record, manifest=self.manifest, verify=self.verify,
                                           max_member_bytes=self.max_member_bytes):
                yield {"__key__": key, "__url__": url, **members}


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
        verify: Hash each shard against its manifest record before reading it (once per process per unchanged
            file). False skips the hash only; every other check stays.
        max_member_bytes: Largest tar member accepted, bytes (checked from the header before reading).

    Raises:
        ImportError: If torch is not installed.
        ValueError: If the manifest is incomplete or names a shard outside `out_dir`, `shuffle` is negative,
            rank/world_size are inconsistent or `max_member_bytes` is not a positive int; while iterating, if a
            shard fails a check (module docstring).
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
        verify: bool = True,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ) -> None:
        if _IterableDataset is object:
            raise ImportError("ShardDataset needs torch: pip install 'visprep[torch]'")
        super().__init__()
        _check_shuffle(shuffle)
        _check_max_member_bytes(max_member_bytes)
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
        self._records = {record.name: record for record in self.manifest.shards}
        self.verify = verify
        self.max_member_bytes = max_member_bytes

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
            for key, members in iter_shard(self.out_dir, self._records[name], manifest=self.manifest,
                                           verify=self.verify, max_member_bytes=self.max_member_bytes):
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


def iter_tar_samples(
    path: Path, *, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield `(key, {suffix: bytes})` per sample of one shard tar, in tar order, with `tarfile` only.

    No manifest is involved: the file is not hashed and its sample count is not checked (`iter_shard` does both).

    Raises:
        ValueError: If the file is not a tar archive; a member is not a regular file, is not named
            `<key>.<suffix>` with a valid sample key and a suffix of `MEMBER_SUFFIXES`, or declares more than
            `max_member_bytes`; a key repeats non-contiguously; or a sample lacks one of `MEMBER_SUFFIXES`.
    """
    _check_max_member_bytes(max_member_bytes)
    with open(path, "rb") as fh:
        yield from _iter_tar(fh, Path(path), max_member_bytes)


def iter_shard(
    out_dir: Path | str,
    record: ShardRecord,
    *,
    manifest: ShardManifest,
    verify: bool = True,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield `(key, {suffix: bytes})` per sample of the shard `record` of `manifest`, checked against the record.

    The shard must resolve inside `out_dir`; with `verify` its size and sha256 are checked before anything is
    yielded (skipped for a file this process already verified unchanged). Then it is read as `iter_tar_samples`
    reads it, and must hold exactly `record.count` samples from `record.first_key` to `record.last_key`.

    Raises:
        ValueError: On any failed check, naming the shard and the manifest.
    """
    _check_max_member_bytes(max_member_bytes)
    path = manifest.shard_path(out_dir, record)
    where = Path(out_dir) / MANIFEST_NAME
    with open(path, "rb") as fh:
        if verify:
            verify_shard(fh.fileno(), record, path=path, manifest=where)
        n, key = 0, None
        for key, members in _iter_tar(fh, path, max_member_bytes):
            n += 1
            if n > record.count:
                raise ValueError(f"{path}: holds more than the {record.count} samples its record in {where} lists")
            if n == 1 and key != record.first_key:
                raise ValueError(f"{path}: first sample {key!r}, its record in {where} says {record.first_key!r}")
            yield key, members
        if n != record.count:
            raise ValueError(f"{path}: {n} samples, its record in {where} says {record.count}")
        if n and key != record.last_key:
            raise ValueError(f"{path}: last sample {key!r}, its record in {where} says {record.last_key!r}")


def _iter_tar(fh: Any, path: Path, max_member_bytes: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    bounded = _BoundedReads(fh, path, max_member_bytes)
    try:
        tar = tarfile.open(fileobj=bounded, mode="r:")  # noqa: SIM115 - closed by `with tar` below
    except tarfile.TarError as exc:
        raise ValueError(f"{path}: not a readable tar archive: {exc}") from exc
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as exc:
                raise ValueError(f"{path}: unreadable tar header: {exc}") from exc
            if info is None:
                break
            member_key, suffix = _member_name(path, info, max_member_bytes)
            if member_key != key:
                if key is not None:
                    yield key, _complete(path, key, members)
                if member_key in seen:
                    raise ValueError(f"{path}: key {member_key!r} appears twice")
                seen.add(member_key)
                key, members = member_key, {}
            if suffix in members:
                raise ValueError(f"{path}: member {info.name!r} appears twice")
            data = tar.extractfile(info).read()  # type: ignore[union-attr]  # a regular file always has data
            if len(data) != info.size:
                raise ValueError(f"{path}: member {info.name!r} is cut short ({len(data)} of {info.size} bytes)")
            members[suffix] = data
        if key is not None:
            yield key, _complete(path, key, members)


class _BoundedReads:
    """The shard file as `tarfile` sees it: one read may ask for at most about `max_member_bytes`.

    Member data is bounded by `_member_name` before it is read, but `tarfile` itself reads a PAX or GNU long-name
    header's declared size in one call while parsing, and allocates that much first.
    """

    def __init__(self, fh: Any, path: Path, max_member_bytes: int) -> None:
        self.fh = fh
        self.path = path
        self.limit = max_member_bytes + 2 * tarfile.BLOCKSIZE  # a member's data plus its padding

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self.limit:
            raise ValueError(f"{self.path}: a tar header at offset {self.fh.tell()} declares {size} bytes, more "
                             f"than max_member_bytes={self.limit - 2 * tarfile.BLOCKSIZE}; refused before reading")
        return self.fh.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()


def _member_name(path: Path, info: tarfile.TarInfo, max_member_bytes: int) -> tuple[str, str]:
    """(key, suffix) of a member, once its header passed every check; nothing of its data is read here."""
    # Sparse members (type S, or PAX GNU.sparse) expand to their declared size when read; the writer never makes
    # them, nor links, folders or devices.
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
        kind = "sparse file" if info.issparse() else f"tar type {info.type!r}"
        raise ValueError(f"{path}: member {info.name!r} is a {kind}, not a regular file")
    if info.size > max_member_bytes:
        raise ValueError(f"{path}: member {info.name!r} declares {info.size} bytes, more than max_member_bytes="
                         f"{max_member_bytes}; refused before reading it")
    member_key, _, suffix = info.name.partition(".")
    try:
        validate_key(member_key)
    except ValueError:
        raise ValueError(f"{path}: member name {info.name!r} does not start with a valid sample key (no '/', no "
                         "'..', not absolute; see visprep.export.shards.KEY_PATTERN)") from None
    if suffix not in MEMBER_SUFFIXES:
        raise ValueError(f"{path}: member {info.name!r} has suffix {suffix!r}; valid: "
                         f"{', '.join(MEMBER_SUFFIXES)}")
    return member_key, suffix


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


def _check_max_member_bytes(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_member_bytes must be a positive int, got {value!r}")


def _complete_manifest(out_dir: Path | str) -> ShardManifest:
    manifest = read_manifest(out_dir)
    if not manifest.complete:
        raise ValueError(
            f"{Path(out_dir) / 'manifest.json'} is incomplete: its writer was interrupted; rerun write_shards"
        )
    manifest.shard_paths(out_dir)  # a shard resolving outside out_dir is refused now, not mid-epoch
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

