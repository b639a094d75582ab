"""Hostile shard folders: tampered manifests, tars and sample indexes are refused by every reader, clearly.

Each case starts from a valid split written by `write_shards`, then tampers with one thing. The three readers are
`ShardDataset` (tarfile), `webdataset_pipeline` and `ShardIndex` (reads by offset, used by visprep.training).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from visprep.export import ShardSample, read_manifest, tarformat, write_shards
from visprep.export import manifest as manifest_module
from visprep.export.loader import ShardDataset, iter_tar_samples, webdataset_pipeline
from visprep.export.manifest import MANIFEST_NAME, MAX_MEMBER_BYTES
from visprep.export.sample_index import SAMPLE_INDEX_NAME, ShardIndex
from visprep.export.shards import encode_sample

pytest.importorskip("torch")
pytest.importorskip("webdataset")

N, MAX_COUNT = 12, 5  # three shards: 5, 5, 2 samples


def _jpeg(i: int) -> bytes:
    img = np.full((24, 24, 3), (i * 37) % 256, np.uint8)
    img[:8, :12] = (i * 11) % 256
    return cv2.imencode(".jpg", img)[1].tobytes()


def _samples() -> list[ShardSample]:
    return [ShardSample(key=f"s{i:03d}", jpg=_jpeg(i), meta={"product_id": f"p{i // 2}", "image_id": f"img{i}"},
                        positives=[]) for i in range(N)]


@pytest.fixture
def split(tmp_path: Path) -> Path:
    out = tmp_path / "train"
    write_shards(_samples(), out, split="train", max_count=MAX_COUNT)
    return out


def _torch(out: Path, **kw: object) -> list[str]:
    return [s["key"] for s in ShardDataset(out, **kw)]


def _wds(out: Path, **kw: object) -> list[str]:
    return [s["key"] for s in webdataset_pipeline(out, **kw)]


def _index(out: Path, **kw: object) -> list[str]:
    idx = ShardIndex(out, **kw)
    for row in range(len(idx)):
        for member in ("jpg", "json", "positives"):
            idx.read(row, member)
    return list(idx.keys)


READERS: dict[str, Callable[..., list[str]]] = {"ShardDataset": _torch, "webdataset": _wds, "ShardIndex": _index}
TAR_READERS = {k: v for k, v in READERS.items() if k != "ShardIndex"}


def _edit_manifest(out: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads((out / MANIFEST_NAME).read_text())
    edit(doc)
    (out / MANIFEST_NAME).write_text(json.dumps(doc))


def _install_tar(out: Path, data: bytes, *, count: int, first: str, last: str) -> None:
    """Make `data` the split's only shard, with a manifest record that matches it (size, sha256, count, keys)."""
    for old in out.glob("train-*.tar"):
        old.unlink()
    (out / "train-000000.tar").write_bytes(data)

    def edit(doc: dict) -> None:
        doc["shards"] = [{"index": 0, "name": "train-000000.tar", "count": count, "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "first_key": first, "last_key": last,
                          "first_sample": 0}]
        doc["total_samples"], doc["total_bytes"] = count, len(data)
    _edit_manifest(out, edit)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(tarformat.member_bytes(name, data) for name, data in members)
    return body + tarformat.archive_tail(len(body))


def _sample_members(key: str, i: int = 0) -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", _jpeg(i)), (f"{key}.json", b"{}"), (f"{key}.positives.json", b"[]")]


# ------------------------------------------------------------------------------------------------ the valid split


@pytest.mark.parametrize("reader", READERS)
def test_the_valid_split_reads_in_every_reader(split: Path, reader: str) -> None:
    assert sorted(READERS[reader](split)) == [s.key for s in _samples()]


# ---------------------------------------------------------------------------------------- names outside the folder


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_a_shard_name_leaving_the_folder_is_refused(split: Path, reader: str, where: str) -> None:
    # A real, well-formed shard waits outside: following the name would read it without any error.
    outside = split.parent / "x.tar"
    outside.write_bytes((split / "train-000000.tar").read_bytes())
    name = "../x.tar" if where == "parent" else str(outside)
    _edit_manifest(split, lambda doc: doc["shards"][0].update(name=name))
    with pytest.raises(ValueError, match=r"manifest\.json: shards\[0\]\.name = .*x\.tar.* not a plain file name"):
        READERS[reader](split)


