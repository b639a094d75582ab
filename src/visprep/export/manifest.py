"""The shard manifest: what a writer finished, and what a reader needs to read or resume a split.

`out_dir/manifest.json` is the only source of truth about which shards are done. A shard tar without a record in
it (or whose size or sha256 does not match its record) is not done, whatever its name.

Readers do not trust it blindly either: a manifest may come from elsewhere (a copied or downloaded split). File
names must be plain names inside the split folder, and a shard is hashed against its record before anything of it
is read (`verify_shard`; once per process while the file is unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "visprep.export.shards"
FORMAT_VERSION = 1

MAX_MEMBER_BYTES = 64 << 20
"""Default bound on the data of one tar member a reader accepts, checked from the member's header before it is
read: a 10 KB tar can declare a 400 MB (sparse) member. Preprocessed JPEGs are tens of KB."""

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardRecord:
    """The done record of one shard tar.

    Attributes:
        index: Shard number, the `%06d` in the file name.
        name: File name relative to the output directory, e.g. `train-000003.tar`.
        count: Samples in the shard.
        bytes: Size of the tar file in bytes.
        sha256: Hex sha256 of the whole tar file.
        first_key: Key of the first sample in tar order.
        last_key: Key of the last sample in tar order.
        first_sample: Position of the shard's first sample in the split's write order (the sum of the counts of
            all earlier shards), so a global sample position maps to (shard, offset in shard).
    """

    index: int
    name: str
    count: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str
    first_sample: int


@dataclass(frozen=True)
class ShardManifest:
    """Everything a reader needs to know about one split written by `write_shards`.

    Attributes:
        split: Split name; also the shard file prefix.
        shards: Done records, ordered by index.
        total_samples: Sum of the shard counts.
        total_bytes: Sum of the shard sizes in bytes.
        complete: True once the writer consumed its whole input. While False the manifest describes the shards
            done so far by an interrupted or running writer; readers refuse it.
        max_count: Per-shard sample bound the writer used.
        max_bytes: Per-shard byte bound the writer used.
        format_version: Version of this manifest layout (`FORMAT_VERSION`).
        sample_index: File name of the sample index (`visprep.export.sample_index`) beside the shards, once
            complete; None for manifests written before it existed (readers by offset then ask for a re-export).
    """

    split: str
    shards: tuple[ShardRecord, ...]
    total_samples: int
    total_bytes: int
    complete: bool
    max_count: int
    max_bytes: int
    format_version: int = FORMAT_VERSION
    sample_index: str | None = None

    def shard_paths(self, out_dir: Path | str) -> list[Path]:
        """Return the shard files under `out_dir`, in index order (each checked by `shard_path`)."""
        return [self.shard_path(out_dir, record) for record in self.shards]

    def locate(self, position: int) -> tuple[ShardRecord, int]:
        """Map a position in the split's write order to (shard record, offset of the sample inside that shard).

        Raises:
            IndexError: If `position` is outside `[0, total_samples)`.
        """
        if not 0 <= position < self.total_samples:
            raise IndexError(f"sample position {position} outside [0, {self.total_samples})")
        lo, hi = 0, len(self.shards) - 1
        while lo < hi:  # last shard whose first_sample <= position
            mid = (lo + hi + 1) // 2
            if self.shards[mid].first_sample <= position:
                lo = mid
            else:
                hi = mid - 1
        record = self.shards[lo]
        return record, position - record.first_sample

    def to_json(self) -> dict:
        """Return the JSON document stored as `manifest.json`."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "split": self.split,
            "complete": self.complete,
            "max_count": self.max_count,
            "max_bytes": self.max_bytes,
            "total_samples": self.total_samples,
            "total_bytes": self.total_bytes,
            "shards": [asdict(record) for record in self.shards],
            **({"sample_index": self.sample_index} if self.sample_index else {}),
        }

    @classmethod
    def from_json(cls, doc: dict, *, source: str = "manifest") -> ShardManifest:
        """Build a manifest from its JSON document, validating format name, version and fields.

        Raises:
            ValueError: If the document is not a visprep shard manifest of a supported version, or a field is
                missing or of the wrong type.
        """
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise ValueError(f"{source}: not a {FORMAT_NAME} manifest (format={doc.get('format')!r})"
                             if isinstance(doc, dict) else f"{source}: manifest is not a JSON object")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{source}: unsupported format_version {version!r}; this reader knows {FORMAT_VERSION}")
        try:
            if not isinstance(doc["shards"], list):
                raise TypeError(f"shards must be a list, got {type(doc['shards']).__name__}")
            shards = tuple(_record_from_json(i, record, source) for i, record in enumerate(doc["shards"]))
            manifest = cls(
                split=str(doc["split"]),
                shards=shards,
                total_samples=int(doc["total_samples"]),
                total_bytes=int(doc["total_bytes"]),
                complete=bool(doc["complete"]),
                max_count=int(doc["max_count"]),
                max_bytes=int(doc["max_bytes"]),
                format_version=version,
                sample_index=_plain_name(doc["sample_index"], "sample_index", source)
                if doc.get("sample_index") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: malformed manifest: {exc}") from exc
        if [r.index for r in shards] != sorted({r.index for r in shards}):
            raise ValueError(f"{source}: shard records are not ordered by unique index")
        if manifest.total_samples != sum(r.count for r in shards):
            raise ValueError(f"{source}: total_samples = {manifest.total_samples} but the shard counts add up to "
                             f"{sum(r.count for r in shards)}")
        if manifest.complete:
            # Only a complete manifest is one write order: an interrupted one may still list an earlier run's shards.
            at = 0
            for i, r in enumerate(shards):
                if r.first_sample != at:
                    raise ValueError(f"{source}: shards[{i}].first_sample = {r.first_sample}, the counts before it "
                                     f"add up to {at}")
                at += r.count
        return manifest

    def shard_path(self, out_dir: Path | str, record: ShardRecord) -> Path:
        """Return the path of `record`'s shard under `out_dir`, refusing one that resolves outside that folder.

        Raises:
            ValueError: If the shard file (e.g. a symlink) resolves outside `out_dir`; names the manifest, the field
                and the value.
        """
        out_dir = Path(out_dir)
        path = out_dir / record.name
        if path.resolve().parent != out_dir.resolve():
            i = self.shards.index(record) if record in self.shards else "?"
            raise ValueError(f"{out_dir / MANIFEST_NAME}: shards[{i}].name = {record.name!r} resolves to "
                             f"{path.resolve()}, outside the shard folder {out_dir.resolve()}")
        return path


def _plain_name(value: Any, field: str, source: str) -> str:
    """`value` if it is a plain file name (no folder part, no `..`, not absolute), else ValueError naming it."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{source}: {field} = {value!r} is not a plain file name inside the shard folder "
                         "(letters, digits, '_', '-', '.'; no '/', no '..', not absolute)")
    return value


def _int_field(record: dict, key: str, where: str, source: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{source}: {where}.{key} = {value!r} is not a non-negative integer")
    return value


def _record_from_json(i: int, record: Any, source: str) -> ShardRecord:
    """One `shards[i]` entry, every field checked: a hostile manifest must not steer a reader."""
    where = f"shards[{i}]"
    # from_json reports every malformed field as ValueError, wrong types included.
    if not isinstance(record, dict):
        raise ValueError(f"{source}: {where} is not a JSON object: {record!r}")  # noqa: TRY004
    unknown = sorted(set(record) - set(ShardRecord.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{source}: {where} has unknown fields {unknown}")
    name = _plain_name(record["name"], f"{where}.name", source)
    if not name.endswith(".tar"):
        raise ValueError(f"{source}: {where}.name = {name!r} is not a .tar file name")
    sha = record["sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError(f"{source}: {where}.sha256 = {sha!r} is not 64 lowercase hex digits")
    for key in ("first_key", "last_key"):
        if not isinstance(record[key], str):
            raise ValueError(f"{source}: {where}.{key} = {record[key]!r} is not a string")  # noqa: TRY004
    return ShardRecord(index=_int_field(record, "index", where, source), name=name,
                       count=_int_field(record, "count", where, source),
                       bytes=_int_field(record, "bytes", where, source), sha256=sha,
                       first_key=record["first_key"], last_key=record["last_key"],
                       first_sample=_int_field(record, "first_sample", where, source))


# Shards verified by this process: (device, inode, size, mtime_ns) -> sha256. A forked DataLoader worker inherits
# what its parent verified; a changed file (size or mtime) is hashed again.
_VERIFIED: dict[tuple[int, int, int, int], str] = {}
_VERIFIED_LOCK = threading.Lock()


def verify_shard(fd: int, record: ShardRecord, *, path: Path | str, manifest: Path | str) -> None:
    """Check the open shard file `fd` against its manifest record: size, then sha256 of the whole file.

    The hash is skipped when this process already verified the same file (device, inode, size and mtime unchanged)
    against the same sha256. Reads with `os.pread`, so the file position is left where it was.

    Raises:
        ValueError: If `fd` is not a regular file, or its size or sha256 differs from the record; names the shard
            and the manifest.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file (listed in {manifest})")
    if st.st_size != record.bytes:
        raise ValueError(f"{path}: {st.st_size} bytes, its manifest record in {manifest} says {record.bytes}; the "
                         "shard was modified or truncated: rerun `visprep export --force`")
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _VERIFIED_LOCK:
        if _VERIFIED.get(stamp) == record.sha256:
            return
    sha = hashlib.sha256()
    at = 0
    while at < st.st_size:
        chunk = os.pread(fd, min(_HASH_CHUNK, st.st_size - at), at)
        if not chunk:
            break
        sha.update(chunk)
        at += len(chunk)
    digest = sha.hexdigest()
    if at != st.st_size or digest != record.sha256:
        raise ValueError(f"{path}: sha256 {digest} does not match its manifest record in {manifest} "
                         f"({record.sha256}); the shard was modified or corrupted: rerun `visprep export --force`")
    with _VERIFIED_LOCK:
        _VERIFIED[stamp] = digest


def read_manifest(out_dir: Path | str) -> ShardManifest:
    """Read `out_dir/manifest.json`.

    Raises:
        FileNotFoundError: If there is no manifest in `out_dir`.
        ValueError: If the manifest is unreadable JSON or not a supported visprep shard manifest.
    """
    path = Path(out_dir) / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: manifest is not valid JSON: {exc}") from exc
    return ShardManifest.from_json(doc, source=str(path))


def write_manifest(out_dir: Path, manifest: ShardManifest) -> None:
    """Write `out_dir/manifest.json` atomically (temp file, fsync, rename, fsync of the directory)."""
    path = out_dir / MANIFEST_NAME
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    data = (json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n").encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)  # a split with no samples still gets its (empty) manifest
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(out_dir)


def fsync_dir(directory: Path) -> None:
    """Make renames inside `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
