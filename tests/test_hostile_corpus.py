"""A corpus of hostile files, generated here, through `visprep run`: decompression bombs of every format
the store accepts, a byte bomb under the pixel limit, broken files, special files, symlinks and secrets. Every
record ends accounted for (stored and usable, or refused with a reason), nothing hangs, no secret is copied."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visprep.workspace import Workspace

MARKER = "S3CR3T-CORPUS-7f1d"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, rows: int | None = None) -> bytes:
    """A PNG of zero samples; `rows` < height makes a header that claims more than the data holds (a bomb)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = bytes(1 + (width * channels * bit_depth + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encoded(fmt: str, size: tuple[int, int] = (48, 40), **params: object) -> bytes:
    rng = np.random.default_rng(len(fmt))
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF marker is patched to claim width x height."""
    data = bytearray(_encoded("JPEG"))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded("GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    j = data.index(b"\x2c")  # first image descriptor
    data[j + 5:j + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encoded("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A real small TIFF whose ImageWidth / ImageLength tags are patched to claim width x height."""
    data = bytearray(_encoded("TIFF", (8, 8)))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        tag = struct.unpack("<H", data[at:at + 2])[0]
        if tag in (256, 257):
            data[at + 2:at + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    """A WebP with a VP8X canvas header claiming width x height (up to 16384 x 16384)."""
    body = _encoded("WEBP", lossless=True)
    vp8l = body[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    payload = b"WEBP" + vp8x + vp8l
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


# name -> (file bytes or None for a special entry, what must happen: "ok" or a set of acceptable reasons)
def _corpus(cat: Path, secrets: Path) -> dict[str, tuple[str, set[str] | str]]:
    files = {
        "good_jpeg": (_encoded("JPEG", (64, 64)), "ok"),
        "good_png": (_encoded("PNG", (64, 64)), "ok"),
        "good_webp": (_encoded("WEBP", (64, 64)), "ok"),
        "bomb_png": (_png(40_000, 40_000, rows=4), {"too_many_pixels"}),
        "bomb_jpeg": (_jpeg_claiming(60_000, 60_000), {"too_many_pixels"}),
        "bomb_gif": (_gif_claiming(65_000, 65_000), {"too_many_pixels"}),
        "bomb_bmp": (_bmp_claiming(50_000, 50_000), {"too_many_pixels"}),
        "bomb_tiff": (_tiff_claiming(50_000, 50_000), {"too_many_pixels"}),
        "bomb_webp": (_webp_claiming(16_000, 16_000), {"too_many_pixels"}),
        # Under the pixel limit (36 M pixels) but 288 MB decoded: the byte bound refuses it.
        "byte_bomb_png16": (_png(6_000, 6_000, bit_depth=16, colour_type=6), {"decoded_too_large"}),
        "truncated_jpeg": (_encoded("JPEG", (64, 64))[:300], {"truncated", "corrupt"}),
        "garbage": (os.urandom(2048), {"not_image"}),
        "empty": (b"", {"not_image", "empty"}),
        "fake_bmp_secret": (b"BM" + f"{MARKER} password=hunter2\n".encode() * 8, {"not_image"}),
    }
    out: dict[str, tuple[str, set[str] | str]] = {}
    for name, (data, want) in files.items():
        path = cat / f"{name}.img"
        path.write_bytes(data)
        out[name] = (path.name, want)
    (secrets / "secret.txt").write_text(f"{MARKER} api_key=0123456789abcdef\n")
    (secrets / "fake.bmp").write_bytes(b"BM" + f"{MARKER} token\n".encode() * 8)
    (cat / "link_out.img").symlink_to(secrets / "fake.bmp")
    (cat / "link_in.img").symlink_to(cat / "good_png.img")
    os.mkfifo(cat / "fifo.img")
    (cat / "folder.img").mkdir()
    refused = {"local_path_refused"}
    out.update({
        "link_in": ("link_in.img", "ok"),
        "link_out": ("link_out.img", refused),
        "fifo": ("fifo.img", refused),
        "folder": ("folder.img", refused),
        "escape": ("../secrets/secret.txt", refused),
        "passwd": ("file:///etc/passwd", refused),
        "environ": ("/proc/self/environ", refused),
        "dev_zero": ("/dev/zero", refused),
        "missing": ("nothing-here.img", {"not_found"}),
    })
    return out


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/proc/self/environ").exists(), reason="Linux only")
def test_hostile_corpus_through_visprep_run(tmp_path: Path) -> None:
    cat, secrets = tmp_path / "catalog", tmp_path / "secrets"
    cat.mkdir()
    secrets.mkdir()
    corpus = _corpus(cat, secrets)
    (cat / "catalog.jsonl").write_text("".join(
        json.dumps({"product_id": name, "title": f"product {name}", "category": "Home", "image_urls": [url]}) + "\n"
        for name, (url, _) in corpus.items()))
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n'
                              "[fetch]\nretries = 0\ntimeout_s = 2.0\n[inspect]\nworkers = 2\n[preprocess]\nsize = 32\n")
    # A subprocess with a deadline: a FIFO or a device that hangs fetch fails the test instead of hanging it.
    done = subprocess.run([sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root), str(cat / "catalog.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr

    url_of = {name: url for name, (url, _) in corpus.items()}
    # The catalog resolves a symlink to its target's path, so link_in shares good_png's URL.
    products_of: dict[str, list[str]] = {}
    for url, pid in zip(*(ws.read_table("product_images", ["url", "product_id"]).column(c).to_pylist()
                          for c in ("url", "product_id"))):
        products_of.setdefault(url, []).append(pid)
    fetched = {pid: r for r in ws.latest_urls().to_pylist() for pid in products_of[r["url"]]}
    images = {r["image_id"]: r for r in ws.read_table("images").to_pylist()}
    quarantine = {}
    for r in ws.read_table("quarantine").to_pylist():
        quarantine.setdefault(r["record_id"], []).append(r)
    usable = set()
    for name, (_, want) in corpus.items():
        f = fetched.get(name)
        assert f is not None, f"{name}: no fetch result for {url_of[name]}"
        if f["status"] != "ok":
            outcome = f["status"]
        else:
            img = images.get(f["image_id"])
            assert img is not None, f"{name}: stored but never inspected"
            outcome = img["status"]  # "ok" or the reason code; `reason` holds the detail
        if want == "ok":
            assert outcome == "ok", (name, outcome, f)
            usable.add(name)
        else:
            assert outcome in want, (name, outcome, want, f)
    # Every refusal reached the quarantine with a reason; the image refusals name their figure.
    refused_ids = set()
    for rows in quarantine.values():
        for r in rows:
            assert r["reason"] and r["detail"], r
            refused_ids.add(r["record_id"])
    # Usable products made it into the shards.
    index = pq.read_table(next(ws.shards_dir.glob("*/index.parquet")).parent / "index.parquet")
    assert index.num_rows > 0
    in_shards = set()
    for d in ws.shards_dir.glob("*/index.parquet"):
        in_shards |= set(pq.read_table(d, columns=["product_id"]).column("product_id").to_pylist())
    assert in_shards == usable, (in_shards, usable)
    # No secret byte anywhere in the workspace: tables, run records, the image store, the shards.
    for path in ws.root.rglob("*"):
        if path.is_file():
            text = (str(pq.read_table(path).to_pylist()) if path.suffix == ".parquet"
                    else path.read_bytes().decode("latin-1"))
            assert MARKER not in text and "root:x:0:0" not in text, f"secret leaked into {path}"
