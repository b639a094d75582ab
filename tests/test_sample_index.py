"""The sample index beside the shards: every member read back by offset equals what the tar holds."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.export import ShardSample, read_manifest, write_shards
from visprep.export.loader import iter_tar_samples
from visprep.export.sample_index import SAMPLE_INDEX_NAME, ShardIndex
from visprep.export.shards import MANIFEST_NAME


def _jpeg(value: int, side: int) -> bytes:
    img = np.full((side, side, 3), value % 256, np.uint8)
    img[: side // 2, : side // 3] = (value * 7) % 256
    return cv2.imencode(".jpg", img)[1].tobytes()


def _samples(n: int, *, sides: list[int] | None = None) -> list[ShardSample]:
    sides = sides or [16 + (i * 13) % 90 for i in range(n)]
    return [ShardSample(key=f"s{i:05d}", jpg=_jpeg(i, sides[i]),
                        meta={"product_id": f"p{i // 3}", "image_id": f"img{i}", "title": "é" * (i % 5)},
                        positives=[{"image_id": f"img{i + 1}", "kind": "same_product"}] * (i % 3))
            for i in range(n)]


def _oracle(out: Path) -> dict[str, dict[str, bytes]]:
    """key -> members, read sequentially with tarfile (the reference reader)."""
    m = read_manifest(out)
    return {key: members for r in m.shards for key, members in iter_tar_samples(out / r.name)}


def _check(out: Path, samples: list[ShardSample]) -> ShardIndex:
    idx = ShardIndex(out)
    truth = _oracle(out)
    assert len(idx) == len(truth) == len(samples)
    rows = idx.rows([s.key for s in samples])
    order = np.random.default_rng(0).permutation(len(samples))  # random order: what P x K batches do
    for j in order:
        s, r = samples[j], rows[j]
        assert idx.read(r) == truth[s.key]["jpg"] == s.jpg
        assert json.loads(idx.read(r, "json")) == s.meta
        assert idx.read(r, "positives") == truth[s.key]["positives.json"]
        assert idx.rows_of([s.meta["product_id"]], [s.meta["image_id"]])[0] == r
    return idx


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), max_count=st.integers(1, 12), max_bytes=st.integers(2_000, 40_000))
def test_index_matches_tar_members_for_any_bounds(tmp_path_factory, n, max_count, max_bytes) -> None:
    out = tmp_path_factory.mktemp("idx")
    samples = _samples(n)
    manifest = write_shards(samples, out, split="train", max_count=max_count, max_bytes=max_bytes)
    assert manifest.sample_index == SAMPLE_INDEX_NAME
    _check(out, samples)


def test_long_keys_use_pax_headers_and_still_index(tmp_path) -> None:
    samples = [ShardSample(key="k" * 180 + f"{i:03d}", jpg=_jpeg(i, 20), meta={"product_id": "p", "image_id": str(i)},
                           positives=[]) for i in range(5)]  # member names > 100 bytes: PAX headers, not 512 bytes
    write_shards(samples, tmp_path, split="train", max_count=2)
    _check(tmp_path, samples)


def test_resumed_writer_gives_the_same_index(tmp_path) -> None:
    samples = _samples(60)

    def killed(n: int):
        for i, s in enumerate(samples):
            if i == n:
                raise KeyboardInterrupt
            yield s

    with pytest.raises(KeyboardInterrupt):
        write_shards(killed(37), tmp_path, split="train", max_count=8)
    assert not (tmp_path / SAMPLE_INDEX_NAME).exists()  # only a complete run publishes an index
    with pytest.raises(ValueError, match="incomplete"):
        ShardIndex(tmp_path)
    write_shards(samples, tmp_path, split="train", max_count=8)
    _check(tmp_path, samples)
    assert not list(tmp_path.glob("*.tmp"))


def test_old_manifest_without_index_asks_for_reexport(tmp_path) -> None:
    write_shards(_samples(5), tmp_path, split="train")
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    del doc["sample_index"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="export --force"):
        ShardIndex(tmp_path)


def test_replaced_shard_or_unknown_key_is_a_clear_error(tmp_path) -> None:
    samples = _samples(12)
    write_shards(samples, tmp_path, split="train", max_count=5)
    idx = ShardIndex(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        idx.rows(["nope"])
    assert idx.rows_of(["p0"], ["missing"])[0] == -1
    shard = tmp_path / read_manifest(tmp_path).shards[1].name
    shard.write_bytes(shard.read_bytes() + b"\0" * 512)  # the file no longer matches its record
    with pytest.raises(ValueError, match="manifest record"):
        ShardIndex(tmp_path).read(int(ShardIndex(tmp_path).rows([samples[6].key])[0]))


def test_index_pickles_without_open_files(tmp_path) -> None:
    samples = _samples(6)
    write_shards(samples, tmp_path, split="train")
    idx = ShardIndex(tmp_path)
    idx.read(0)
    copy = pickle.loads(pickle.dumps(idx))
    assert copy._fds == {} and copy.read(0) == samples[0].jpg
