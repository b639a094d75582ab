"""The sample index beside a split's shards: where each sample's members lie, for reads in any order.

P x K batches visit samples in the batch plan's order, which a sequential tar stream cannot give. `write_shards`
knows every member's byte offset as it writes (it encodes the tar itself), so it records them in
`<split dir>/index.parquet` (one row per sample: key, product_id, image_id, shard number, and the offset and length
of the `jpg`, `json` and `positives.json` data). `ShardIndex` reads a member with one positioned read
(`os.pread`), no tar parsing, so a random-order reader costs what the JPEG decode costs.

The index is written under a temporary name and renamed before the complete manifest that names it
(`ShardManifest.sample_index`), so a manifest never points at a missing or partial index.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from visprep.export.manifest import MAX_MEMBER_BYTES, verify_shard

if TYPE_CHECKING:
    from visprep.export.shards import ShardSample

SAMPLE_INDEX_NAME = "index.parquet"
MEMBERS = ("jpg", "json", "positives")
"""Member names of the index columns `<member>_offset` / `<member>_length` (positives = `positives.json`)."""

SAMPLE_INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),  # meta["product_id"] when the sample has one
        pa.field("image_id", pa.string()),  # meta["image_id"]
        pa.field("shard", pa.int32(), nullable=False),  # ShardRecord.index
        *(pa.field(f"{m}_{what}", pa.int64(), nullable=False) for m in MEMBERS for what in ("offset", "length")),
    ]
)


class SampleIndexWriter:
    """Collects the index rows of one `write_shards` run; one Parquet row group per shard."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / SAMPLE_INDEX_NAME
        self.tmp = self.path.with_name(SAMPLE_INDEX_NAME + ".tmp")
        self._rows: dict[str, list] = {f.name: [] for f in SAMPLE_INDEX_SCHEMA}
        self._writer: pq.ParquetWriter | None = None

    def add(self, sample: ShardSample, shard: int, start: int, layout: Sequence[tuple[int, int]]) -> None:
        """Record `sample`, whose encoded bytes begin at byte `start` of shard `shard`; `layout` from
        `encode_sample_layout`."""
        rows = self._rows
        rows["key"].append(sample.key)
        for name in ("product_id", "image_id"):
            value = sample.meta.get(name)
            rows[name].append(None if value is None else str(value))
        rows["shard"].append(shard)
        for member, (offset, length) in zip(MEMBERS, layout, strict=True):
            rows[f"{member}_offset"].append(start + offset)
            rows[f"{member}_length"].append(length)

    def flush_shard(self) -> None:
        """Write the rows of the shard just closed as one row group."""
        if not self._rows["key"]:
            return
        table = pa.table(self._rows, schema=SAMPLE_INDEX_SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.tmp, SAMPLE_INDEX_SCHEMA)
        self._writer.write_table(table)
        self._rows = {f.name: [] for f in SAMPLE_INDEX_SCHEMA}

    def commit(self) -> None:
        """Finish the index and rename it into place (an empty split gets an empty index)."""
        self.flush_shard()
        if self._writer is None:
            pq.write_table(SAMPLE_INDEX_SCHEMA.empty_table(), self.tmp)
        else:
            self._writer.close()
            self._writer = None
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial index of an interrupted run."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