def test_a_sample_index_name_leaving_the_folder_is_refused(split: Path) -> None:
    os.replace(split / SAMPLE_INDEX_NAME, split.parent / "idx.parquet")
    _edit_manifest(split, lambda doc: doc.update(sample_index="../idx.parquet"))
    with pytest.raises(ValueError, match=r"manifest\.json: sample_index = '\.\./idx\.parquet' is not a plain"):
        ShardIndex(split)


@pytest.mark.parametrize("reader", READERS)
def test_a_shard_symlinked_outside_the_folder_is_refused(split: Path, reader: str) -> None:
    outside = split.parent / "elsewhere.tar"
    os.replace(split / "train-000001.tar", outside)
    (split / "train-000001.tar").symlink_to(outside)
    with pytest.raises(ValueError, match=r"shards\[1\]\.name = 'train-000001\.tar' resolves to .*outside"):
        READERS[reader](split)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("count", "5", r"shards\[0\]\.count = '5' is not a non-negative integer"),
    ("bytes", -1, r"shards\[0\]\.bytes = -1 is not a non-negative integer"),
    ("sha256", "nothex", r"shards\[0\]\.sha256 = 'nothex' is not 64 lowercase hex"),
    ("name", "train-000000.tar/../../x.tar", r"shards\[0\]\.name = .* not a plain file name"),
    ("first_sample", 3, r"shards\[0\]\.first_sample = 3, the counts before it add up to 0"),
])
def test_malformed_record_fields_are_refused_naming_them(split: Path, field: str, value: object, needle: str) -> None:
    _edit_manifest(split, lambda doc: doc["shards"][0].update({field: value}))
    with pytest.raises(ValueError, match=needle):
        read_manifest(split)


# ---------------------------------------------------------------------------------------- contents vs the record


@pytest.mark.parametrize("reader", READERS)
def test_a_flipped_byte_fails_the_sha256_check(split: Path, reader: str) -> None:
    shard = split / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # record padding after the end-of-archive blocks: every reader would read on unaware
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train-000001\.tar: sha256 [0-9a-f]{64} does not match its manifest record"):
        READERS[reader](split)
    # The escape hatch skips the hash only.
    assert sorted(READERS[reader](split, verify=False)) == [s.key for s in _samples()]


def test_a_verified_shard_is_not_hashed_again_until_it_changes(split: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(_torch(split)) == N

    def no_hash() -> None:
        raise AssertionError("rehashed an unchanged, verified shard")
    monkeypatch.setattr(manifest_module.hashlib, "sha256", no_hash)
    assert len(_torch(split)) == N  # the fast path: same file, size and mtime
    monkeypatch.undo()
    shard = split / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(0, 12345))  # a new mtime: hashed again
    with pytest.raises(ValueError, match="sha256"):
        _torch(split)


@pytest.mark.parametrize("reader", TAR_READERS)
def test_a_dropped_sample_fails_the_count_check(split: Path, reader: str) -> None:
    samples = _samples()
    last = read_manifest(split).shards[-1]
    # Rewrite the last shard without its last sample, and give the manifest its new size and hash (not its count).
    kept = samples[last.first_sample:last.first_sample + last.count - 1]
    body = b"".join(encode_sample(s) for s in kept)
    data = body + tarformat.archive_tail(len(body))
    (split / last.name).write_bytes(data)

    def edit(doc: dict) -> None:
        doc["shards"][-1].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _edit_manifest(split, edit)
    with pytest.raises(ValueError, match=rf"{last.name}: {last.count - 1} samples, its record in .* says {last.count}"):
        READERS[reader](split)


@pytest.mark.parametrize("reader", READERS)
def test_counts_moved_between_shard_records_are_refused(split: Path, reader: str) -> None:
    def edit(doc: dict) -> None:  # totals and write order stay consistent; the per-shard counts do not
        doc["shards"][1]["count"] -= 1
        doc["shards"][2]["count"] += 1
        doc["shards"][2]["first_sample"] -= 1
    _edit_manifest(split, edit)
    with pytest.raises(ValueError, match=r"holds more than the 4 samples|5 rows for shard train-000001\.tar"):
        READERS[reader](split)


