"""Tests for visprep.export: the resumable shard writer, the manifest, and both readers."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from visprep.export import ShardSample, read_manifest, validate_key, write_shards
from visprep.export import tarformat
from visprep.export.loader import ShardDataset, iter_tar_samples, webdataset_pipeline
from visprep.export.shards import encode_sample

torch = pytest.importorskip("torch")
wds = pytest.importorskip("webdataset")

N_SAMPLES = 300
MAX_COUNT = 14
MAX_BYTES = 64 * 1024


def _jpeg(rng: np.random.Generator, height: int, width: int, *, noise: bool = False, texture: int = 12) -> bytes:
    """A product-photo-like JPEG: light background, a coloured box, a little texture."""
    img = np.full((height, width, 3), 235, np.uint8)
    y0, x0 = rng.integers(0, height // 3), rng.integers(0, width // 3)
    img[y0 : y0 + height // 2, x0 : x0 + width // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    if noise:
        img = rng.integers(0, 255, img.shape, dtype=np.uint8)
    else:
        img = cv2.add(img, rng.integers(0, texture, img.shape, dtype=np.uint8))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def _make_samples(n: int, seed: int = 0) -> list[ShardSample]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        # Mostly thumbnails, some larger photos, so both shard bounds come into play.
        big = rng.random() < 0.15
        h, w = (int(rng.integers(96, 160)), int(rng.integers(96, 160))) if big else (
            int(rng.integers(24, 72)), int(rng.integers(24, 72)))
        samples.append(
            ShardSample(
                key=f"sku-{i:05d}_img0",
                jpg=_jpeg(rng, h, w, texture=40 if big else 12),
                meta={"product_id": f"p{i // 3}", "title": f"Bluse Größe {i % 7}", "price": i * 1.25,
                      "tags": ["a", "b"][: i % 3]},
                positives=[{"image_id": f"sku-{(i + 1) % n:05d}_img0", "kind": "same_product", "weight": 1.0}]
                * (i % 3),
            )
        )
    return samples


@pytest.fixture(scope="module")
def samples() -> list[ShardSample]:
    return _make_samples(N_SAMPLES)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, samples) -> Path:
    """A clean, uninterrupted write of `samples`; tests must not modify it."""
    out = tmp_path_factory.mktemp("reference")
    write_shards(samples, out, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    return out


def _snapshot(out_dir: Path) -> dict[str, bytes]:
    """Every file of a shard directory (lock file excluded) -> its bytes."""
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if not p.name.startswith(".")}


def _killed_after(samples, n):
    for i, sample in enumerate(samples):
        if i == n:
            raise KeyboardInterrupt("simulated kill")
        yield sample


# ---------------------------------------------------------------------------------------------- writer + format


def test_bounds_are_respected_and_tight(reference, samples):
    manifest = read_manifest(reference)
    assert manifest.complete and manifest.split == "train"
    assert manifest.total_samples == N_SAMPLES == sum(r.count for r in manifest.shards)
    assert len(manifest.shards) > N_SAMPLES // MAX_COUNT  # the byte bound closed some shards early
    by_key = {s.key: s for s in samples}
    reasons = set()
    for record, nxt in zip(manifest.shards, manifest.shards[1:] + (None,), strict=True):
        path = reference / record.name
        assert path.stat().st_size == record.bytes <= MAX_BYTES
        assert record.count <= MAX_COUNT
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record.sha256
        if nxt is None:
            continue
        # Tight: the shard closed only because the next sample would break a bound.
        payload = sum(len(encode_sample(by_key[k])) for k, _ in iter_tar_samples(path))
        grown = tarformat.archive_size(payload + len(encode_sample(by_key[nxt.first_key])))
        assert record.count == MAX_COUNT or grown > MAX_BYTES
        reasons.add("count" if record.count == MAX_COUNT else "bytes")
    assert reasons == {"count", "bytes"}
    assert [r.first_sample for r in manifest.shards] == list(
        np.cumsum([0] + [r.count for r in manifest.shards[:-1]])
    )
    record, offset = manifest.locate(123)
    keys = [k for k, _ in iter_tar_samples(reference / record.name)]
    assert keys[offset] == samples[123].key


def test_tar_bytes_equal_tarfile_output(reference, samples):
    """The hand-encoded archive is exactly what tarfile writes for the same pinned headers."""
    first = read_manifest(reference).shards[0]
    out = reference.parent / "oracle.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples[: first.count]:
            meta = json.dumps(sample.meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
            pos = json.dumps(sample.positives, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
            for suffix, data in (("jpg", sample.jpg), ("json", meta), ("positives.json", pos)):
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "", ""
                tar.addfile(info, io.BytesIO(data))
    assert out.read_bytes() == (reference / first.name).read_bytes()
    out.unlink()


def test_deterministic(tmp_path, reference, samples):
    write_shards(iter(samples), tmp_path, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    assert _snapshot(tmp_path) == _snapshot(reference)


def test_duplicate_key_rejected(tmp_path, samples):
    dup = [*samples[:50], samples[10]]
    with pytest.raises(ValueError, match="duplicate sample key 'sku-00010_img0'"):
        write_shards(dup, tmp_path, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    assert not list(tmp_path.glob("*.tmp"))
    assert not read_manifest(tmp_path).complete


@pytest.mark.parametrize("key", ["a.b", "a/b", "", " x", "__key__", "x y", "ü", "k" * 201, "a\\b"])
def test_invalid_key_rejected(key, samples):
    with pytest.raises(ValueError, match="invalid sample key"):
        ShardSample(key=key, jpg=samples[0].jpg, meta={}, positives=[])


def test_bad_fields_rejected(tmp_path, samples):
    jpg = samples[0].jpg
    with pytest.raises(TypeError, match="sample key must be a str"):
        validate_key(12)
    with pytest.raises(ValueError, match="'k1'.*JPEG"):
        ShardSample(key="k1", jpg=b"\x89PNG\r\n\x1a\n" + b"0" * 40, meta={}, positives=[])
    with pytest.raises(TypeError, match="'k1'.*positives\\[0\\]"):
        ShardSample(key="k1", jpg=jpg, meta={}, positives=["x"])
    with pytest.raises(ValueError, match="'k2'.*JSON"):
        write_shards([ShardSample(key="k2", jpg=jpg, meta={"w": float("nan")}, positives=[])], tmp_path,
                     split="train")
    with pytest.raises(ValueError, match="max_count"):
        write_shards([], tmp_path / "b", split="train", max_count=0)
    with pytest.raises(ValueError, match="split"):
        write_shards([], tmp_path / "c", split="tr-ain")


def test_one_split_per_directory(tmp_path, samples):
    write_shards(samples[:5], tmp_path, split="train")
    with pytest.raises(ValueError, match="belongs to split 'train'"):
        write_shards(samples[:5], tmp_path, split="val")


def test_oversize_sample_gets_own_shard(tmp_path, samples):
    rng = np.random.default_rng(7)
    big = ShardSample(key="big-one", jpg=_jpeg(rng, 256, 256, noise=True), meta={}, positives=[])
    max_bytes = 20 * 1024
    assert len(big.jpg) > max_bytes
    items = [*samples[:30], big, *samples[30:60]]
    manifest = write_shards(items, tmp_path, split="train", max_count=MAX_COUNT, max_bytes=max_bytes)
    (alone,) = [r for r in manifest.shards if r.bytes > max_bytes]
    assert alone.count == 1 and alone.first_key == alone.last_key == "big-one"
    assert manifest.total_samples == 61
    assert [r.first_key for r in manifest.shards].index("big-one") > 0  # the shard before it closed early


def test_empty_input(tmp_path):
    manifest = write_shards([], tmp_path, split="train")
    assert manifest.complete and manifest.shards == () and manifest.total_samples == 0
    assert list(ShardDataset(tmp_path)) == []


# ---------------------------------------------------------------------------------------------- kill and resume


def test_resume_after_exception_skips_done_shards(tmp_path, reference, samples):
    with pytest.raises(KeyboardInterrupt):
        write_shards(_killed_after(samples, 137), tmp_path, split="train", max_count=MAX_COUNT,
                     max_bytes=MAX_BYTES)
    partial = read_manifest(tmp_path)
    assert not partial.complete and 0 < partial.total_samples < 137
    assert not list(tmp_path.glob("*.tmp"))
    done = {r.name: (tmp_path / r.name).stat() for r in partial.shards}
    with pytest.raises(ValueError, match="incomplete"):
        ShardDataset(tmp_path)

    write_shards(samples, tmp_path, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    assert _snapshot(tmp_path) == _snapshot(reference)
    for name, before in done.items():  # done shards were verified, not rewritten
        after = (tmp_path / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_resume_cleans_temp_and_rewrites_unrecorded_or_corrupt_shards(tmp_path, reference, samples):
    with pytest.raises(KeyboardInterrupt):
        write_shards(_killed_after(samples, 200), tmp_path, split="train", max_count=MAX_COUNT,
                     max_bytes=MAX_BYTES)
    partial = read_manifest(tmp_path)
    next_index = len(partial.shards)
    ref_next = (reference / f"train-{next_index:06d}.tar").read_bytes()
    ref_after = (reference / f"train-{next_index + 1:06d}.tar").read_bytes()
    # What a SIGKILL leaves: a truncated temp tar, and a truncated final-named tar without a done record.
    (tmp_path / f"train-{next_index:06d}.tar.tmp").write_bytes(ref_next[:3000])
    (tmp_path / f"train-{next_index + 1:06d}.tar").write_bytes(ref_after[:5000])
    # A done shard whose bytes rotted (same size, so only the content check can catch it).
    rotten = tmp_path / partial.shards[1].name
    data = bytearray(rotten.read_bytes())
    data[2000] ^= 0xFF
    rotten.write_bytes(bytes(data))

    write_shards(samples, tmp_path, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    assert _snapshot(tmp_path) == _snapshot(reference)
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_with_changed_input_never_keeps_stale_shards(tmp_path, samples):
    write_shards(samples, tmp_path, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    changed = list(samples[:250])
    s = changed[100]
    changed[100] = ShardSample(key=s.key, jpg=s.jpg, meta={**s.meta, "title": "changed"}, positives=s.positives)
    write_shards(changed, tmp_path, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    fresh = tmp_path.parent / "fresh"
    write_shards(changed, fresh, split="train", max_count=MAX_COUNT, max_bytes=MAX_BYTES, resume=False)
    assert _snapshot(tmp_path) == _snapshot(fresh)  # also: shards past the shorter end were removed


# ---------------------------------------------------------------------------------------------- readers


def _check_round_trip(rows, samples):
    keys = [row["key"] for row in rows]
    assert sorted(keys) == sorted(s.key for s in samples)  # every key exactly once
    by_key = {s.key: s for s in samples}
    for row in rows:
        s = by_key[row["key"]]
        assert row["jpg"] == s.jpg and row["meta"] == s.meta and row["positives"] == s.positives
        image = row["image"]
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(s.jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert image.shape == expected.shape
        assert np.abs(image.astype(int) - expected).mean() < 1.0


def _loader(dataset):
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda x: x)


def test_webdataset_round_trip_with_workers(reference, samples):
    _check_round_trip(list(_loader(webdataset_pipeline(reference))), samples)
    _check_round_trip(list(_loader(webdataset_pipeline(reference, shuffle=32, seed=3))), samples)


def test_shard_dataset_round_trip_with_workers(reference, samples):
    _check_round_trip(list(_loader(ShardDataset(reference))), samples)
    _check_round_trip(list(_loader(ShardDataset(reference, shuffle=32, seed=3))), samples)


def test_readers_keep_write_order_without_shuffle(reference, samples):
    expected = [s.key for s in samples]
    assert [row["key"] for row in webdataset_pipeline(reference)] == expected
    assert [row["key"] for row in ShardDataset(reference)] == expected


def test_shard_dataset_splits_across_nodes(reference, samples):
    parts = [[row["key"] for row in ShardDataset(reference, rank=r, world_size=3)] for r in range(3)]
    assert all(parts) and sorted(sum(parts, [])) == sorted(s.key for s in samples)


def test_shuffle_is_seeded(reference):
    ds = ShardDataset(reference, shuffle=64, seed=1)
    first = [row["key"] for row in ds]
    assert first == [row["key"] for row in ShardDataset(reference, shuffle=64, seed=1)]
    ds.set_epoch(1)
    assert first != [row["key"] for row in ds]


@pytest.mark.parametrize("reader", ["webdataset", "tarfile"])
def test_mid_epoch_resume_with_consumed_keys(reference, samples, reader):
    make = (
        (lambda **kw: webdataset_pipeline(reference, shuffle=32, seed=5, **kw))
        if reader == "webdataset"
        else (lambda **kw: ShardDataset(reference, shuffle=32, seed=5, **kw))
    )
    consumed: dict[str, set[str]] = {}
    for i, row in enumerate(make()):
        if i == 170:  # "crash" mid-epoch
            break
        consumed.setdefault(row["shard"], set()).add(row["key"])
    rest = [row["key"] for row in _loader(make(consumed=consumed))]
    seen = [k for keys in consumed.values() for k in keys]
    assert len(seen) == 170
    assert sorted(seen + rest) == sorted(s.key for s in samples)


def test_manifest_round_trip(reference):
    manifest = read_manifest(reference)
    doc = json.loads((reference / "manifest.json").read_text())
    assert doc["format_version"] == 1 and doc["total_bytes"] == manifest.total_bytes
    assert manifest.shard_paths(reference)[0] == reference / "train-000000.tar"
    with pytest.raises(IndexError):
        manifest.locate(N_SAMPLES)


def test_webdataset_pipeline_splits_across_nodes(reference, samples, monkeypatch):
    # webdataset.split_by_node takes the node rank from RANK/WORLD_SIZE (or torch.distributed).
    parts = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        parts.append([row["key"] for row in webdataset_pipeline(reference)])
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(s.key for s in samples)
