"""Local paths in fetch: the catalog-folder policy, special files refused before they are
opened, and no file or body content in any reason, table or run record."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from http_fixtures import LoopbackServer, make_jpeg
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.catalog.stage import ingest_catalog
from visprep.fetch import Fetcher, FetchSettings
from visprep.fetch.source import read_image_body
from visprep.fetch.stage import FetchStageResult, fetch_stage
from visprep.images.decode import ImageDecodeError, decode_rgb
from visprep.images.sniff import sniff_format
from visprep.workspace import Workspace

MARKER = "ZQXJ-SECRET-42"
"""Written into every secret file; no table, run record or stored image may ever contain it."""


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A catalog folder with images, symlinks in and out, and secrets in a sibling folder."""
    cat = tmp_path / "cat"
    (cat / "images").mkdir(parents=True)
    (cat / "subdir").mkdir()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (cat / "images" / "good.jpg").write_bytes(make_jpeg(seed=1))
    (cat / "images" / "other.jpg").write_bytes(make_jpeg(seed=2))
    (cat / "images" / "link_in.jpg").symlink_to(cat / "images" / "other.jpg")
    (secrets / "secret.txt").write_text(f"{MARKER} api_key=0123456789abcdef\n" * 4)
    # "BM" is the whole BMP signature the old sniff checked: this secret was stored as an image.
    (secrets / "fake.bmp").write_bytes(b"BM" + f"{MARKER} password=hunter2\n".encode() * 4)
    (cat / "images" / "link_out.jpg").symlink_to(secrets / "fake.bmp")
    (cat / "images" / "link_dev.jpg").symlink_to("/dev/zero")
    (cat / "images" / "inside_fake.bmp").write_bytes(b"BM" + f"{MARKER} inside\n".encode() * 4)
    return {"cat": cat, "secrets": secrets}


def _workspace(tmp_path: Path, cat: Path, urls: dict[str, str], *, policy: str | None = None) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True, exist_ok=True)
    extra = f'local_paths = "{policy}"\n' if policy else ""
    ws.config_path.write_text(f"[fetch]\nretries = 0\ntimeout_s = 2.0\nconcurrency = 4\n{extra}")
    catalog = cat / "catalog.jsonl"
    catalog.write_text("".join(json.dumps({"product_id": k, "title": k, "category": "Home", "image_urls": [v]})
                               + "\n" for k, v in urls.items()))
    ingest_catalog(ws, [catalog])
    return ws


def _hostile_urls(tree: dict[str, Path]) -> dict[str, str]:
    cat = tree["cat"]
    return {
        "good": "images/good.jpg",  # relative to the catalog file
        "good_link": str(cat / "images" / "link_in.jpg"),  # a symlink that stays inside
        "good_link_url": (cat / "images" / "link_in.jpg").as_uri(),
        "passwd": "file:///etc/passwd",
        "environ": "/proc/self/environ",
        "escape": "../secrets/secret.txt",
        "escape_bmp": "../secrets/fake.bmp",
        "link_out": str(cat / "images" / "link_out.jpg"),
        "link_dev": str(cat / "images" / "link_dev.jpg"),
        "dev_zero": "/dev/zero",
        "directory": str(cat / "subdir"),
        "inside_fake_bmp": str(cat / "images" / "inside_fake.bmp"),
        "missing": str(cat / "images" / "missing.jpg"),
    }


def _latest(ws: Workspace) -> dict[str, dict]:
    product_of = dict(zip(*(ws.read_table("product_images", ["url", "product_id"]).column(c).to_pylist()
                            for c in ("url", "product_id"))))
    return {product_of[row["url"]]: row for row in ws.latest_urls().to_pylist()}


def _assert_no_secret_anywhere(ws: Workspace, *needles: str) -> None:
    """Grep every table (decoded), run record and stored file of the workspace for the secret markers."""
    for path in ws.root.rglob("*"):
        if not path.is_file():
            continue
        text = str(pq.read_table(path).to_pylist()) if path.suffix == ".parquet" else path.read_bytes().decode(
            "latin-1")
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked into {path.relative_to(ws.root)}"