def test_an_index_member_span_beyond_its_shard_or_the_bound_is_refused(split: Path) -> None:
    table = pq.read_table(split / SAMPLE_INDEX_NAME)
    lengths = table.column("jpg_length").to_pylist()
    lengths[3] = 10 << 30  # os.pread would allocate 10 GiB before finding out
    pq.write_table(table.set_column(table.schema.get_field_index("jpg_length"), "jpg_length",
                                    [lengths]), split / SAMPLE_INDEX_NAME)
    with pytest.raises(ValueError, match=r"sample 's003': jpg at offset \d+, length 10737418240 .*max_member_bytes"):
        ShardIndex(split)


# ----------------------------------------------------------------------------------------------- hostile members


@pytest.mark.parametrize("reader", TAR_READERS)
@pytest.mark.parametrize("key", ["../../evil", "/abs/evil", "..evil", "sub/evil"])
def test_member_names_with_paths_are_refused(split: Path, reader: str, key: str) -> None:
    _install_tar(split, _tar(_sample_members(key)), count=1, first=key, last=key)
    with pytest.raises(ValueError, match=r"member name .* does not start with a valid sample key"):
        READERS[reader](split)


def test_unexpected_suffixes_and_repeated_members_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    path.write_bytes(_tar([*_sample_members("a"), ("a.sh", b"echo")]))
    with pytest.raises(ValueError, match=r"member 'a\.sh' has suffix 'sh'"):
        list(iter_tar_samples(path))
    path.write_bytes(_tar([*_sample_members("a"), ("a.jpg", _jpeg(1))]))
    with pytest.raises(ValueError, match=r"member 'a\.jpg' appears twice"):
        list(iter_tar_samples(path))


def _huge_regular_member(name: str, declared: int, data: bytes) -> bytes:
    """A member header declaring `declared` bytes, followed by only `data` (a 10 KB file claiming 400 MB)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = declared, 0, 0o444
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data


def _gnu_sparse_member(name: str, realsize: int, data: bytes) -> bytes:
    """An old-GNU sparse member: `data` stored, expanding to `realsize` bytes (mostly a hole) when read."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = tarfile.GNUTYPE_SPARSE, len(data), 0, 0o444
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    header[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # sparse map: one chunk at 0 ...
    header[398:410] = tarfile.itn(len(data), 12, tarfile.GNU_FORMAT)  # ... of len(data) bytes
    header[482] = 0  # no extension headers
    header[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * ((-len(data)) % 512)


def _huge_pax_header(declared: int) -> bytes:
    """A PAX extended header claiming `declared` bytes of records, which tarfile reads in one call."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size, info.mtime = tarfile.XHDTYPE, declared, 0
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + b"9 a=bcd\n".ljust(512, b"\0")


@pytest.mark.parametrize("reader", TAR_READERS)
@pytest.mark.parametrize(("kind", "needle"), [
    ("regular", r"member 'x\.jpg' declares 419430400 bytes, more than max_member_bytes=67108864"),
    ("sparse", r"member 'x\.jpg' is a sparse file"),
    ("pax", r"a tar header at offset \d+ declares \d+ bytes, more than max_member_bytes"),
])
def test_huge_or_sparse_members_are_refused_from_the_header(split: Path, reader: str, kind: str,
                                                           needle: str) -> None:
    declared = 400 << 20
    payload = b"\xff\xd8" + b"\0" * 8000
    member = {"regular": lambda: _huge_regular_member("x.jpg", declared, payload),
              "sparse": lambda: _gnu_sparse_member("x.jpg", declared, payload),
              "pax": lambda: _huge_pax_header(declared)}[kind]()
    data = member + b"\0" * 2048
    assert len(data) < 12_000
    _install_tar(split, data, count=1, first="x", last="x")
    assert MAX_MEMBER_BYTES == 64 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=needle):
            READERS[reader](split)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading a {len(data)}-byte tar allocated {peak} bytes"


def test_the_member_bound_is_a_parameter(split: Path) -> None:
    biggest = max(len(s.jpg) for s in _samples())
    with pytest.raises(ValueError, match=rf"declares {biggest} bytes, more than max_member_bytes={biggest - 1}"):
        _torch(split, max_member_bytes=biggest - 1)
    assert len(_torch(split, max_member_bytes=biggest)) == N
    with pytest.raises(ValueError, match="max_member_bytes must be a positive int"):
        ShardDataset(split, max_member_bytes=0)

