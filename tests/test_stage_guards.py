"""Stage-level guards: private addresses refused by default, decompression bombs and corrupt files quarantined."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from http_fixtures import LoopbackServer, make_jpeg
from visprep.catalog.stage import ingest_catalog
from visprep.fetch.stage import fetch_stage
from visprep.images.stage import inspect_stage
from visprep.workspace import Workspace


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _catalog(tmp_path: Path, ws: Workspace, urls: dict[str, str]) -> None:
    cat = tmp_path / "c.jsonl"
    cat.write_text("".join(json.dumps({"product_id": k, "title": k, "category": "Home", "image_urls": [v]}) + "\n"
                           for k, v in urls.items()))
    ingest_catalog(ws, [cat])


def test_private_loopback_and_link_local_refused_unless_allowed(tmp_path: Path) -> None:
    with LoopbackServer([make_jpeg()]) as srv:
        ws = Workspace(tmp_path / "ws")
        ws.root.mkdir()
        ws.config_path.write_text("[fetch]\nretries = 0\ntimeout_s = 1.0\n")
        _catalog(tmp_path, ws, {"loop": srv.url("/image/0"), "private": "http://10.1.2.3/a.jpg",
                                "metadata": "http://169.254.169.254/latest/meta-data"})
        r = fetch_stage(ws)
        assert r.by_status == {"blocked_address": 3}
        assert srv.requests == 0
        q = {row["record_id"]: row for row in ws.read_table("quarantine").to_pylist()}
        assert "127.0.0.1" in q["loop"]["detail"] and q["private"]["value"] == "http://10.1.2.3/a.jpg"
        # Allowing loopback (and retrying failures) fetches that one only.
        ws.config_path.write_text("[fetch]\nretries = 0\ntimeout_s = 1.0\nallow_loopback = true\nretry_failed = true\n")
        r2 = fetch_stage(Workspace(ws.root))
        assert r2.ok == 1 and r2.by_status.get("blocked_address") == 2
        assert {row["record_id"] for row in ws.read_table("quarantine").to_pylist()} == {"private", "metadata"}


def test_bomb_truncated_and_garbage_are_quarantined_at_inspect(tmp_path: Path) -> None:
    good = make_jpeg(64, 64, seed=5)
    files = {"good": good, "bomb": _png_bomb(40_000, 40_000), "truncated": good[: len(good) // 2],
             "garbage": b"\xff\xd8\xff" + bytes(range(256)) * 4}
    urls = {}
    for name, data in files.items():
        (tmp_path / f"{name}.img").write_bytes(data)
        urls[name] = str(tmp_path / f"{name}.img")
    ws = Workspace(tmp_path / "ws")
    _catalog(tmp_path, ws, urls)
    assert fetch_stage(ws).ok == 4
    r = inspect_stage(ws)
    assert r.ok == 1 and r.refused == 3
    q = {row["record_id"]: row for row in ws.read_table("quarantine").to_pylist()}
    assert q["bomb"]["reason"] == "too_many_pixels" and "1600000000" in q["bomb"]["detail"]
    assert q["truncated"]["reason"] in ("truncated", "corrupt")
    assert q["garbage"]["reason"] in ("truncated", "corrupt")
    images = {row["image_id"]: row for row in ws.read_table("images").to_pylist()}
    ok = [row for row in images.values() if row["status"] == "ok"]
    assert len(ok) == 1 and (ok[0]["width"], ok[0]["height"]) == (64, 64) and ok[0]["phash"] is not None
    # Already inspected images are not decoded again.
    assert inspect_stage(ws).inspected == 0