def test_default_policy_refuses_everything_outside_the_catalog_folder(tmp_path: Path, tree: dict[str, Path]) -> None:
    ws = _workspace(tmp_path, tree["cat"], _hostile_urls(tree))
    result = fetch_stage(ws)
    rows = _latest(ws)
    status = {pid: row["status"] for pid, row in rows.items()}
    assert status == {
        "good": "ok", "good_link": "ok", "good_link_url": "ok",
        "passwd": "local_path_refused", "environ": "local_path_refused", "escape": "local_path_refused",
        "escape_bmp": "local_path_refused", "link_out": "local_path_refused", "link_dev": "local_path_refused",
        "dev_zero": "local_path_refused", "directory": "local_path_refused",
        "inside_fake_bmp": "not_image",  # allowed by the policy, refused by the sniff: not stored
        "missing": "not_found",
    }
    assert result.ok == 3
    for pid in ("passwd", "escape", "escape_bmp", "link_out"):
        reason = rows[pid]["reason"]
        assert rows[pid]["url"] in reason and "outside the catalog folder" in reason and "catalog_dir" in reason
        assert str(tree["cat"]) in reason
    assert "/proc" in rows["environ"]["reason"] and "/dev" in rows["dev_zero"]["reason"]
    assert "/dev" in rows["link_dev"]["reason"]
    assert "is a directory" in rows["directory"]["reason"]
    assert "text" in rows["inside_fake_bmp"]["reason"]
    # Only the two distinct catalog photos are in the store; no secret was stored.
    stored = sorted(p.read_bytes() for p in ws.store.root.rglob("*") if p.is_file())
    assert stored == sorted([make_jpeg(seed=1), make_jpeg(seed=2)])
    q = {row["record_id"]: row for row in ws.read_table("quarantine").to_pylist()}
    assert q["link_out"]["reason"] == "local_path_refused" and "outside the catalog folder" in q["link_out"]["detail"]
    _assert_no_secret_anywhere(ws, MARKER, "root:x:0", "password=", "api_key=")


def test_any_policy_reads_regular_files_anywhere_but_stores_no_fake_image(
    tmp_path: Path, tree: dict[str, Path]
) -> None:
    ws = _workspace(tmp_path, tree["cat"], _hostile_urls(tree), policy="any")
    fetch_stage(ws)
    rows = _latest(ws)
    status = {pid: row["status"] for pid, row in rows.items()}
    assert status["good"] == status["good_link"] == "ok"
    # Read (regular files the policy allows), then refused by the sniff: a "BM" start is not a bitmap.
    for pid in ("passwd", "escape", "escape_bmp", "link_out", "inside_fake_bmp"):
        assert status[pid] == "not_image", (pid, rows[pid]["reason"])
    # Special files and the system trees stay refused whatever the policy.
    for pid in ("environ", "link_dev", "dev_zero", "directory"):
        assert status[pid] == "local_path_refused", (pid, rows[pid]["reason"])
    stored = sorted(p.read_bytes() for p in ws.store.root.rglob("*") if p.is_file())
    assert stored == sorted([make_jpeg(seed=1), make_jpeg(seed=2)])
    _assert_no_secret_anywhere(ws, MARKER, "root:x:0", "password=", "api_key=")


def test_none_policy_refuses_every_local_path(tmp_path: Path, tree: dict[str, Path]) -> None:
    ws = _workspace(tmp_path, tree["cat"], _hostile_urls(tree), policy="none")
    result = fetch_stage(ws)
    rows = _latest(ws)
    assert {row["status"] for row in rows.values()} == {"local_path_refused"}
    assert result.ok == 0 and not any(p.is_file() for p in ws.store.root.rglob("*"))
    assert "local_paths = 'none'" in rows["good"]["reason"] and rows["good"]["url"] in rows["good"]["reason"]


