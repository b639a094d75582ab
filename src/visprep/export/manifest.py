"""The shard manifest: what a writer finished, and what a reader needs to read or resume a split.

`out_dir/manifest.json` is the only source of truth about which shards are done. A shard tar without a record in
it (or whose size or sha256 does not match its record) is not done, whatever its name.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "visprep.export.shards"
FORMAT_VERSION = 1


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
        """Return the shard files under `out_dir`, in index order."""
        return [Path(out_dir) / record.name for record in self.shards]

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
            shards = tuple(ShardRecord(**record) for record in doc["shards"])
            manifest = cls(
                split=str(doc["split"]),
                shards=shards,
                total_samples=int(doc["total_samples"]),
                total_bytes=int(doc["total_bytes"]),
                complete=bool(doc["complete"]),
                max_count=int(doc["max_count"]),
                max_bytes=int(doc["max_bytes"]),
                format_version=version,
                sample_index=str(doc["sample_index"]) if doc.get("sample_index") else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: malformed manifest: {exc}") from exc
        if [r.index for r in shards] != sorted({r.index for r in shards}):
            raise ValueError(f"{source}: shard records are not ordered by unique index")
        return manifest


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
