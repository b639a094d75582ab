"""Tests for the bundled demo data and visprep.demo.write_demo_sources."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visprep.demo import (
    BAD_ROW_REASONS,
    FASHION_MNIST_CLASSES,
    OPENCV_SAMPLES,
    data_dir,
    load_fashion_mnist_subset,
    opencv_sample_path,
    write_demo_sources,
)

N = 40
LIST_COLUMNS = ("image_urls", "image_sources", "image_recipes")
PRICE = re.compile(r"^\d+\.\d{2}$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_sources(tmp_path_factory.mktemp("demo") / "out", n_products=N, seed=3)


def _read_rows(demo) -> list[tuple[str, dict]]:
    """All catalog rows as (file name, row), lists parsed, recipes as dicts; CSV decoded with 'replace'."""
    csv_path, jsonl_path, parquet_path = demo.catalog_files
    rows = []
    text = csv_path.read_bytes().decode("utf-8", errors="replace")
    for row in csv.DictReader(io.StringIO(text)):
        for key in LIST_COLUMNS:
            row[key] = json.loads(row[key])
        row["inventory"] = int(row["inventory"])
        rows.append((csv_path.name, {k: (v if v != "" else None) for k, v in row.items()}))
    for line in jsonl_path.read_text(encoding="utf-8").splitlines():
        rows.append((jsonl_path.name, json.loads(line)))
    for row in pq.read_table(parquet_path).to_pylist():
        row["image_recipes"] = [None if r is None else json.loads(r) for r in row["image_recipes"]]
        rows.append((parquet_path.name, row))
    return rows


def _resolve(url: str, catalog_dir: Path) -> Path:
    if url.startswith("file://"):
        return Path(url2pathname(urlparse(url).path))
    path = Path(url)
    return path if path.is_absolute() else catalog_dir / path


def _classify(demo, rows) -> tuple[Counter, set[str]]:
    """Brute-force oracle: reason counts of bad rows, and the SKUs of good products."""
    corrupt = {p.resolve() for p in demo.corrupt_images}
    reasons: Counter = Counter()
    candidates = []
    for _, row in rows:
        if not row["product_id"]:
            reasons["missing_product_id"] += 1
        elif not row["title"]:
            reasons["missing_title"] += 1
        elif "\ufffd" in row["title"]:
            reasons["invalid_utf8"] += 1
        elif not row["image_urls"]:
            reasons["no_images"] += 1
        elif not PRICE.match(row["price"]):
            reasons["bad_price"] += 1
        else:
            candidates.append(row)
    by_sku = defaultdict(list)
    for row in candidates:
        by_sku[row["product_id"]].append(row)
    good = set()
    for sku, group in by_sku.items():
        if any(g != group[0] for g in group):
            reasons["conflicting_duplicate_sku"] += len(group)
            continue
        paths = {_resolve(u, demo.root).resolve() for u in group[0]["image_urls"]}
        if paths <= corrupt:
            data = b"".join(p.read_bytes()[:5] for p in paths)
            reasons["not_an_image" if b"<" in data else "corrupt_image"] += 1
            continue
        good.add(sku)
    return reasons, good


# ---------------------------------------------------------------------------------------------- bundled data


def test_bundled_fashion_mnist_subset():
    subset = load_fashion_mnist_subset()
    assert subset.images.shape == (len(subset), 28, 28) and subset.images.dtype == np.uint8
    assert 2000 <= len(subset) <= 3000
    counts = np.bincount(subset.labels, minlength=10)
    assert len(counts) == len(FASHION_MNIST_CLASSES) and counts.min() == counts.max()
    assert np.all(np.diff(subset.indices) > 0) and subset.indices.max() < 60000


def test_bundled_subset_matches_debian_original():
    original = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    if not original.exists():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    import gzip

    raw = np.frombuffer(gzip.decompress(original.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    subset = load_fashion_mnist_subset()
    np.testing.assert_array_equal(raw[subset.indices], subset.images)


def test_bundled_files_licenses_and_size():
    folder = data_dir()
    for name in ("README.md", "LICENSE-fashion-mnist.txt", "LICENSE-opencv-samples.txt", *OPENCV_SAMPLES):
        assert (folder / name).is_file(), name
    assert "Expat" in (folder / "LICENSE-fashion-mnist.txt").read_text(encoding="utf-8")
    assert "Apache-2.0" in (folder / "LICENSE-opencv-samples.txt").read_text(encoding="utf-8")
    assert sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) < 2_600_000
    assert cv2.imread(str(opencv_sample_path("box.png"))) is not None
    with pytest.raises(ValueError, match="valid"):
        opencv_sample_path("lena.jpg")


# ---------------------------------------------------------------------------------------------- demo catalog


def test_counts_match_oracle(demo):
    rows = _read_rows(demo)
    reasons, good = _classify(demo, rows)
    assert dict(reasons) == demo.expected_bad_rows
    assert set(demo.expected_bad_rows) == set(BAD_ROW_REASONS)
    assert len(good) == demo.n_products == N
    assert len(rows) == N + sum(demo.expected_bad_rows.values()) + demo.n_exact_duplicate_rows
    manifest = json.loads((demo.root / "demo_manifest.json").read_text(encoding="utf-8"))
    assert manifest["n_products"] == N and manifest["expected_bad_rows"] == demo.expected_bad_rows


def test_every_catalog_format_parses_and_has_all_columns(demo):
    rows = _read_rows(demo)
    files = Counter(name for name, _ in rows)
    assert set(files) == {p.name for p in demo.catalog_files}
    for _, row in rows:
        assert {"product_id", "title", "category", "season", "family_id", "price", *LIST_COLUMNS} <= set(row)
    raw = demo.catalog_files[0].read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert sum(1 for line in raw.splitlines() if _not_utf8(line)) == 1


def _not_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_images_exist_decode_and_lists_are_parallel(demo):
    rows = _read_rows(demo)
    corrupt = {p.resolve() for p in demo.corrupt_images}
    assert len(corrupt) == 2
    styles = Counter()
    for _, row in rows:
        urls, sources, recipes = (row[k] for k in LIST_COLUMNS)
        assert len(urls) == len(sources) == len(recipes)
        for url, source, recipe in zip(urls, sources, recipes):
            styles["file" if url.startswith("file://") else "abs" if url.startswith("/") else "rel"] += 1
            path = _resolve(url, demo.root).resolve()
            assert path.is_file(), url
            assert path.parent == demo.image_dir.resolve()
            assert source in ("catalog", "synthetic")
            assert (recipe is None) == (source == "catalog")
            if path not in corrupt:
                assert cv2.imread(str(path)) is not None, url
            if recipe is not None:
                assert (demo.image_dir / recipe["derived_from"]).is_file()
                ops = {step["op"] for step in recipe["steps"]}
                assert ops and ops <= {"reframe", "replace_background"}
    assert min(styles.values()) > 0 and len(styles) == 3
    truncated, html = (p.read_bytes() for p in demo.corrupt_images)
    # Mid-scan truncation: a strict decoder (PIL's load) rejects it; OpenCV fills it in grey with a warning.
    assert truncated[:3] == b"\xff\xd8\xff" and not truncated.endswith(b"\xff\xd9")
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(truncated)).load()
    assert html.lstrip().lower().startswith(b"<!doctype html")


def test_products_have_hero_and_synthetic_views(demo):
    _, good = _classify(demo, _read_rows(demo))
    for _, row in _read_rows(demo):
        if row["product_id"] in good and row["product_id"].count("-") == 3:  # colourised Fashion-MNIST SKUs
            assert row["image_sources"][0] == "catalog"
            assert 1 <= row["image_sources"].count("synthetic") <= 3
            assert row["title"].startswith(row["brand"]) and row["color"] in row["title"]


def test_colour_variants_share_family_but_not_sku(demo):
    rows = [r for _, r in _read_rows(demo)]
    _, good = _classify(demo, [(None, r) for r in rows])
    families = defaultdict(dict)
    for row in rows:
        if row["product_id"] in good:
            families[row["family_id"]][row["product_id"]] = row
    multi = [f for f in families.values() if len(f) > 1]
    assert multi
    for members in multi:
        first = next(iter(members.values()))
        assert len({m["color"] for m in members.values()}) == len(members)
        for m in members.values():
            assert m["category"] == first["category"] and m["brand"] == first["brand"]
    tops = {r["category"].split(" > ")[0] for r in rows if r["category"]}
    assert len(tops) >= 3


def test_opencv_pairs_are_real_catalog_views(demo):
    rows = {r["product_id"]: r for _, r in _read_rows(demo) if r["product_id"]}
    assert len(demo.opencv_product_ids) == 2
    bundled = {opencv_sample_path(n).read_bytes() for n in OPENCV_SAMPLES}
    for sku in demo.opencv_product_ids:
        row = rows[sku]
        assert row["image_sources"] == ["catalog", "catalog"] and row["image_recipes"] == [None, None]
        for url in row["image_urls"]:
            assert _resolve(url, demo.root).read_bytes() in bundled


def test_shared_images_for_content_dedup(demo):
    rows = {r["product_id"]: r for _, r in _read_rows(demo) if r["product_id"]}
    files_by_sku = {
        sku: [_resolve(u, demo.root).resolve() for u in r["image_urls"]] for sku, r in rows.items()
    }
    same_path = same_bytes = 0
    for sku in demo.shared_image_product_ids:
        (path,) = files_by_sku[sku]
        others = [p for other, ps in files_by_sku.items() if other != sku for p in ps]
        if path in others:
            same_path += 1
        else:
            data = path.read_bytes()
            assert any(p.read_bytes() == data for p in others if p.stat().st_size == len(data))
            same_bytes += 1
    assert same_path >= 1 and same_bytes >= 1


def test_deterministic_for_a_seed(demo, tmp_path):
    again = write_demo_sources(tmp_path / "again", n_products=N, seed=3)
    old_root, new_root = str(demo.root.resolve()), str(again.root.resolve())
    names = sorted(p.name for p in demo.image_dir.iterdir())
    assert sorted(p.name for p in again.image_dir.iterdir()) == names
    for path in demo.image_dir.iterdir():
        assert (again.image_dir / path.name).read_bytes() == path.read_bytes(), path.name
    for old, new in zip(demo.catalog_files[:2], again.catalog_files[:2]):
        assert new.read_bytes() == old.read_bytes().replace(old_root.encode(), new_root.encode())
    old_table = json.dumps(pq.read_table(demo.catalog_files[2]).to_pylist()).replace(old_root, new_root)
    assert json.dumps(pq.read_table(again.catalog_files[2]).to_pylist()) == old_table
    other = write_demo_sources(tmp_path / "other", n_products=N, seed=4)
    assert other.catalog_files[1].read_bytes() != again.catalog_files[1].read_bytes()


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="n_products"):
        write_demo_sources(tmp_path / "a", n_products=5)
    with pytest.raises(ValueError, match="seed"):
        write_demo_sources(tmp_path / "b", n_products=N, seed=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        write_demo_sources(tmp_path / "full", n_products=N)