def _run_with_watchdog(stage: Callable[[], FetchStageResult], fifo: Path, limit_s: float) -> FetchStageResult:
    """Run `stage` in a thread; if it is still running after `limit_s`, unblock a reader stuck on `fifo` (so the
    test process can exit) and fail."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = stage()
        except Exception as exc:  # noqa: BLE001 - any error is re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        try:  # a writer opening and closing the FIFO releases a blocked open() with end of file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            assert exc.errno == errno.ENXIO
        thread.join(10)
        pytest.fail(f"fetch did not finish within {limit_s} s with a FIFO in the catalog")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    assert time.monotonic() - started < limit_s
    return box["result"]  # type: ignore[return-value]


def test_fifo_is_refused_promptly_and_the_other_results_are_kept(tmp_path: Path, tree: dict[str, Path]) -> None:
    fifo = tree["cat"] / "images" / "pipe.jpg"
    os.mkfifo(fifo)
    ws = _workspace(tmp_path, tree["cat"], {"pipe": str(fifo), "good": "images/good.jpg",
                                            "other": "images/other.jpg"})
    result = _run_with_watchdog(lambda: fetch_stage(ws), fifo, limit_s=20.0)
    assert (result.ok, result.failed) == (2, 1)
    rows = _latest(ws)
    assert rows["pipe"]["status"] == "local_path_refused" and "is a FIFO" in rows["pipe"]["reason"]
    assert rows["good"]["status"] == rows["other"]["status"] == "ok"
    assert ws.store.exists(rows["good"]["image_id"], "jpg") and ws.store.exists(rows["other"]["image_id"], "jpg")


def test_fetcher_local_roots(tmp_path: Path, tree: dict[str, Path]) -> None:
    cat = tree["cat"]
    good = str(cat / "images" / "good.jpg")
    with Fetcher(FetchSettings(retries=0)) as fetcher:
        assert fetcher.fetch(good, local_roots=[str(cat)]).ok
        assert fetcher.fetch(str(cat / "images" / "link_in.jpg"), local_roots=[str(cat / "images")]).ok
        # The folder is matched as a path, not a string prefix: "cat-evil" is not inside "cat".
        evil = tmp_path / "cat-evil"
        evil.mkdir()
        (evil / "x.jpg").write_bytes(make_jpeg())
        assert fetcher.fetch(str(evil / "x.jpg"), local_roots=[str(cat)]).status == "local_path_refused"
        refused = fetcher.fetch(good, local_roots=())
        assert refused.status == "local_path_refused" and "no catalog folder" in refused.reason
        assert refused.attempts == 1 and refused.data is None
        # Remote URLs ignore local_roots; without local_roots the caller vouches for the path itself.
        assert fetcher.fetch(str(tree["secrets"] / "secret.txt")).status == "not_image"
        with pytest.raises(TypeError, match="local_roots"):
            fetcher.fetch(good, local_roots=str(cat))  # type: ignore[arg-type]
    with Fetcher(FetchSettings(local_paths="none")) as fetcher:
        assert fetcher.fetch(good).status == "local_path_refused"
    with pytest.raises(ValueError, match=r"(?s)local_paths.*'catalog_dir', 'any' or 'none'.*'all'"):
        FetchSettings(local_paths="all")  # type: ignore[arg-type]


def test_fetch_many_refuses_a_local_url_missing_from_the_mapping(tree: dict[str, Path]) -> None:
    cat = tree["cat"]
    inside, other = str(cat / "images" / "good.jpg"), str(cat / "images" / "other.jpg")
    with Fetcher(FetchSettings(retries=0, concurrency=2)) as fetcher:
        results = {r.url: r for r in fetcher.fetch_many([inside, other], local_roots={inside: [str(cat)]})}
    assert results[inside].ok and results[other].status == "local_path_refused"


def test_http_body_is_described_not_quoted() -> None:
    with LoopbackServer([make_jpeg()]) as srv, Fetcher(FetchSettings(retries=0, allow_loopback=True)) as fetcher:
        result = fetcher.fetch(srv.url("/html-as-jpeg"))
    assert result.status == "not_image" and "looks like HTML" in result.reason
    assert "DOCTYPE" not in result.reason and "<title>" not in result.reason


@settings(max_examples=60, deadline=None)
@given(body=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 =:\n", min_size=8, max_size=300))
def test_no_body_byte_reaches_a_not_image_reason(body: str) -> None:
    data = body.encode()
    if sniff_format(data[:32]) is not None:
        return
    outcome = read_image_body(io.BytesIO(data).read, url="u", max_bytes=10_000)
    assert outcome.status == "not_image"
    assert not any(len(word) >= 5 and word in outcome.reason for word in body.split())


def test_declared_content_type_is_escaped_and_cut_short() -> None:
    hostile = "image/jpeg\r\nX-Injected: 1" + "x" * 500
    outcome = read_image_body(io.BytesIO(b"not an image at all, plain text").read, url="u", max_bytes=1000,
                              content_type=hostile)
    assert outcome.status == "not_image" and "\r\n" not in outcome.reason and len(outcome.reason) < 200


def test_decode_error_does_not_quote_the_data() -> None:
    with pytest.raises(ImageDecodeError) as caught:
        decode_rgb(f"{MARKER} api_key=0123456789abcdef".encode())
    assert MARKER not in str(caught.value) and "text" in str(caught.value)


def test_bm_prefixed_text_is_no_bitmap_but_real_bitmaps_are() -> None:
    from PIL import Image

    assert sniff_format(b"BM" + f"{MARKER} password=hunter2".encode()) is None
    assert sniff_format(b"BM") is None
    for mode in ("1", "L", "P", "RGB", "RGBA"):
        buffer = io.BytesIO()
        Image.new(mode, (5, 3)).save(buffer, format="BMP")
        assert sniff_format(buffer.getvalue()[:32]) == "bmp", mode