class ShardIndex:
    """Random access to the samples of one complete split, by key or by (product_id, image_id).

    File handles are opened lazily and per process, so an instance may be handed to DataLoader workers (fork or
    spawn). Every shard file is checked against its manifest record when first opened: it must resolve inside
    `out_dir`, and its size and (with `verify`) sha256 must match; the hash is skipped for a file this process
    already verified unchanged (a forked worker inherits what its parent verified). The index itself is checked
    when loaded: each shard's row count is its recorded sample count, and every member lies inside its shard file
    and is at most `max_member_bytes` long, so a hostile index cannot make a read allocate more.

    Args:
        out_dir: the split's folder (`manifest.json`, shards, `index.parquet`).
        verify: hash each shard against its manifest record at first open; False skips the hash only.
        max_member_bytes: longest member the index may point at, bytes.

    Raises:
        FileNotFoundError: no manifest or no index file.
        ValueError: incomplete manifest, a manifest written before sample indexes existed, a shard name resolving
            outside `out_dir`, or an index that does not match the manifest (rows, shard numbers, per-shard counts,
            member offsets and lengths).
    """

    def __init__(self, out_dir: Path | str, *, verify: bool = True,
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        from visprep.export.manifest import read_manifest

        if isinstance(max_member_bytes, bool) or not isinstance(max_member_bytes, int) or max_member_bytes < 1:
            raise ValueError(f"max_member_bytes must be a positive int, got {max_member_bytes!r}")
        self.out_dir = Path(out_dir)
        self.verify = verify
        manifest = read_manifest(self.out_dir)
        if not manifest.complete:
            raise ValueError(f"{self.out_dir / 'manifest.json'} is incomplete: its writer was interrupted; rerun "
                             "`visprep export`")
        if manifest.sample_index is None:
            raise ValueError(f"{self.out_dir}: the shards were written before visprep kept a sample index; rerun "
                             "`visprep export --force` to write index.parquet")
        self.manifest = manifest
        manifest.shard_paths(self.out_dir)  # a shard resolving outside out_dir is refused now, not mid-epoch
        table = pq.read_table(self.out_dir / manifest.sample_index, schema=SAMPLE_INDEX_SCHEMA)
        if table.num_rows != manifest.total_samples:
            raise ValueError(f"{self.out_dir / manifest.sample_index}: {table.num_rows} rows, the manifest lists "
                             f"{manifest.total_samples} samples; rerun `visprep export --force`")
        self.keys: list[str] = table.column("key").to_pylist()
        self.product_id: list[str | None] = table.column("product_id").to_pylist()
        self.image_id: list[str | None] = table.column("image_id").to_pylist()
        self.shard = table.column("shard").to_numpy()
        self.offset = {m: table.column(f"{m}_offset").to_numpy() for m in MEMBERS}
        self.length = {m: table.column(f"{m}_length").to_numpy() for m in MEMBERS}
        records = {r.index: r for r in manifest.shards}
        unknown = sorted(set(np.unique(self.shard).tolist()) - set(records))
        if unknown:
            raise ValueError(f"{self.out_dir}: the index names shards {unknown[:5]} the manifest does not list")
        self._records = records
        self._check_members(max_member_bytes)
        self._row_of_key = {k: i for i, k in enumerate(self.keys)}
        self._row_of_pair = {(p, i): r for r, (p, i) in enumerate(zip(self.product_id, self.image_id))}
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _check_members(self, max_member_bytes: int) -> None:
        """Refuse an index whose per-shard counts or member spans disagree with the manifest (vectorised)."""
        where = self.out_dir / (self.manifest.sample_index or SAMPLE_INDEX_NAME)
        indices = np.array(sorted(self._records), dtype=np.int64)
        rows = np.bincount(np.searchsorted(indices, self.shard), minlength=len(indices)) if len(indices) else []
        for i, n in zip(indices.tolist(), np.asarray(rows).tolist()):
            record = self._records[i]
            if n != record.count:
                raise ValueError(f"{where}: {n} rows for shard {record.name}, its record in "
                                 f"{self.out_dir / 'manifest.json'} says {record.count}; rerun "
                                 "`visprep export --force`")
        if not len(self.shard):
            return
        size = np.array([self._records[i].bytes for i in indices.tolist()], dtype=np.int64)[
            np.searchsorted(indices, self.shard)]
        for m in MEMBERS:
            offset, length = self.offset[m], self.length[m]
            bad = (offset < 0) | (length < 0) | (length > max_member_bytes) | (offset > size - length)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}: sample {self.keys[row]!r}: {m} at offset {int(offset[row])}, length "
                                 f"{int(length[row])} lies outside its shard ({int(size[row])} bytes) or exceeds "
                                 f"max_member_bytes={max_member_bytes}; rerun `visprep export --force`")

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not cross processes
        return state

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """(n,) int64 index rows of `keys`; raises KeyError naming the first key not in the split."""
        try:
            return np.fromiter((self._row_of_key[k] for k in keys), np.int64, len(keys))
        except KeyError as exc:
            raise KeyError(f"sample key {exc.args[0]!r} is not in the shards of {self.out_dir}") from None

    def rows_of(self, product_ids: Sequence[str], image_ids: Sequence[str]) -> np.ndarray:
        """(n,) int64 index rows of (product, image) samples; -1 where the split has no such sample."""
        get = self._row_of_pair.get
        return np.fromiter((get((p, i), -1) for p, i in zip(product_ids, image_ids)), np.int64, len(image_ids))

    def read(self, row: int, member: str = "jpg") -> bytes:
        """The data of one member (`jpg`, `json` or `positives`) of the sample at index row `row`."""
        if member not in self.offset:
            raise ValueError(f"unknown member {member!r}; valid: {', '.join(MEMBERS)}")
        fd = self._fd(int(self.shard[row]))
        length = int(self.length[member][row])
        data = os.pread(fd, length, int(self.offset[member][row]))
        if len(data) != length or (member == "jpg" and not data.startswith(b"\xff\xd8")):
            raise ValueError(f"sample {self.keys[row]!r}: {member} at offset {int(self.offset[member][row])} of "
                             f"{self._records[int(self.shard[row])].name} does not match the index; rerun "
                             "`visprep export --force`")
        return data

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors share file offsets; pread does not care,
            self._fds = {}  # but closing them here would close the parent's, so start a table of our own
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            record = self._records[shard]
            path = self.manifest.shard_path(self.out_dir, record)
            fd = os.open(path, os.O_RDONLY)
            try:
                if self.verify:
                    verify_shard(fd, record, path=path, manifest=self.out_dir / "manifest.json")
                elif os.fstat(fd).st_size != record.bytes:
                    raise ValueError(f"{path}: {os.fstat(fd).st_size} bytes, its manifest record says "
                                     f"{record.bytes}; rerun `visprep export --force`")
            except BaseException:
                os.close(fd)
                raise
            self._fds[shard] = fd
        return fd

    def close(self) -> None:
        """Close the open shard files of this process."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown os may already be gone
            self.close()
